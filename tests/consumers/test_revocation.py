"""Open WebSockets follow revoked grants, logouts and deactivations, on a real uvicorn
server with a real client: what the user may no longer read ends within the access
check interval (``WS_ACCESS_CHECK_INTERVAL``, shortened here)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
import websockets
from asgiref.sync import sync_to_async
from django.test import Client

from aether_django.store import get_event_store
from aether_django.testing.contract import ev

pytestmark = pytest.mark.django_db(transaction=True)

INTERVAL = 0.5
#: The longest a change may take to reach an open socket: one interval, plus room for
#: the check's queries on a loaded machine.
BOUND = INTERVAL + 2.5


@pytest.fixture(autouse=True)
def quick_checks(settings):
    settings.AETHER = {**settings.AETHER, "WS_ACCESS_CHECK_INTERVAL": INTERVAL}


@pytest.fixture
def base():
    return f"rv-{uuid.uuid4().hex[:8]}"


def create_user(*patterns, group_patterns=()):
    from django.contrib.auth.models import Group, User

    from aether_django.models import NamespaceGrant

    user = User.objects.create_user(f"u{uuid.uuid4().hex[:8]}", password="pw")
    grants = [NamespaceGrant.objects.create(user=user, pattern=p) for p in patterns]
    if group_patterns:
        group = Group.objects.create(name=f"g{uuid.uuid4().hex[:8]}")
        for pattern in group_patterns:
            NamespaceGrant.objects.create(group=group, pattern=pattern)
        user.groups.add(group)
    client = Client()
    assert client.login(username=user.username, password="pw")
    return user, grants, client


def cookie_of(client):
    return f"sessionid={client.cookies['sessionid'].value}"


async def recv(ws, timeout=5.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def subscribe(ws, sub_id, namespace, start="new"):
    await ws.send(
        json.dumps({"action": "subscribe", "id": sub_id, "namespace": namespace, "from": start})
    )
    return await recv(ws)


async def save(namespace, actor):
    await get_event_store(namespace).asave_event(ev(actor, 1))


async def wait_for_error(ws, since):
    """The next error frame (events before it are skipped); it came within BOUND."""
    while True:
        reply = await recv(ws, BOUND + 1)
        if reply["type"] == "error":
            assert time.monotonic() - since <= BOUND, reply
            return reply


async def test_a_revoked_grant_ends_the_subscriptions_that_relied_on_it(server, base):
    gone, kept, narrowed = f"{base}.gone", f"{base}.kept", f"{base}.eu.orders"
    for ns in (gone, kept, narrowed, f"{base}.us.orders"):
        await save(ns, "warm")
    _, grants, client = await sync_to_async(create_user)(gone, kept, f"{base}.eu.*", f"{base}.us.*")
    async with websockets.connect(
        f"ws://{server}/ws/aether/", additional_headers={"Cookie": cookie_of(client)}
    ) as ws:
        for sub_id, pattern in (("gone", gone), ("kept", kept), ("all", f"{base}.>")):
            assert (await subscribe(ws, sub_id, pattern))["type"] == "subscribed"
        await save(gone, "before")
        assert (await recv(ws))["namespace"] == gone
        # Revoke the grant on `gone` and the one on `us` (the pattern now reads less).
        since = time.monotonic()
        await sync_to_async(grants[0].delete)()
        await sync_to_async(grants[3].delete)()
        ended = {}
        while len(ended) < 2:
            reply = await wait_for_error(ws, since)
            assert reply["code"] == "access_revoked", reply
            ended[reply["id"]] = reply
        assert set(ended) == {"gone", "all"}
        assert ended["gone"]["last_sequences"][gone] >= 2
        # The ended subscriptions send nothing more; the kept one goes on.
        await save(gone, "after")
        await save(f"{base}.us.orders", "after")
        await save(kept, "after")
        reply = await recv(ws)
        assert (reply["id"], reply["namespace"]) == ("kept", kept), reply
        # The narrowed pattern can be subscribed again, and reads what is still granted.
        assert (await subscribe(ws, "all", f"{base}.>"))["type"] == "subscribed"
        await save(f"{base}.us.orders", "again")
        await save(narrowed, "again")
        reply = await recv(ws)
        assert (reply["id"], reply["namespace"]) == ("all", narrowed), reply


async def test_a_removed_group_membership_ends_the_subscriptions_it_granted(server, base):
    ns = f"{base}.orders"
    await save(ns, "warm")
    user, _, client = await sync_to_async(create_user)(group_patterns=(f"{base}.>",))
    async with websockets.connect(
        f"ws://{server}/ws/aether/", additional_headers={"Cookie": cookie_of(client)}
    ) as ws:
        assert (await subscribe(ws, "w", f"{base}.*"))["type"] == "subscribed"
        assert (await subscribe(ws, "x", ns))["type"] == "subscribed"
        since = time.monotonic()
        await sync_to_async(user.groups.clear)()
        ended = set()
        while len(ended) < 2:
            reply = await wait_for_error(ws, since)
            assert reply["code"] == "access_revoked", reply
            ended.add(reply["id"])
        assert ended == {"w", "x"}
        await save(ns, "after")
        # The socket stays open and answers; nothing of `ns` arrives any more.
        await ws.send(json.dumps({"action": "unsubscribe", "id": "w"}))
        assert (await recv(ws))["code"] == "unknown_id"


def deactivate(user, client):
    user.is_active = False
    user.save(update_fields=["is_active"])


def log_out(user, client):
    client.logout()


def change_password(user, client):
    user.set_password("other")
    user.save()


@pytest.mark.parametrize("change", [deactivate, log_out, change_password])
async def test_a_logout_or_deactivation_closes_the_socket(server, base, change):
    ns = f"{base}.orders"
    await save(ns, "warm")
    user, _, client = await sync_to_async(create_user)(ns)
    async with websockets.connect(
        f"ws://{server}/ws/aether/", additional_headers={"Cookie": cookie_of(client)}
    ) as ws:
        assert (await subscribe(ws, "s", ns, "all"))["type"] == "subscribed"
        assert (await recv(ws))["type"] == "event"
        since = time.monotonic()
        await sync_to_async(change)(user, client)
        reply = await wait_for_error(ws, since)
        assert reply["code"] == "access_revoked" and "id" not in reply, reply
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
