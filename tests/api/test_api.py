"""Every row of the API contract, through the real URL conf."""

from __future__ import annotations

import uuid

import pytest

from aether_django.cluster import shard_of

API = "/api/aether"


def events_url(ns, actor="order-1"):
    return f"{API}/namespaces/{ns}/actors/{actor}/events/"


def append(client, ns, actor="order-1", **body):
    return client.post(events_url(ns, actor), body, format="json")


def test_append_one_event_then_read_it(root, ns):
    response = append(root, ns, event_type="OrderPlaced", data={"total": 5}, version=1)
    assert response.status_code == 201, response.data
    (event,) = response.data["events"]
    assert {k: event[k] for k in ("event_type", "actor_id", "version", "data")} == {
        "event_type": "OrderPlaced",
        "actor_id": "order-1",
        "version": 1,
        "data": {"total": 5},
    }
    assert event["sequence"] >= 1 and event["timestamp"].endswith("Z")
    listed = root.get(events_url(ns)).data
    assert listed["results"] == [event] and listed["next"] is None


def test_append_a_batch_atomically_after_expected_version(root, ns):
    append(root, ns, event_type="A", version=1)
    body = {"expected_version": 1, "events": [{"event_type": "B"}, {"event_type": "C"}]}
    response = root.post(events_url(ns), body, format="json")
    assert response.status_code == 201
    assert [e["version"] for e in response.data["events"]] == [2, 3]
    stale = root.post(events_url(ns), body, format="json")
    assert stale.status_code == 409
    assert [e["version"] for e in root.get(events_url(ns)).data["results"]] == [1, 2, 3]


def test_a_conflict_answers_409_with_the_versions(root, ns):
    append(root, ns, event_type="A", version=1)
    append(root, ns, event_type="A", version=2)
    response = append(root, ns, event_type="A", version=2)
    assert response.status_code == 409
    assert response.data == {
        "code": "version_conflict",
        "detail": response.data["detail"],
        "actor_id": "order-1",
        "attempted_version": 2,
        "current_version": 2,
    }


def test_client_ids_make_appends_idempotent_even_after_others_wrote(root, ns):
    body = {
        "expected_version": 0,
        "events": [{"event_type": "A", "id": "e-1"}, {"event_type": "B", "id": "e-2"}],
    }
    first = root.post(events_url(ns), body, format="json")
    assert first.status_code == 201
    append(root, ns, event_type="Other", version=3)  # someone writes after it
    again = root.post(events_url(ns), body, format="json")
    assert again.status_code == 201
    assert again.data["events"] == first.data["events"]
    assert [e["id"] for e in root.get(events_url(ns)).data["results"]][:2] == ["e-1", "e-2"]
    assert len(root.get(events_url(ns)).data["results"]) == 3
    single = append(root, ns, event_type="X", version=4, id="e-4")
    assert append(root, ns, event_type="X", version=4, id="e-4").data == single.data


def test_events_are_paged_from_a_version(root, ns):
    body = {"expected_version": 0, "events": [{"event_type": "E"} for _ in range(5)]}
    root.post(events_url(ns), body, format="json")
    page = root.get(events_url(ns), {"limit": 2}).data
    assert [e["version"] for e in page["results"]] == [1, 2]
    page2 = root.get(page["next"]).data
    assert [e["version"] for e in page2["results"]] == [3, 4]
    last = root.get(page2["next"]).data
    assert [e["version"] for e in last["results"]] == [5] and last["next"] is None
    assert [
        e["version"] for e in root.get(events_url(ns), {"from_version": 4}).data["results"]
    ] == [4, 5]


@pytest.mark.parametrize(
    "body",
    [
        {"data": {}, "version": 1},
        {"event_type": "A", "version": 0},
        {"event_type": "A", "version": "one"},
        {"event_type": "A", "version": 1, "data": [1, 2]},
        {"event_type": "A", "version": 1, "metadata": ["k"]},
        {"expected_version": -1, "events": [{"event_type": "A"}]},
        {"expected_version": 0, "events": []},
        {
            "expected_version": 0,
            "events": [{"event_type": "A", "id": "x"}, {"event_type": "B", "id": "x"}],
        },
    ],
)
def test_invalid_bodies_answer_400_with_a_code_and_store_nothing(root, ns, body):
    response = root.post(events_url(ns), body, format="json")
    assert response.status_code == 400, response.data
    assert response.data["code"] == "invalid"
    assert root.get(f"{API}/namespaces/{ns}/actors/order-1/version/").data["version"] == 0


