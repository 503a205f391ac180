"""Every row of the API contract, through the real URL conf."""

from __future__ import annotations

import json
import os
import time
import uuid

import jsonschema
import pytest
from django.conf import settings
from django.test import override_settings

from aether_django import aggregates
from aether_django.cluster import shard_of
from aether_django.events import Event

API = "/api/aether"
MIN_1 = "Ensure this value is greater than or equal to 1."
NOT_EMPTY = "This list may not be empty."


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
    assert stale.json() == {
        "code": "version_conflict",
        "detail": stale.data["detail"],
        "actor_id": "order-1",
        "attempted_version": 2,  # expected_version + 1
        "current_version": 3,
    }
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
    ("body", "errors"),
    [
        ({"data": {}, "version": 1}, {"event_type": ["This field is required."]}),
        ({"event_type": "A", "version": 0}, {"version": [MIN_1]}),
        ({"event_type": "A", "version": "one"}, {"version": ["A valid integer is required."]}),
        ({"event_type": "A", "version": 1, "data": [1, 2]}, {"data": ["Must be a JSON object."]}),
        (
            {"event_type": "A", "version": 1, "metadata": ["k"]},
            {"metadata": ['Expected a dictionary of items but got type "list".']},
        ),
        (
            {"expected_version": -1, "events": [{"event_type": "A"}]},
            {"expected_version": ["Ensure this value is greater than or equal to 0."]},
        ),
        ({"expected_version": 0, "events": []}, {"events": {"non_field_errors": [NOT_EMPTY]}}),
        (
            {"expected_version": 0, "events": [{"event_type": "A"}, {"data": {}}]},
            {"events": {"1": {"event_type": ["This field is required."]}}},
        ),
        (
            {
                "expected_version": 0,
                "events": [{"event_type": "A", "id": "x"}, {"event_type": "B", "id": "x"}],
            },
            {"detail": ["event ids within a batch must be distinct"]},
        ),
    ],
)
def test_invalid_bodies_answer_400_with_their_field_errors_and_store_nothing(
    root, ns, body, errors
):
    response = root.post(events_url(ns), body, format="json")
    assert response.status_code == 400, response.data
    assert response.json() == {"code": "invalid", **errors}
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


def test_an_actor_id_with_a_line_break_is_a_json_400_not_an_html_404(root, ns):
    # The URL pattern's "." did not match a line break, so Django answered its HTML 404.
    for actor in ("a%0Ab", "a%0A", "%0D%0A"):
        response = root.get(events_url(ns, actor))
        assert response.status_code == 400, (actor, response.status_code)
        assert response["Content-Type"].startswith("application/json")
        assert response.json()["code"] == "invalid"


def test_history_cannot_be_deleted_and_bodies_must_be_json_or_a_form(root, ns):
    append(root, ns, event_type="A", version=1)
    deleted = root.delete(events_url(ns))
    assert deleted.status_code == 405 and deleted.json()["code"] == "method_not_allowed"
    assert root.delete(f"{API}/namespaces/{ns}/actors/order-1/snapshot/").status_code == 405
    text = root.post(events_url(ns), "event_type=A", content_type="text/plain")
    assert text.status_code == 415 and text.json()["code"] == "unsupported_media_type"
    assert [e["version"] for e in root.get(events_url(ns)).data["results"]] == [1]


@pytest.fixture
def own_nats_server(aether_nats_server_factory):
    """The API's stores on a nats-server of this test's own, with a 1 s timeout."""
    server = aether_nats_server_factory()
    previous = os.environ["AETHER_NATS_URL"]
    os.environ["AETHER_NATS_URL"] = server.url  # it wins over AETHER["NATS_URL"]
    # Changing AETHER drops the cached settings, stores and connection, before and after.
    with override_settings(AETHER={**settings.AETHER, "TIMEOUT": 1.0}):
        try:
            yield server
        finally:
            os.environ["AETHER_NATS_URL"] = previous


