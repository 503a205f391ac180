"""The WebSocket protocol through Channels' WebsocketCommunicator, on a real nats-server.

Who may connect, and which namespaces a subscription reaches for each kind of caller, is
the WebSocket table of tests/reliability/test_access_matrix.py.
"""

from __future__ import annotations

import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from aether_django.consumers import EventsConsumer
from aether_django.names import stream_name
from aether_django.store import get_event_store
from aether_django.testing.contract import ev

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def base():
    return f"ws-{uuid.uuid4().hex[:8]}"


async def make_user(base, *patterns, superuser=False):
    from django.contrib.auth.models import User

    from aether_django.models import NamespaceGrant

    def create():
        name = f"u{uuid.uuid4().hex[:8]}"
        if superuser:
            return User.objects.create_superuser(name, password="pw")
        user = User.objects.create_user(name, password="pw")
        for pattern in patterns:
            NamespaceGrant.objects.create(user=user, pattern=pattern, can_read=True)
        return user

    return await sync_to_async(create)()


async def connect(user):
    communicator = WebsocketCommunicator(EventsConsumer.as_asgi(), "/ws/aether/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def frame(communicator, timeout=5):
    return json.loads(await communicator.receive_from(timeout))


async def subscribe(communicator, sub_id, namespace, **options):
    await communicator.send_to(
        json.dumps({"action": "subscribe", "id": sub_id, "namespace": namespace, **options})
    )
    reply = await frame(communicator)
    return reply


async def test_subscribe_and_receive_saved_events_in_order(base):
    ns = f"{base}.orders"
    store = get_event_store(ns)
    await store.asave_event(ev("a", 1))
    ws = await connect(await make_user(base, ns))
    assert await subscribe(ws, "s1", ns) == {"type": "subscribed", "id": "s1"}
    stored = [await store.asave_event(ev("a", v)) for v in (2, 3, 4)]
    frames = [await frame(ws) for _ in range(3)]
    assert [f["sequence"] for f in frames] == [e.sequence for e in stored]
    assert frames[0]["type"] == "event" and frames[0]["id"] == "s1"
    assert frames[0]["namespace"] == ns and frames[0]["event"]["version"] == 2
    await ws.disconnect()


async def test_catch_up_from_a_sequence_then_live_without_gap_or_repeat(base):
    ns = f"{base}.orders"
    store = get_event_store(ns)
    stored = await store.asave_events([ev("a", v) for v in range(1, 6)])
    ws = await connect(await make_user(base, ns))
    await subscribe(ws, "s", ns, **{"from": stored[2].sequence})
    later = [await store.asave_event(ev("a", v)) for v in (6, 7)]
    got = [(await frame(ws))["event"]["version"] for _ in range(5)]
    assert got == [3, 4, 5, 6, 7]
    assert later[-1].sequence
    assert await ws.receive_nothing(0.3)
    await ws.disconnect()


async def test_several_subscriptions_filters_and_unsubscribe(base):
    ns = f"{base}.orders"
    store = get_event_store(ns)
    await store.asave_event(ev("warm", 1))
    ws = await connect(await make_user(base, f"{base}.>"))
    await subscribe(ws, "placed", ns, event_types=["OrderPlaced"])
    await subscribe(ws, "one", ns, actor_pattern="order-7")
    await store.asave_event(ev("order-7", 1, "OrderShipped"))
    await store.asave_event(ev("order-8", 1, "OrderPlaced"))
    got = sorted((f["id"], f["event"]["actor_id"]) for f in [await frame(ws), await frame(ws)])
    assert got == [("one", "order-7"), ("placed", "order-8")]
    await ws.send_to(json.dumps({"action": "unsubscribe", "id": "one"}))
    assert await frame(ws) == {"type": "unsubscribed", "id": "one"}
    await store.asave_event(ev("order-7", 2, "OrderShipped"))
    assert await ws.receive_nothing(0.3)
    await ws.disconnect()


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_frame"),
        ('{"action": "dance"}', "unknown_action"),
        ('{"action": "subscribe", "id": "s", "namespace": "bad..pattern"}', "invalid_subscription"),
        (
            '{"action": "subscribe", "id": "s", "namespace": "ok", "from": "yesterday"}',
            "invalid_subscription",
        ),
        ('{"action": "subscribe", "id": "", "namespace": "ok"}', "bad_id"),
        ('{"action": "unsubscribe", "id": "nope"}', "unknown_id"),
        (
            '{"action": "subscribe", "id": "s", "namespace": "ok", "event_types": [[1]]}',
            "invalid_subscription",
        ),
        (
            '{"action": "subscribe", "id": "s", "namespace": "ok", "event_types": [{"a": 1}]}',
            "invalid_subscription",
        ),
    ],
)
async def test_bad_frames_get_an_error_frame_and_the_socket_stays_usable(base, text, code):
    ws = await connect(await make_user(base, superuser=True))
    await ws.send_to(text)
    reply = await frame(ws)
    assert reply["type"] == "error" and reply["code"] == code
    ns = f"{base}.ok"
    await get_event_store(ns).asave_event(ev("warm", 1))
    assert (await subscribe(ws, "fine", ns))["type"] == "subscribed"
    await ws.disconnect()


