"""Buffers are bounded in bytes as well as in deliveries: large stored events fill a
subscription's buffer long before 10 000 of them would, and overflow the way a full
buffer always does (``overflow="end"``: the subscription ends with where to resume;
``overflow="wait"``: the JetStream consumer waits). On a real nats-server."""

from __future__ import annotations

import asyncio

import pytest

from aether_django.bus import SubscriptionOverflowError
from aether_django.bus.nats import NATSEventBus
from aether_django.runtime import Runtime
from aether_django.store.jetstream import JetStreamEventStore
from aether_django.testing.contract import ev, unique_namespace

MIB = 1024 * 1024
BLOB = "z" * (900 * 1024)


@pytest.fixture
def bus(nats_url):
    runtime = Runtime(nats_url)
    bus = NATSEventBus(runtime=runtime, node_id="budget", timeout=5, buffer_bytes=2 * MIB)
    yield bus
    bus.close()
    runtime.close()


async def test_a_waiting_subscription_buffers_at_most_its_byte_budget(bus):
    ns = unique_namespace()
    store = JetStreamEventStore(ns, runtime=bus.runtime)
    stored = [await store.asave_event(ev("a", v, blob=BLOB)) for v in range(1, 13)]
    sub = await bus.asubscribe(ns, start="all", overflow="wait")
    await asyncio.sleep(1.0)  # everything it would take has arrived
    assert 1 <= len(sub._queue) <= 3
    assert sum(len(d.event.data["blob"]) for d in sub._queue) <= 2 * MIB + len(BLOB)
    # Nothing is lost: reading makes room and the consumer goes on, in order.
    got = [(await sub.next(5)).sequence for _ in stored]
    assert got == [e.sequence for e in stored]
    await sub.aclose()


async def test_an_ending_subscription_overflows_on_bytes_with_where_to_resume(bus):
    ns = unique_namespace()
    store = JetStreamEventStore(ns, runtime=bus.runtime)
    await store.asave_event(ev("warm", 1))
    sub = await bus.asubscribe(ns)  # from "new", overflow="end"
    stored = [await store.asave_event(ev("a", v, blob=BLOB)) for v in range(1, 6)]
    received = []
    with pytest.raises(SubscriptionOverflowError) as overflow:
        while True:
            received.append((await sub.next(5)).sequence)
    # It was ended after 2 MiB (3 events, the third one over the budget), not 10 000.
    assert received == [e.sequence for e in stored[: len(received)]]
    assert 1 <= len(received) <= 3
    assert overflow.value.last_sequences == {ns: received[-1]}
    resumed = await bus.asubscribe(ns, start=overflow.value.resume_start())
    rest = [(await resumed.next(5)).sequence for _ in stored[len(received) :]]
    assert received + rest == [e.sequence for e in stored]
    await resumed.aclose()


async def test_small_events_still_fill_by_count(bus):
    ns = unique_namespace()
    store = JetStreamEventStore(ns, runtime=bus.runtime)
    await store.asave_event(ev("warm", 1))
    sub = await bus.asubscribe(ns, buffer_size=3)
    for v in range(1, 6):
        await store.asave_event(ev("a", v))
    with pytest.raises(SubscriptionOverflowError):
        for _ in range(5):
            await sub.next(5)
