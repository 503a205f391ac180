"""Who may do what: every namespace endpoint against every kind of caller."""

from __future__ import annotations

import pytest

API = "/api/aether"
KINDS = [
    "anonymous",
    "no_grant",
    "read_grant",
    "write_grant",
    "wildcard_grant",
    "staff",
    "superuser",
]
DENIED = "denied"  # 401 or 403: not authenticated
READERS = {"read_grant", "write_grant", "wildcard_grant", "superuser"}
WRITERS = {"write_grant", "wildcard_grant", "superuser"}


@pytest.fixture
def seeded(callers, ns):
    root = callers["superuser"]
    base = f"{API}/namespaces/{ns}/actors/order-1"
    assert (
        root.post(f"{base}/events/", {"event_type": "A", "version": 1}, format="json").status_code
        == 201
    )
    assert (
        root.put(f"{base}/snapshot/", {"version": 1, "state": {}}, format="json").status_code == 200
    )
    return callers, ns, base


def expected_read(kind: str) -> object:
    if kind == "anonymous":
        return DENIED
    return 200 if kind in READERS else 404


def expected_write(kind: str, ok: int) -> object:
    if kind == "anonymous":
        return DENIED
    if kind in WRITERS:
        return ok
    return 403 if kind in READERS else 404


def check(response, expected):
    if expected == DENIED:
        assert response.status_code in (401, 403), response.status_code
    else:
        assert response.status_code == expected, (
            response.status_code,
            getattr(response, "data", None),
        )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("endpoint", ["namespace", "actors", "events", "version", "snapshot"])
def test_reads(seeded, kind, endpoint):
    callers, ns, base = seeded
    url = {
        "namespace": f"{API}/namespaces/{ns}/",
        "actors": f"{API}/namespaces/{ns}/actors/",
        "events": f"{base}/events/",
        "version": f"{base}/version/",
        "snapshot": f"{base}/snapshot/",
    }[endpoint]
    check(callers[kind].get(url), expected_read(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_append(seeded, kind):
    callers, _ns, base = seeded
    response = callers[kind].post(
        f"{base}/events/", {"event_type": "B", "version": 2}, format="json"
    )
    check(response, expected_write(kind, 201))
    stored = callers["superuser"].get(f"{base}/version/").data["version"]
    assert stored == (2 if kind in WRITERS else 1)


@pytest.mark.parametrize("kind", KINDS)
def test_snapshot_put(seeded, kind):
    callers, _ns, base = seeded
    response = callers[kind].put(
        f"{base}/snapshot/", {"version": 1, "state": {"by": kind}}, format="json"
    )
    check(response, expected_write(kind, 200))


@pytest.mark.parametrize("kind", KINDS)
def test_the_namespace_list_shows_only_readable_namespaces(seeded, kind):
    callers, ns, _ = seeded
    response = callers[kind].get(f"{API}/namespaces/")
    if kind == "anonymous":
        check(response, DENIED)
        return
    assert response.status_code == 200
    assert (ns in {n["name"] for n in response.data}) == (kind in READERS)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", ["cluster/", "cluster/shards/"])
def test_cluster_endpoints_are_for_staff(seeded, kind, path):
    callers, _, _ = seeded
    expected = 200 if kind in ("staff", "superuser") else (DENIED if kind == "anonymous" else 403)
    check(callers[kind].get(f"{API}/{path}"), expected)


def test_writing_creates_a_namespace_for_a_writer(callers):
    url = f"{API}/namespaces/api-fresh-ns/actors/a/events/"
    assert (
        callers["wildcard_grant"]
        .post(url, {"event_type": "A", "version": 1}, format="json")
        .status_code
        == 201
    )
    assert callers["wildcard_grant"].get(f"{API}/namespaces/api-fresh-ns/").status_code == 200


def test_a_write_only_grant_may_append_but_not_read(db, ns):
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from aether_django.models import NamespaceGrant

    user = User.objects.create_user("dropbox", password="pw")
    NamespaceGrant.objects.create(user=user, pattern=ns, can_read=False, can_write=True)
    client = APIClient()
    client.force_authenticate(user)
    url = f"{API}/namespaces/{ns}/actors/a/events/"
    assert client.post(url, {"event_type": "A", "version": 1}, format="json").status_code == 201
    assert client.get(url).status_code == 404