async def test_huge_frames_and_floods_close_the_socket_others_stay_healthy(base):
    user = await make_user(base, superuser=True)
    huge = await connect(user)
    await huge.send_to("x" * (EventsConsumer.max_frame_bytes + 1))
    assert (await huge.receive_output(5))["type"] == "websocket.close"
    flood = await connect(user)
    for _ in range(EventsConsumer.max_frames_per_second + 10):
        await flood.send_to('{"action": "unsubscribe", "id": "x"}')
    closed = False
    for _ in range(EventsConsumer.max_frames_per_second + 11):
        output = await flood.receive_output(5)
        if output["type"] == "websocket.close":
            closed = output.get("code") == 1008
            break
    assert closed
    healthy = await connect(user)
    ns = f"{base}.ok"
    await get_event_store(ns).asave_event(ev("warm", 1))
    assert (await subscribe(healthy, "s", ns))["type"] == "subscribed"
    await healthy.disconnect()


async def test_too_many_subscriptions_on_one_socket(base, monkeypatch):
    monkeypatch.setattr(EventsConsumer, "max_subscriptions", 2)
    ns = f"{base}.ok"
    await get_event_store(ns).asave_event(ev("warm", 1))
    ws = await connect(await make_user(base, superuser=True))
    assert (await subscribe(ws, "a", ns))["type"] == "subscribed"
    assert (await subscribe(ws, "b", ns))["type"] == "subscribed"
    assert (await subscribe(ws, "c", ns))["code"] == "too_many_subscriptions"
    assert (await subscribe(ws, "a", ns))["code"] == "duplicate_id"
    await ws.disconnect()


@pytest.mark.parametrize("pattern", ["{base}.*", "{base}.>", "{base}.ord*", ">"])
async def test_a_numeric_from_with_a_wildcard_gets_an_error_frame(base, pattern):
    """A stream sequence belongs to one namespace: with a pattern it is refused, and the
    socket stays open and usable."""
    ns = f"{base}.orders"
    await get_event_store(ns).asave_event(ev("warm", 1))
    ws = await connect(await make_user(base, superuser=True))
    reply = await subscribe(ws, "s", pattern.format(base=base), **{"from": 5})
    assert reply["type"] == "error" and reply["code"] == "invalid_subscription", reply
    assert reply["id"] == "s" and "from" in reply["detail"]
    assert (await subscribe(ws, "s", ns, **{"from": 1}))["type"] == "subscribed"
    assert (await frame(ws))["event"]["actor_id"] == "warm"
    await ws.disconnect()


async def consumers_made_since(aether_nats_url, since):
    """(stream, consumer) of every consumer on the server created at or after ``since``."""
    import datetime as dt

    import nats

    nc = await nats.connect(aether_nats_url)
    try:
        js = nc.jetstream()
        found = []
        for stream in await js.streams_info():
            for info in await js.consumers_info(str(stream.config.name)):
                created = info.created
                if isinstance(created, str):
                    created = dt.datetime.fromisoformat(created.replace("Z", "+00:00")[:26])
                if created.replace(tzinfo=created.tzinfo or dt.UTC) >= since:
                    found.append((stream.config.name, info.name))
        return found
    finally:
        await nc.close()


def now():
    import datetime as dt

    return dt.datetime.now(dt.UTC)


