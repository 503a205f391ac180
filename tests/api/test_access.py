"""Grant cases outside the access table: who may create a namespace by writing to it, a
name that would share a granted namespace's stream, and a write-only grant.

Every endpoint against every kind of caller (anonymous, no grant, read, write, wildcard,
staff, superuser) is the table of tests/reliability/test_access_matrix.py.
"""

from __future__ import annotations

import uuid

from django.contrib.auth.models import User
from rest_framework.test import APIClient

from aether_django.models import NamespaceGrant

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

    writer = callers["wildcard_grant"]
    assert writer.post(url, {"event_type": "A", "version": 1}, format="json").status_code == 201
    created = root.get(f"{API}/namespaces/{fresh}/")
    assert created.status_code == 200 and created.data["events"] == 1
    assert writer.get(f"{API}/namespaces/{fresh}/").status_code == 200
    assert reader.get(f"{API}/namespaces/{fresh}/").status_code == 200


def test_a_name_sharing_a_stream_with_a_granted_namespace_changes_none_of_its_answers(callers, ns):
    # "X.b" and "X__b" would share the stream "X__b_events". Only "X.b" is granted; had
    # "X__b" existed, "X.b" would have answered 409 and so revealed it. "X__b" is now
    # refused by name, so nothing anyone does with it changes what "X.b" answers.
    granted, other = f"{ns}.b", f"{ns}__b"
    client = _client("dotted", pattern=granted, can_read=True, can_write=True)
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
    NamespaceGrant.objects.create(user=user, pattern=ns, can_read=False, can_write=True)
    client = APIClient()
    client.force_authenticate(user)
    url = f"{API}/namespaces/{ns}/actors/a/events/"
    assert client.post(url, {"event_type": "A", "version": 1}, format="json").status_code == 201
    assert client.get(url).status_code == 404
