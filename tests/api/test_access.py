"""Grant cases outside the access table: who may create a namespace by writing to it, a
name that would share a granted namespace's stream, a write-only grant, and what reads
of namespaces that do not exist leave behind.

Every endpoint against every kind of caller (anonymous, no grant, read, write, wildcard,
staff, superuser) is the table of tests/reliability/test_access_matrix.py.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth.models import User
from django.test import override_settings
from rest_framework.test import APIClient

from aether_django import store as store_module
from aether_django.models import NamespaceGrant
from aether_django.names import stream_name
from aether_django.runtime import get_runtime
from aether_django.store import InMemoryEventStore, get_event_store
from aether_django.testing.contract import ev

API = "/api/aether"


def events_url(namespace: str, actor: str = "a") -> str:
    return f"{API}/namespaces/{namespace}/actors/{actor}/events/"


def _client(username, **grant):
    """An APIClient of a new user with one grant (``pattern``, ``can_read``, ``can_write``)."""
    user = User.objects.create_user(username, password="pw")
    NamespaceGrant.objects.create(user=user, **grant)
    client = APIClient()
    client.force_authenticate(user)
    return client


def _stream_names() -> set[str]:
    async def names() -> set[str]:
        nc = await get_runtime().connection()
        return {str(info.config.name) for info in await nc.jetstream().streams_info()}

    return get_runtime().run(names())


def _stream_exists(namespace: str) -> bool:
    return stream_name(namespace) in _stream_names()


def test_only_a_writer_creates_a_namespace_by_writing_to_it(callers):
    fresh = f"api-{uuid.uuid4().hex}"  # matches the wildcard grant "api-*"
    root, url = callers["superuser"], events_url(fresh)
    reader = _client("fresh-reader", pattern=fresh, can_read=True, can_write=False)
    assert root.get(f"{API}/namespaces/{fresh}/").status_code == 404

    refused = {
        "read_grant": reader.post(url, {"event_type": "A", "version": 1}, format="json"),
        "no_grant": callers["no_grant"].post(url, {"event_type": "A", "version": 1}, format="json"),
        "anonymous": callers["anonymous"].post(
            url, {"event_type": "A", "version": 1}, format="json"
        ),
    }
    assert {kind: r.status_code for kind, r in refused.items()} == {
        "read_grant": 403,
        "no_grant": 404,
        "anonymous": 403,
    }
    assert refused["read_grant"].json()["code"] == "permission_denied"
    assert refused["no_grant"].json()["code"] == "not_found"
    assert root.get(f"{API}/namespaces/{fresh}/").status_code == 404, "still absent"
    assert fresh not in [n["name"] for n in root.get(f"{API}/namespaces/").data]

    # A write grant writes to namespaces that exist; creating one takes can_create.
    writer = _client("fresh-writer", pattern="api-*", can_read=True, can_write=True)
    refused = writer.post(url, {"event_type": "A", "version": 1}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"
    assert "can_create" in refused.json()["detail"]
    snapshot = f"{API}/namespaces/{fresh}/actors/a/snapshot/"
    with override_settings(AETHER={**settings.AETHER, "API_SNAPSHOT_WRITES": True}):
        assert writer.put(snapshot, {"version": 1, "state": {}}, format="json").status_code == 403
    assert root.get(f"{API}/namespaces/{fresh}/").status_code == 404, "still absent"
    assert not _stream_exists(fresh)

    creator = callers["wildcard_grant"]  # its group's grant has can_create
    assert creator.post(url, {"event_type": "A", "version": 1}, format="json").status_code == 201
    created = root.get(f"{API}/namespaces/{fresh}/")
    assert created.status_code == 200 and created.data["events"] == 1
    assert creator.get(f"{API}/namespaces/{fresh}/").status_code == 200
    assert reader.get(f"{API}/namespaces/{fresh}/").status_code == 200
    # Now that it exists, the plain write grant writes to it.
    again = writer.post(url, {"event_type": "A", "version": 2}, format="json")
    assert again.status_code == 201


def test_a_name_sharing_a_stream_with_a_granted_namespace_changes_none_of_its_answers(callers, ns):
    # "X.b" and "X__b" would share the stream "X__b_events". Only "X.b" is granted; had
    # "X__b" existed, "X.b" would have answered 409 and so revealed it. "X__b" is now
    # refused by name, so nothing anyone does with it changes what "X.b" answers.
    granted, other = f"{ns}.b", f"{ns}__b"
    client = _client("dotted", pattern=granted, can_read=True, can_write=True, can_create=True)
    root = callers["superuser"]
    actor = f"{API}/namespaces/{granted}/actors/a"

    def answers():
        return [
            (r.status_code, r.json())
            for r in (
                client.get(f"{API}/namespaces/{granted}/"),
                client.get(f"{actor}/events/"),
                client.get(f"{actor}/version/"),
                client.get(f"{actor}/snapshot/"),
                client.get(f"{API}/namespaces/"),
            )
        ]

    def attempt_the_other_name():
        other_actor = f"{API}/namespaces/{other}/actors/a"
        for response in (
            root.post(f"{other_actor}/events/", {"event_type": "A", "version": 9}, format="json"),
            root.put(f"{other_actor}/snapshot/", {"version": 1, "state": {}}, format="json"),
            client.post(f"{other_actor}/events/", {"event_type": "A", "version": 9}, format="json"),
        ):
            assert response.status_code == 400, response.status_code
            assert "two underscores" in str(response.data["namespace"])

    before = answers()
    attempt_the_other_name()
    assert answers() == before
    assert before[0][0] == 404 and before[2][1]["version"] == 0  # nothing there yet

    assert (
        client.post(
            f"{actor}/events/", {"event_type": "A", "version": 1}, format="json"
        ).status_code
        == 201
    )
    written = answers()
    attempt_the_other_name()
    assert answers() == written
    assert written[0][0] == 200 and written[2][1]["version"] == 1


def test_a_write_only_grant_may_append_but_not_read(db, ns):
    user = User.objects.create_user("dropbox", password="pw")
    NamespaceGrant.objects.create(
        user=user, pattern=ns, can_read=False, can_write=True, can_create=True
    )
    client = APIClient()
    client.force_authenticate(user)
    url = f"{API}/namespaces/{ns}/actors/a/events/"
    assert client.post(url, {"event_type": "A", "version": 1}, format="json").status_code == 201
    assert client.get(url).status_code == 404


def test_reads_of_namespaces_that_do_not_exist_keep_nothing(callers, ns):
    """A wildcard read grant ("api-*") lets its holder name any number of namespaces:
    reading them keeps no store object and makes nothing on the server."""
    reader = callers["wildcard_grant"]
    root = callers["superuser"]
    root.post(events_url(ns), {"event_type": "A", "version": 1}, format="json")
    kept, streams = set(store_module._stores), _stream_names()
    for _ in range(300):
        name = f"api-{uuid.uuid4().hex}"
        for url in (
            f"{API}/namespaces/{name}/",
            f"{API}/namespaces/{name}/actors/",
            f"{API}/namespaces/{name}/actors/a/events/",
            f"{API}/namespaces/{name}/actors/a/version/",
            f"{API}/namespaces/{name}/actors/a/snapshot/",
        ):
            assert reader.get(url).status_code in (200, 404), url
    assert set(store_module._stores) <= kept | {ns}
    assert _stream_names() == streams
    # The namespace that exists is kept, and keeps answering.
    assert reader.get(f"{API}/namespaces/{ns}/").status_code == 200
    assert ns in store_module._stores


def test_the_store_cache_is_bounded(db, ns):
    size = 8
    with override_settings(AETHER={**settings.AETHER, "STORE_CACHE_SIZE": size}):
        first = get_event_store(f"{ns}.0")
        for i in range(1, 50):
            get_event_store(f"{ns}.{i}")
            assert len(store_module._stores) <= size
        assert f"{ns}.49" in store_module._stores and f"{ns}.0" not in store_module._stores
        # A store dropped from the cache is built again; nothing of the namespace is lost.
        first.save_event(ev("a", 1))
        assert get_event_store(f"{ns}.0").get_latest_version("a") == 1


def test_in_memory_stores_of_one_namespace_share_its_events(ns):
    # A store dropped from the cache is built again: with the in-memory store, the new
    # object must see what the old one stored.
    early = InMemoryEventStore(ns)  # built before anything was saved
    InMemoryEventStore(ns).save_event(ev("a", 1))
    assert InMemoryEventStore(ns).get_latest_version("a") == 1
    assert early.get_latest_version("a") == 1
    early.save_event(ev("a", 2))
    assert InMemoryEventStore(ns).get_latest_version("a") == 2
    # Reading a namespace that does not exist registers nothing.
    other = f"{ns}-unknown"
    assert InMemoryEventStore(other).get_latest_version("a") == 0
    assert other not in InMemoryEventStore._instances
