"""Subscriptions from "new" on the same pattern and loop share one set of JetStream consumers:
each receives exactly what was saved after it subscribed, in order, with its own filter,
and one that falls behind ends alone."""

from __future__ import annotations

import asyncio

import pytest

from aether_django.bus import Subscription, SubscriptionOverflowError
from aether_django.bus.feed import Feed, FeedLink
from aether_django.bus.nats import NATSEventBus
from aether_django.nats.streams import stream_info
from aether_django.patterns import SubscriptionFilter
from aether_django.runtime import Runtime
from aether_django.store.jetstream import JetStreamEventStore
from aether_django.testing.contract import ev, unique_namespace


@pytest.fixture
async def bus(aether_nats_url):
    runtime = Runtime(aether_nats_url)
    bus = NATSEventBus(runtime=runtime, node_id="shared", timeout=5)
    yield bus
    bus.close()
    runtime.close()


def feed_of(subscription: Subscription) -> Feed | None:
    """The feed a subscription reads from (None until it has joined one)."""
    assert isinstance(subscription.source, FeedLink)
    return subscription.source.feed


async def take(subscription, n, wait=5.0):
    return [await subscription.next(wait) for _ in range(n)]


async def consumers_of(bus: NATSEventBus, store: JetStreamEventStore) -> int:
    nc = await bus.runtime.connection()
    info = await stream_info(nc, store.stream_name, 5)
    return int(info["state"].get("consumer_count", 0))


async def test_new_subscriptions_of_one_pattern_share_one_consumer(bus):
    ns = unique_namespace()
    store = JetStreamEventStore(ns, runtime=bus.runtime)
    await store.asave_event(ev("x", 1))
    subs = [await bus.asubscribe(ns) for _ in range(5)]
    assert len({id(feed_of(s)) for s in subs}) == 1
    assert await consumers_of(bus, store) == 1
    stored = await store.asave_events([ev("x", v) for v in range(2, 12)])
    for sub in subs:
        got = await take(sub, 10)
        assert [d.sequence for d in got] == [e.sequence for e in stored]
    # Catching up, durable or waiting subscriptions keep consumers of their own.
    await bus.asubscribe(ns, start="all")
    await bus.asubscribe(ns, overflow="wait")
    assert await consumers_of(bus, store) == 3


async def test_a_joining_subscription_gets_exactly_what_was_saved_after_it_joined(bus):
    """Saves run all the time; a subscription joining the shared feed mid-stream gets a
    contiguous run of sequences that starts after the last save before it subscribed."""
    ns = unique_namespace()
    store = JetStreamEventStore(ns, runtime=bus.runtime)
    await store.asave_event(ev("x", 1))
    first = await bus.asubscribe(ns)
    last = 1
    stop = asyncio.Event()

    async def write() -> None:
        nonlocal last
        while not stop.is_set():
            saved = await store.asave_event(ev("x", last + 1))
            last = saved.version

    writer = asyncio.ensure_future(write())
    joined = []
    try:
        for _ in range(5):
            await asyncio.sleep(0.05)
            before = last  # saved before subscribing: never delivered to it
            sub = await bus.asubscribe(ns)
            after = last  # saved by the time it was ready: delivered to it
            joined.append((before, after, sub))
        await asyncio.sleep(0.1)
    finally:
        stop.set()
        await writer
    assert len({id(feed_of(s)) for *_, s in joined} | {id(feed_of(first))}) == 1
    for before, after, sub in joined:
        got = [d.event.version for d in await take(sub, last - after)]
        while True:
            try:
                got.append((await sub.next(0.3)).event.version)
            except TimeoutError:
                break
        assert got == list(range(got[0], last + 1)), "a gap or a repeat"
        assert before < got[0] <= after + 1


async def test_each_shared_subscription_keeps_its_filter(bus):
    ns = unique_namespace()
    store = JetStreamEventStore(ns, runtime=bus.runtime)
    await store.asave_event(ev("x", 1))
    everything = await bus.asubscribe(ns)
    placed = await bus.asubscribe(ns, SubscriptionFilter(event_types=["OrderPlaced"]))
    await store.asave_events([ev("x", 2, "OrderPlaced"), ev("x", 3, "OrderPaid")])
    assert [d.event.event_type for d in await take(everything, 2)] == [
        "OrderPlaced",
        "OrderPaid",
    ]
    (only,) = await take(placed, 1)
    assert only.event.event_type == "OrderPlaced"
    with pytest.raises(TimeoutError):
        await placed.next(0.3)


async def test_a_shared_subscriber_that_falls_behind_ends_alone(bus):
    ns = unique_namespace()
    store = JetStreamEventStore(ns, runtime=bus.runtime)
    await store.asave_event(ev("x", 1))
    slow = await bus.asubscribe(ns, buffer_size=3)
    fast = await bus.asubscribe(ns)
    stored = await store.asave_events([ev("x", v) for v in range(2, 12)])
    assert [d.sequence for d in await take(fast, 10)] == [e.sequence for e in stored]
    received = []
    with pytest.raises(SubscriptionOverflowError) as info:
        async for delivery in slow:
            received.append(delivery.sequence)
    assert received == [e.sequence for e in stored[:3]]
    assert info.value.last_sequence == stored[2].sequence
    more = await store.asave_event(ev("x", 12))
    assert (await fast.next(5)).sequence == more.sequence


async def test_the_shared_consumer_goes_with_the_last_subscription(bus):
    ns = unique_namespace()
    store = JetStreamEventStore(ns, runtime=bus.runtime)
    await store.asave_event(ev("x", 1))
    a, b = await bus.asubscribe(ns), await bus.asubscribe(ns)
    await a.aclose()
    stored = await store.asave_event(ev("x", 2))
    assert (await b.next(5)).sequence == stored.sequence
    await b.aclose()
    # The consumer is unsubscribed (the server drops an idle ordered consumer soon after).
    feed = feed_of(a)
    assert feed is not None and feed.stopped and feed not in bus._shared.values()
    again = await bus.asubscribe(ns)
    assert feed_of(again) is not feed
    stored = await store.asave_event(ev("x", 3))
    assert (await again.next(5)).sequence == stored.sequence


async def test_a_wildcard_shared_feed_covers_namespaces_created_later(bus):
    base = unique_namespace()
    a, b = await bus.asubscribe(f"{base}.*"), await bus.asubscribe(f"{base}.*")
    store = JetStreamEventStore(f"{base}.later", runtime=bus.runtime)
    stored = await store.asave_event(ev("x", 1))
    for sub in (a, b):
        (delivery,) = await take(sub, 1)
        assert (delivery.namespace, delivery.sequence) == (f"{base}.later", stored.sequence)


async def test_a_subscription_closed_before_it_is_attached_starts_nothing(bus):
    ns = unique_namespace()
    store = JetStreamEventStore(ns, runtime=bus.runtime)
    await store.asave_event(ev("x", 1))
    for start in ("new", "all"):
        sub = bus.subscribe(ns, start=start)  # attached in the background...
        sub.close()  # ...but closed first
        assert sub.source is not None
        await sub.source.ready()
        assert feed_of(sub) is None
    assert not bus._shared