def test_a_nats_server_that_stopped_answers_503_until_it_is_back(root, ns, own_nats_server):
    assert append(root, ns, event_type="A", version=1).status_code == 201
    own_nats_server.stop()
    unavailable = {
        "code": "store_unavailable",
        "detail": "The event store did not answer in time; try again.",
    }
    for response in (root.get(f"{API}/namespaces/{ns}/"), root.get(events_url(ns))):
        assert response.status_code == 503, response.status_code
        assert response.json() == unavailable
    # An append either is refused before it is sent (the client knows the connection is
    # gone) or is sent and never confirmed; the answer says which.
    response = append(root, ns, event_type="A", version=2)
    assert response.status_code == 503, response.status_code
    assert response.json() in (
        unavailable,
        {
            "code": "outcome_unknown",
            "detail": "The event store did not confirm this write; it may have been stored. "
            "Repeat the request with the same event ids to find out.",
        },
    )
    # Started again (same port, same JetStream store): the API answers again once the
    # connection is back, with the event stored before. The append that answered 503
    # may be there too when it was sent before the client saw the connection go (then
    # it answered outcome_unknown), which is why a retry should carry client ids.
    own_nats_server.start()
    deadline = time.monotonic() + 30  # reconnecting takes a few seconds at most
    while (page := root.get(events_url(ns))).status_code == 503:
        assert time.monotonic() < deadline, "the API did not reconnect"
        time.sleep(0.2)
    assert page.status_code == 200
    stored = [e["version"] for e in page.data["results"]]
    # store_unavailable promises the append was not stored; outcome_unknown allows both.
    assert stored == [1] or (stored == [1, 2] and response.json()["code"] == "outcome_unknown")


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
    with override_settings(AETHER={**settings.AETHER, "API_SNAPSHOT_WRITES": True}):
        saved = root.put(snapshot_url, {"version": 1, "state": {"n": 1}}, format="json")
        assert saved.status_code == 200
        got = root.get(snapshot_url).data
        assert (got["version"], got["state"]) == (1, {"n": 1})
        refused = root.put(snapshot_url, {"version": 1, "state": [1]}, format="json")
        assert refused.status_code == 400


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