def test_malformed_json_and_oversized_events(root, ns):
    response = root.post(events_url(ns), "{not json", content_type="application/json")
    assert response.status_code == 400 and response.data["code"] == "parse_error"
    big = append(root, ns, event_type="A", version=1, data={"blob": "x" * (1024 * 1024 + 1)})
    assert big.status_code == 413 and big.data["code"] == "payload_too_large"


def test_bad_names_and_parameters(root, ns):
    assert root.get(f"{API}/namespaces/bad..name/").status_code == 400
    assert root.get(events_url(ns, "x" * 256)).status_code == 400
    assert root.get(events_url(ns), {"from_version": "x"}).status_code == 400
    assert root.get(events_url(ns), {"limit": "0"}).status_code == 400
    assert root.get(f"{API}/namespaces/{ns}/actors/", {"cursor": "%%%"}).status_code == 400


def test_namespaces_and_actors(root, ns):
    for actor in ("b", "a", "c"):
        append(root, ns, actor, event_type="A", version=1)
    append(root, ns, "a", event_type="A", version=2)
    listed = {n["name"]: n for n in root.get(f"{API}/namespaces/").data}
    assert listed[ns]["events"] == 4 and listed[ns]["actors"] == 3
    assert listed[ns]["stream"] == f"{ns}_events"
    one = root.get(f"{API}/namespaces/{ns}/").data
    assert one["last_sequence"] - one["first_sequence"] == 3
    assert root.get(f"{API}/namespaces/{ns}-none/").status_code == 404
    page = root.get(f"{API}/namespaces/{ns}/actors/", {"limit": 2}).data
    assert page["results"] == [
        {"actor_id": "a", "version": 2, "shard": shard_of("a")},
        {"actor_id": "b", "version": 1, "shard": shard_of("b")},
    ]
    rest = root.get(page["next"]).data
    assert [a["actor_id"] for a in rest["results"]] == ["c"] and rest["next"] is None


def test_actor_ids_with_slashes_and_spaces(root, ns):
    actor = "tenant/7 order"
    assert append(root, ns, actor, event_type="A", version=1).status_code == 201
    assert root.get(f"{API}/namespaces/{ns}/actors/{actor}/version/").data == {
        "actor_id": actor,
        "version": 1,
    }


def test_version_and_snapshot(root, ns):
    version_url = f"{API}/namespaces/{ns}/actors/order-1/version/"
    snapshot_url = f"{API}/namespaces/{ns}/actors/order-1/snapshot/"
    assert root.get(version_url).data == {"actor_id": "order-1", "version": 0}
    append(root, ns, event_type="A", version=1)
    assert root.get(version_url).data["version"] == 1
    assert root.get(snapshot_url).status_code == 404
    saved = root.put(snapshot_url, {"version": 1, "state": {"n": 1}}, format="json")
    assert saved.status_code == 200
    got = root.get(snapshot_url).data
    assert (got["version"], got["state"]) == (1, {"n": 1})
    assert root.put(snapshot_url, {"version": 1, "state": [1]}, format="json").status_code == 400


def test_state_of_a_registered_aggregate_now_and_at_a_version(root):
    from ..aggregates.domain import Order

    actor = f"order-{uuid.uuid4().hex[:8]}"
    Order.objects.update(actor, lambda o: o.place("ann"), create=True)
    Order.objects.update(actor, lambda o: o.add_line("pen", 2, 3))
    url = f"{API}/namespaces/test-orders/actors/{actor}/state/"
    now = root.get(url).data
    assert (now["version"], now["aggregate"], now["state"]["total_cents"]) == (2, "Order", 6)
    then = root.get(url, {"at_version": 1}).data
    assert then["version"] == 1 and then["state"]["lines"] == []
    assert root.get(f"{API}/namespaces/test-orders/actors/nobody/state/").status_code == 404


def test_state_without_an_aggregate_class_is_404(root, ns):
    append(root, ns, event_type="A", version=1)
    assert root.get(f"{API}/namespaces/{ns}/actors/order-1/state/").status_code == 404


def test_cluster_and_shards(callers):
    staff = callers["superuser"]
    cluster = staff.get(f"{API}/cluster/")
    assert cluster.status_code == 200
    assert set(cluster.data) == {"leader", "term", "num_shards", "nodes"}
    shards = staff.get(f"{API}/cluster/shards/").data
    assert shards["num_shards"] == 100
    assert callers["write_grant"].get(f"{API}/cluster/").status_code == 403
    assert callers["anonymous"].get(f"{API}/cluster/").status_code in (401, 403)


def test_the_openapi_schema(root):
    response = root.get(f"{API}/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    import json

    schema = json.loads(response.content)
    paths = schema["paths"]
    assert "/api/aether/namespaces/" in paths
    assert any(p.endswith("/events/") for p in paths)
