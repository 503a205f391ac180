"""Callers of every kind, and a namespace of their own per test."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.test import APIClient

from aether_django.models import NamespaceGrant


@pytest.fixture
def ns() -> str:
    return f"api-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def callers(db, ns):
    """APIClients for: anonymous, no grant, read, write, wildcard (via group), staff, superuser.

    The write and wildcard grants may create namespaces too (``can_create``)."""

    def user(name, **flags):
        return User.objects.create_user(name, password="pw", **flags)

    reader, writer, member = user("reader"), user("writer"), user("member")
    NamespaceGrant.objects.create(user=reader, pattern=ns, can_read=True, can_write=False)
    NamespaceGrant.objects.create(
        user=writer, pattern=ns, can_read=True, can_write=True, can_create=True
    )
    group = Group.objects.create(name="api-all")
    group.user_set.add(member)
    NamespaceGrant.objects.create(
        group=group, pattern="api-*", can_read=True, can_write=True, can_create=True
    )
    users = {
        "anonymous": None,
        "no_grant": user("nobody"),
        "read_grant": reader,
        "write_grant": writer,
        "wildcard_grant": member,
        "staff": user("staff", is_staff=True),
        "superuser": User.objects.create_superuser("root", password="pw"),
    }
    clients = {}
    for kind, who in users.items():
        client = APIClient()
        if who is not None:
            client.force_authenticate(who)
        clients[kind] = client
    return clients


@pytest.fixture
def root(callers):
    return callers["superuser"]