def test_state_when_a_handler_raises_on_stored_data_answers_422_cannot_apply(root, ns):
    # A class of its own in a namespace of its own: a broken actor in the shared
    # test-orders namespace would break every later test that replays all of it.
    class Till(aggregates.Aggregate):
        cents: int = 0

        class Meta:
            namespace = ns

        @aggregates.apply("Paid")
        def _paid(self, event: Event) -> None:
            self.cents += event.data["cents"]  # KeyError on data without "cents"

    try:
        actor = f"till-{uuid.uuid4().hex[:8]}"
        assert (
            append(root, ns, actor, event_type="Paid", version=1, data={"cents": 5}).status_code
            == 201
        )
        # Appended through the API: a Paid without the field its handler reads.
        bad = append(root, ns, actor, event_type="Paid", version=2, data={})
        assert bad.status_code == 201
        url = f"{API}/namespaces/{ns}/actors/{actor}/state/"
        response = root.get(url)
        assert response.status_code == 422
        assert response["Content-Type"] == "application/json"
        assert response.json() == {
            "code": "cannot_apply",
            "detail": "Till cannot build this actor's state from its stored events: "
            "its code raised KeyError",
        }
        before = root.get(url, {"at_version": 1})
        assert before.status_code == 200 and before.data["state"]["cents"] == 5
    finally:
        aggregates._registry.pop(Till._meta.label, None)


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


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def test_the_openapi_schema_describes_both_append_forms_and_every_error_body(root, ns):
    response = root.get(f"{API}/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = json.loads(response.content)
    components, paths = schema["components"]["schemas"], schema["paths"]
    actor = f"{API}/namespaces/{{namespace}}/actors/{{actor_id}}"

    def body(operation, status):
        return operation["responses"][str(status)]["content"]["application/json"]["schema"]

    # The append body: one event with a version, or a batch after expected_version.
    post = paths[f"{actor}/events/"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == _ref("AppendRequest")
    assert components["AppendRequest"] == {"oneOf": [_ref("AppendOne"), _ref("AppendBatch")]}
    assert set(components["AppendOne"]["required"]) == {"event_type", "version"}
    assert set(components["AppendBatch"]["required"]) == {"expected_version", "events"}
    assert components["AppendBatch"]["properties"]["events"] == {
        "type": "array",
        "items": _ref("NewEvent"),
        "minItems": 1,
        "maxItems": 500,
    }
    assert "version" not in components["NewEvent"]["properties"]
    assert components["AppendOne"]["properties"]["data"]["type"] == "object"

    # Its answers: 201, the 409 bodies, and an error body for every other status.
    assert body(post, 201) == _ref("AppendResult")
    assert body(post, 409) == _ref("AppendConflict")
    assert components["AppendConflict"] == {
        "oneOf": [_ref("VersionConflict"), _ref("OtherConflict")]
    }
    assert set(components["VersionConflict"]["required"]) == {
        "code",
        "detail",
        "actor_id",
        "attempted_version",
        "current_version",
    }
    for status in (401, 403, 404, 413, 415, 422, 503):
        assert body(post, status) == _ref("Error"), status
    assert body(post, 400) == _ref("ValidationError")
    assert components["ValidationError"]["additionalProperties"] is True
    assert set(components["Error"]["required"]) == {"code", "detail"}

    # 413 on a snapshot too, and the error bodies of every namespace endpoint.
    assert body(paths[f"{actor}/snapshot/"]["put"], 413) == _ref("Error")
    for path, operations in paths.items():
        if "{namespace}" not in path:
            continue
        for method, operation in operations.items():
            assert body(operation, 400) == _ref("ValidationError"), (method, path)
            assert body(operation, 409) in (_ref("NamespaceCollision"), _ref("AppendConflict"))
            for status in (401, 403, 404, 422, 503):
                assert body(operation, status) == _ref("Error"), (method, path, status)

    # Real answers match the published bodies.
    def valid(instance, name):
        jsonschema.validate(instance, {**_ref(name), "components": schema["components"]})

    append(root, ns, event_type="A", version=1)
    conflict = append(root, ns, event_type="A", version=1)
    valid(conflict.json(), "AppendConflict")
    valid(conflict.json(), "VersionConflict")
    with pytest.raises(jsonschema.ValidationError):
        valid(conflict.json(), "OtherConflict")  # so oneOf picks exactly one
    batch = {"expected_version": 1, "events": [{"event_type": "B"}, {"data": {}}]}
    invalid = root.post(events_url(ns), batch, format="json")
    assert invalid.status_code == 400
    valid(invalid.json(), "ValidationError")
    missing = root.get(f"{API}/namespaces/{ns}/actors/order-1/snapshot/")
    assert missing.status_code == 404
    valid(missing.json(), "Error")


def test_the_schema_is_for_authenticated_callers_unless_a_setting_opens_it(callers):
    anonymous = callers["anonymous"].get(f"{API}/schema/", {"format": "json"})
    assert anonymous.status_code == 403
    assert anonymous.json()["code"] == "not_authenticated"
    assert callers["no_grant"].get(f"{API}/schema/", {"format": "json"}).status_code == 200
    with override_settings(AETHER={**settings.AETHER, "API_SCHEMA_PUBLIC": True}):
        opened = callers["anonymous"].get(f"{API}/schema/", {"format": "json"})
        assert opened.status_code == 200 and "openapi" in opened.json()


def test_events_show_their_correlation_and_causation_ids(root, ns):
    from aether_django import correlation
    from aether_django.store import get_event_store

    store = get_event_store(ns)
    with correlation.use("req-api", "cause-api"):
        stamped = correlation.stamp({"user": "ann"}, command_id="cmd-1")
    store.save_event(Event(event_type="Placed", actor_id="order-1", version=1, metadata=stamped))
    # Appended through the API: the request's id (X-Request-ID) is both.
    root.post(events_url(ns), {"event_type": "Paid", "version": 2}, format="json",
              HTTP_X_REQUEST_ID="req-append")  # fmt: skip
    events = root.get(events_url(ns)).data["results"]
    assert [(e["correlation_id"], e["causation_id"]) for e in events] == [
        ("req-api", "cause-api"),
        ("req-append", "req-append"),
    ]
    # Read out of the metadata, which keeps them too.
    assert events[0]["metadata"] == {
        "user": "ann",
        "correlationId": "req-api",
        "causationId": "cause-api",
    }
    # The append answer has the same shape. A correlation id of the client's own is
    # kept; the request is then the cause.
    answer = root.post(events_url(ns), {"event_type": "Shipped", "version": 3,
                       "metadata": {"correlationId": "x"}}, format="json",
                       HTTP_X_REQUEST_ID="req-ship")  # fmt: skip
    (shipped,) = answer.data["events"]
    assert (shipped["correlation_id"], shipped["causation_id"]) == ("x", "req-ship")
