"""Grant cases outside the access table: a writer creating a namespace, a write-only grant.

Every endpoint against every kind of caller (anonymous, no grant, read, write, wildcard,
staff, superuser) is the table of tests/reliability/test_access_matrix.py.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from rest_framework.test import APIClient

from aether_django.models import NamespaceGrant

API = "/api/aether"


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
    user = User.objects.create_user("dropbox", password="pw")
    NamespaceGrant.objects.create(user=user, pattern=ns, can_read=False, can_write=True)
    client = APIClient()
    client.force_authenticate(user)
    url = f"{API}/namespaces/{ns}/actors/a/events/"
    assert client.post(url, {"event_type": "A", "version": 1}, format="json").status_code == 201
    assert client.get(url).status_code == 404
