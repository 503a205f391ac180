"""The NATS bus: saved events reach subscribers through JetStream, with start positions,
durable resumption, overflow with a resume point, and transient signals."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime

import nats
import pytest
from nats.js.api import KeyValueConfig

from aether_django import metrics
from aether_django.bus import SubscriptionOverflowError
from aether_django.bus.nats import POSITIONS_BUCKET, NATSEventBus
from aether_django.events import format_timestamp
from aether_django.patterns import SubscriptionFilter
from aether_django.runtime import Runtime
from aether_django.store.jetstream import JetStreamEventStore
from aether_django.testing.contract import ev, unique_namespace


@pytest.fixture
def node(aether_nats_url):
    """Make 'nodes': a bus and a store factory sharing one runtime (connection set)."""
    made = []

    class Node:
        def __init__(self, name):
            self.runtime = Runtime(aether_nats_url)
            self.bus = NATSEventBus(runtime=self.runtime, node_id=name, timeout=5)
            made.append(self)

        def store(self, namespace):
            return JetStreamEventStore(namespace, runtime=self.runtime)

    yield Node
    for n in made:
        n.bus.close()
        n.runtime.close()


async def take(subscription, n, wait=5.0):
    return [await subscription.next(wait) for _ in range(n)]


async def nothing_more(subscription, wait=0.3):
    with pytest.raises(TimeoutError):
        await subscription.next(wait)


async def test_a_saved_event_reaches_subscribers_without_a_second_publish(node):
    a = node("a")
    ns = unique_namespace()
    store = a.store(ns)
    await store.asave_event(ev("x", 1))  # the stream exists before subscribing
    sub = await a.bus.asubscribe(ns)
    stored = await store.asave_event(ev("x", 2))
    (delivery,) = await take(sub, 1)
    assert delivery.namespace == ns
    assert delivery.event == stored and delivery.sequence == stored.sequence
    await nothing_more(sub)


async def test_namespace_isolation_and_patterns(node):
    a = node("a")
    base = unique_namespace()
    tenant_a, tenant_b = f"{base}.tenant-a", f"{base}.tenant-b"
    for ns in (tenant_a, tenant_b):
        await a.store(ns).asave_event(ev("warmup", 1))
    only_a = await a.bus.asubscribe(tenant_a)
    both = await a.bus.asubscribe(f"{base}.*")
    prefix = await a.bus.asubscribe(f"{base}.tenant-b*")
    await a.store(tenant_b).asave_event(ev("x", 1))
    await a.store(tenant_a).asave_event(ev("x", 1))
    assert [d.namespace for d in await take(only_a, 1)] == [tenant_a]
    assert sorted(d.namespace for d in await take(both, 2)) == [tenant_a, tenant_b]
    assert [d.namespace for d in await take(prefix, 1)] == [tenant_b]
    await nothing_more(only_a)
    await nothing_more(prefix)


async def test_filters_apply_to_saved_events(node):
    a = node("a")
    ns = unique_namespace()
    store = a.store(ns)
    await store.asave_event(ev("warm", 1))
    placed = await a.bus.asubscribe(ns, SubscriptionFilter(event_types=["OrderPlaced"]))
    one = await a.bus.asubscribe(ns, SubscriptionFilter(actor_pattern="order-customer-123"))
    await store.asave_event(ev("order-customer-123", 1, "OrderShipped"))
    await store.asave_event(ev("order-9", 1, "OrderPlaced"))
    assert [d.event.actor_id for d in await take(placed, 1)] == ["order-9"]
    assert [d.event.event_type for d in await take(one, 1)] == ["OrderShipped"]
    await nothing_more(placed)
    await nothing_more(one)


async def test_order_per_namespace_is_kept(node):
    a = node("a")
    ns = unique_namespace()
    store = a.store(ns)
    await store.asave_event(ev("warm", 1))
    sub = await a.bus.asubscribe(ns)
    for v in range(1, 51):
        await store.asave_event(ev(f"actor-{v % 5}", v // 5 + 1 if v % 5 else v // 5))
    sequences = [d.sequence for d in await take(sub, 50)]
    assert sequences == sorted(sequences)


async def test_start_positions(node):
    a = node("a")
    ns = unique_namespace()
    store = a.store(ns)
    first = await store.asave_events([ev("x", v) for v in range(1, 6)])
    middle = datetime.now(UTC)
    await asyncio.sleep(0.01)
    later = await store.asave_events([ev("x", v) for v in range(6, 9)])

    everything = await a.bus.asubscribe(ns, start="all")
    assert [d.event.version for d in await take(everything, 8)] == list(range(1, 9))
    from_seq = await a.bus.asubscribe(ns, start=first[3].sequence)
    assert [d.event.version for d in await take(from_seq, 5)] == [4, 5, 6, 7, 8]
    from_map = await a.bus.asubscribe(ns, start={ns: later[0].sequence})
    assert [d.event.version for d in await take(from_map, 3)] == [6, 7, 8]
    from_time = await a.bus.asubscribe(ns, start=middle)
    assert [d.event.version for d in await take(from_time, 3)] == [6, 7, 8]
    new_only = await a.bus.asubscribe(ns, start="new")
    await nothing_more(new_only)
    with pytest.raises(ValueError, match="start must be"):
        await a.bus.asubscribe(ns, start="yesterday")


async def test_an_int_start_is_refused_for_a_wildcard_pattern(node):
    a = node("a")
    with pytest.raises(ValueError, match="dict of namespace to sequence"):
        a.bus.subscribe(f"{unique_namespace()}.*", start=3, callback=lambda d: None)


async def test_a_wildcard_subscription_covers_namespaces_created_later(node):
    a = node("a")
    base = unique_namespace()
    sub = await a.bus.asubscribe(f"{base}.>")
    stored = await a.store(f"{base}.new.one").asave_event(ev("x", 1))
    (delivery,) = await take(sub, 1)
    assert (delivery.namespace, delivery.event.id) == (f"{base}.new.one", stored.id)


async def test_a_durable_subscription_resumes_where_it_stopped(node):
    a = node("a")
    ns = unique_namespace()
    store = a.store(ns)
    await store.asave_events([ev("x", v) for v in range(1, 4)])
    sub = await a.bus.asubscribe(ns, start="all", durable="reporting")
    assert [d.event.version for d in await take(sub, 3)] == [1, 2, 3]
    await sub.aclose()

    # While nobody listens, more is saved.
    await store.asave_events([ev("x", v) for v in range(4, 8)])

    again = await node("a-again").bus.asubscribe(ns, start="all", durable="reporting")
    assert [d.event.version for d in await take(again, 4)] == [4, 5, 6, 7]
    await nothing_more(again)
    await again.aclose()


async def test_a_durable_subscription_saves_only_what_was_handled(node):
    a = node("a")
    ns = unique_namespace()
    store = a.store(ns)
    stored = await store.asave_events([ev("x", v) for v in range(1, 4)])
    durable = f"handled-{ns}"
    sub = await a.bus.asubscribe(ns, start="all", durable=durable)
    await take(sub, 2)  # the 2nd is taken, and its handler has not finished
    sub.close()  # not aclose(): the 2nd does not count as handled
    await asyncio.sleep(0.3)
    again = await node("a-again").bus.asubscribe(ns, start="all", durable=durable)
    assert [d.event.id for d in await take(again, 2)] == [e.id for e in stored[1:]]
    await nothing_more(again)
    await again.aclose()


async def test_a_block_that_raised_does_not_count_its_delivery_as_handled(node):
    a = node("a")
    ns = unique_namespace()
    store = a.store(ns)
    stored = await store.asave_events([ev("x", v) for v in range(1, 5)])
    durable = f"raised-{ns}"
    with pytest.raises(RuntimeError):
        async with await a.bus.asubscribe(ns, start="all", durable=durable) as sub:
            async for delivery in sub:
                if delivery.event.version == 3:
                    raise RuntimeError("handler failed")
    again = await node("a-again").bus.asubscribe(ns, start="all", durable=durable)
    assert [d.event.id for d in await take(again, 2)] == [e.id for e in stored[2:]]
    await nothing_more(again)
    await again.aclose()


async def test_a_resumed_durable_subscription_skips_events_it_handled_by_their_id(node):
    a = node("a")
    ns = unique_namespace()
    store = a.store(ns)
    first = await store.asave_events([ev("x", v) for v in range(1, 4)])
    durable = f"dedupe-{ns}"
    sub = await a.bus.asubscribe(ns, start="all", durable=durable)
    await take(sub, 3)
    await sub.aclose()

    # The position is saved with the ids of the events handled last.
    js = (await a.runtime.connection()).jetstream()
    kv = await js.key_value(POSITIONS_BUCKET)
    key = f"{durable}.{store.stream_name}"
    saved = json.loads((await kv.get(key)).value)
    assert saved == {"seq": first[2].sequence, "ids": [e.id for e in first]}
    # Were the subscription to resume from before them (here: its position set back),
    # the events it handled already reach it again, and are skipped by their id.
    await kv.put(key, json.dumps({**saved, "seq": first[0].sequence - 1}).encode())

    later = await store.asave_events([ev("x", v) for v in range(4, 6)])
    b = node("b")
    again = await b.bus.asubscribe(ns, start="all", durable=durable)
    assert [d.event.id for d in await take(again, 2)] == [e.id for e in later]
    await nothing_more(again)
    assert b.bus.metrics["duplicates"] == 3
    await again.aclose()


async def test_a_durable_wildcard_subscription_picks_up_new_namespaces(node):
    a = node("a")
    base = unique_namespace()
    sub = await a.bus.asubscribe(f"{base}.*", durable="audit")
    await a.store(f"{base}.one").asave_event(ev("x", 1))
    assert [d.namespace for d in await take(sub, 1)] == [f"{base}.one"]
    await sub.aclose()
    await a.store(f"{base}.two").asave_event(ev("x", 1))
    await a.store(f"{base}.one").asave_event(ev("x", 2))
    again = await a.bus.asubscribe(f"{base}.*", durable="audit")
    got = sorted((d.namespace, d.event.version) for d in await take(again, 2))
    assert got == [(f"{base}.one", 2), (f"{base}.two", 1)]
    await again.aclose()


async def test_a_slow_subscriber_is_ended_with_a_resume_point_and_can_resume(node):
    a = node("a")
    overflows_before = metrics.BUS_OVERFLOWS.value()
    ns = unique_namespace()
    store = a.store(ns)
    await store.asave_event(ev("x", 1))
    slow = await a.bus.asubscribe(ns, buffer_size=5)
    stored = await store.asave_events([ev("x", v) for v in range(2, 22)])
    await asyncio.sleep(0.3)
    received = []
    with pytest.raises(SubscriptionOverflowError) as info:
        async for delivery in slow:
            received.append(delivery.sequence)
    assert received == [e.sequence for e in stored[:5]]
    resume = info.value.last_sequence
    assert resume is not None and resume == stored[4].sequence
    assert a.bus.metrics["overflowed"] == 1
    assert metrics.BUS_OVERFLOWS.value() == overflows_before + 1
    rest = await a.bus.asubscribe(ns, start=resume + 1)
    assert [d.sequence for d in await take(rest, 15)] == [e.sequence for e in stored[5:]]


async def test_overflow_wait_holds_the_consumer_and_loses_nothing(node):
    a = node("a")
    ns = unique_namespace()
    store = a.store(ns)
    await store.asave_event(ev("x", 1))
    sub = await a.bus.asubscribe(ns, buffer_size=5, overflow="wait")
    stored = await store.asave_events([ev("x", v) for v in range(2, 52)])
    await asyncio.sleep(0.5)  # the subscriber reads nothing meanwhile
    # The consumer is held back: no more than a buffer's worth was handed over.
    assert a.bus.metrics.get("delivered", 0) <= 5
    got = await take(sub, 50)
    assert [d.event.id for d in got] == [e.id for e in stored]
    await nothing_more(sub)
    assert a.bus.metrics.get("overflowed", 0) == 0


async def test_a_wildcard_overflow_resumes_without_replaying_namespaces_that_delivered_nothing(
    node,
):
    a = node("a")
    base = unique_namespace()
    busy, quiet = f"{base}.busy", f"{base}.quiet"
    for ns in (busy, quiet):  # history from before the subscription
        await a.store(ns).asave_events([ev("old", v) for v in range(1, 4)])
    slow = await a.bus.asubscribe(f"{base}.*", buffer_size=5)
    stored = await a.store(busy).asave_events([ev("x", v) for v in range(1, 11)])
    await asyncio.sleep(0.3)
    with pytest.raises(SubscriptionOverflowError) as info:
        async for _ in slow:
            pass
    # The quiet namespace delivered nothing, yet it has a resume point: where it stood.
    assert info.value.last_sequences == {busy: stored[4].sequence, quiet: 3}
    assert info.value.resume_start() == {busy: stored[5].sequence, quiet: 4}

    rest = await a.bus.asubscribe(f"{base}.*", start=info.value.resume_start())
    later = await a.store(quiet).asave_event(ev("new", 1))
    got = await take(rest, 6)
    assert sorted((d.namespace, d.sequence) for d in got) == sorted(
        [(busy, e.sequence) for e in stored[5:]] + [(quiet, later.sequence)]
    )
    await nothing_more(rest)  # none of the quiet namespace's older history


def test_a_sync_callback_subscription(node):
    a = node("a")
    ns = unique_namespace()
    store = a.store(ns)
    store.save_event(ev("x", 1))
    got = []
    sub = a.bus.subscribe(ns, callback=lambda d: got.append(d.event.version))
    store.save_event(ev("x", 2))
    store.save_event(ev("x", 3))
    deadline = asyncio.get_event_loop_policy()  # noqa: F841 - keep the loop policy alive
    import time

    until = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < until:
        time.sleep(0.01)
    assert got == [2, 3]
    sub.close()


async def test_transient_signals_reach_other_nodes_once(node):
    a, b = node("a"), node("b")
    ns = unique_namespace()
    on_a = await a.bus.asubscribe(ns)
    on_b = await b.bus.asubscribe(ns)
    await asyncio.sleep(0.2)  # b's signal listener is subscribed
    signal = ev("typing", 1, "UserTyping")
    assert a.bus.publish(ns, signal) == 1
    (local,) = await take(on_a, 1)
    (remote,) = await take(on_b, 1)
    assert local.event.id == remote.event.id == signal.id
    assert local.sequence is None  # not stored
    await nothing_more(on_a)  # its own echo is not delivered twice
    await nothing_more(on_b)  # and the other node gets it once


async def test_a_transient_signal_is_not_stored_or_replayed(node):
    a, b = node("a"), node("b")
    ns = unique_namespace()
    store = a.store(ns)
    warmup = await store.asave_event(ev("warm", 1))
    on_b = await b.bus.asubscribe(ns)
    await asyncio.sleep(0.2)  # b's signal listener is subscribed
    signal = ev("typing", 1, "UserTyping")
    a.bus.publish(ns, signal)
    (remote,) = await take(on_b, 1)
    assert remote.event.id == signal.id and remote.sequence is None
    await nothing_more(on_b)  # once

    # Nothing was stored: the stream holds the warm-up event only, and subscribers
    # made afterwards, from the whole history or durable, never see the signal.
    js = (await a.runtime.connection()).jetstream()
    assert (await js.stream_info(store.stream_name)).state.messages == 1
    replay = await b.bus.asubscribe(ns, start="all")
    durable = await b.bus.asubscribe(ns, start="all", durable=f"signals-{ns}")
    for late in (replay, durable):
        assert [d.event.id for d in await take(late, 1)] == [warmup.id]
        await nothing_more(late)
    await durable.aclose()


def test_get_event_bus_builds_the_configured_bus():
    from django.test import override_settings

    from aether_django.bus import LocalEventBus, get_event_bus

    bus = get_event_bus()
    assert isinstance(bus, NATSEventBus)
    assert get_event_bus() is bus
    with override_settings(AETHER={"BACKEND": "memory", "NODE_ID": "n1", "BUS_BUFFER_SIZE": 7}):
        local = get_event_bus()
        assert type(local) is LocalEventBus and local.buffer_size == 7
    assert isinstance(get_event_bus(), NATSEventBus)


async def test_a_position_the_server_refuses_is_reported_not_taken_as_saved(
    aether_nats_server_factory, caplog
):
    # A positions bucket that holds the subscription's start time but takes no more
    # than 40 bytes a message, too few for a position: every save of one is refused.
    # Positions used to be written with a request whose reply nobody read, so a
    # refused one counted as saved and nothing said so.
    server = aether_nats_server_factory()
    ns = unique_namespace()
    durable = f"refused-{ns}"
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket=POSITIONS_BUCKET, history=1))
    await kv.put(f"{durable}.since", format_timestamp(datetime.now(UTC)).encode())
    config = (await js.stream_info(f"KV_{POSITIONS_BUCKET}")).config
    config.max_msg_size = 40
    await js.update_stream(config)
    await nc.close()
    runtime = Runtime(server.url)
    bus = NATSEventBus(runtime=runtime, node_id="refused", timeout=5)
    try:
        await JetStreamEventStore(ns, runtime=runtime).asave_events([ev("x", 1)])
        with caplog.at_level(logging.WARNING, logger="aether_django.bus.nats"):
            sub = await bus.asubscribe(ns, start="all", durable=durable)
            await take(sub, 1)
            await sub.aclose()
        assert "could not save the position" in caplog.text
    finally:
        bus.close()
        runtime.close()