@pytest.mark.parametrize(
    ("pattern", "grants"),
    [
        (">", ()),
        ("*", ()),
        ("ws*", ()),
        ("{base}.>", ()),
        ("{base}.>", ("elsewhere.>", "other", "{base}")),
        ("{base}.*", ("{base}.eu.*", "w*")),
        ("ws*", ("wz*", "ws.x")),
    ],
)
@pytest.mark.parametrize("start", ["all", "new"])
async def test_a_pattern_no_grant_can_match_makes_no_consumer_and_gets_an_error(
    base, aether_nats_url, pattern, grants, start
):
    for ns in (f"{base}", f"{base}.orders", f"{base}.eu.orders"):
        await get_event_store(ns).asave_event(ev("warm", 1))
    ws = await connect(await make_user(base, *(g.format(base=base) for g in grants)))
    try:
        since = now()
        reply = await subscribe(ws, "s", pattern.format(base=base), **{"from": start})
        assert reply["type"] == "error" and reply["code"] == "not_found", reply
        assert await consumers_made_since(aether_nats_url, since) == []
        assert await ws.receive_nothing(0.3)
    finally:
        # Always: a subscription left behind would make consumers during later tests.
        await ws.disconnect()


@pytest.mark.parametrize("start", ["all", "new"])
async def test_a_pattern_overlapping_grants_partly_reads_only_granted_streams(
    base, aether_nats_url, start
):
    eu, us = f"{base}.eu.orders", f"{base}.us.orders"
    for ns in (eu, us):
        await get_event_store(ns).asave_event(ev("warm", 1))
    ws = await connect(await make_user(base, f"{base}.eu.*"))
    try:
        since = now()
        assert (await subscribe(ws, "s", ">", **{"from": start}))["type"] == "subscribed"
        made = await consumers_made_since(aether_nats_url, since)
        assert {stream for stream, _ in made} == {stream_name(eu)}, made
        await get_event_store(us).asave_event(ev("late", 1))
        await get_event_store(eu).asave_event(ev("late", 1))
        got = [await frame(ws) for _ in range(2 if start == "all" else 1)]
        assert {f["namespace"] for f in got} == {eu}
        assert await ws.receive_nothing(0.3)
    finally:
        await ws.disconnect()


async def test_sockets_and_subscriptions_per_user_are_limited(base, settings):
    from django.conf import settings as django_settings

    settings.AETHER = {
        **django_settings.AETHER,
        "WS_MAX_SOCKETS_PER_USER": 2,
        "WS_MAX_SUBSCRIPTIONS_PER_USER": 3,
    }
    ns = f"{base}.ok"
    await get_event_store(ns).asave_event(ev("warm", 1))
    user = await make_user(base, ns)
    first, second = await connect(user), await connect(user)
    third = WebsocketCommunicator(EventsConsumer.as_asgi(), "/ws/aether/")
    third.scope["user"] = user
    connected, _ = await third.connect()
    assert connected
    assert (await frame(third))["code"] == "too_many_sockets"
    closed = await third.receive_output(5)
    assert closed == {"type": "websocket.close", "code": 4429, "reason": "too many sockets"}
    # Another user is not affected.
    other = await connect(await make_user(base, ns))
    assert (await subscribe(other, "x", ns))["type"] == "subscribed"
    for sub_id, socket in (("a", first), ("b", first), ("c", second)):
        assert (await subscribe(socket, sub_id, ns))["type"] == "subscribed"
    assert (await subscribe(second, "d", ns))["code"] == "too_many_subscriptions"
    await first.send_to(json.dumps({"action": "unsubscribe", "id": "a"}))
    assert (await frame(first))["type"] == "unsubscribed"
    assert (await subscribe(second, "d", ns))["type"] == "subscribed"
    # A closed socket frees its place.
    await first.disconnect()
    fourth = await connect(user)
    assert (await subscribe(fourth, "e", ns))["type"] == "subscribed"
    for socket in (second, fourth, other):
        await socket.disconnect()


async def test_a_socket_whose_connect_fails_frees_its_place(base, settings, monkeypatch):
    from django.conf import settings as django_settings

    from aether_django import consumers

    settings.AETHER = {**django_settings.AETHER, "WS_MAX_SOCKETS_PER_USER": 1}
    user = await make_user(base, f"{base}.ok")

    def broken(user):
        raise RuntimeError("the database is away")

    monkeypatch.setattr(consumers, "NamespaceAccess", broken)
    failing = WebsocketCommunicator(EventsConsumer.as_asgi(), "/ws/aether/")
    failing.scope["user"] = user
    with pytest.raises(RuntimeError):
        await failing.connect()
    monkeypatch.undo()
    settings.AETHER = {**django_settings.AETHER, "WS_MAX_SOCKETS_PER_USER": 1}
    ws = await connect(user)
    await ws.send_to(json.dumps({"action": "unsubscribe", "id": "x"}))
    assert (await frame(ws))["code"] == "unknown_id"
    await ws.disconnect()
