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
def bus(aether_nats_url):
    runtime = Runtime(aether_nats_url)
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


@pytest.mark.parametrize("kind", ["all", "wildcard", "new", "durable"])
async def test_a_slow_catching_up_subscriber_gets_every_event_once_in_order(bus, caplog, kind):
    """A subscriber with a consumer of its own, on large events, that reads, but slowly:
    its consumer is held to the byte budget (what the NATS client queued beyond it is
    dropped and read again from where the subscriber got to), and it still receives
    every event once, in order, with filtered events in between, while the process
    stays far below the stream's size. From "all" (one namespace or two), from "new"
    with events saved meanwhile, and durable, closed and resumed halfway."""
    import gc
    import logging

    from aether_django.patterns import SubscriptionFilter
    from tests.consumers.test_real_server import PeakRSS

    prefix = unique_namespace("slow")
    namespaces = [f"{prefix}-a", f"{prefix}-b"] if kind == "wildcard" else [prefix]
    pattern = f"{prefix}-*" if kind == "wildcard" else prefix
    wanted: dict[str, list[int]] = {ns: [] for ns in namespaces}

    async def save_all() -> None:
        for ns in namespaces:
            store = JetStreamEventStore(ns, runtime=bus.runtime)
            for first in range(1, 101, 5):
                # Four large events with a small one in between that the filter leaves out.
                batch = [
                    ev("a", v, "Skipped") if v == first + 2 else ev("a", v, blob=BLOB)
                    for v in range(first, first + 5)
                ]
                saved = await store.asave_events(batch)
                wanted[ns].extend(e.sequence or 0 for e in saved if e.event_type != "Skipped")

    async def subscribe():
        return await bus.asubscribe(
            pattern,
            SubscriptionFilter(event_types=["Happened"]),
            start="new" if kind == "new" else "all",
            overflow="wait",
            durable=prefix if kind == "durable" else None,
        )

    if kind == "new":
        await JetStreamEventStore(prefix, runtime=bus.runtime).aensure()
    else:
        await save_all()
    gc.collect()
    peak = PeakRSS()
    with caplog.at_level(logging.WARNING):
        sub = await subscribe()
        saving = asyncio.ensure_future(save_all() if kind == "new" else asyncio.sleep(0))
        got: dict[str, list[int]] = {ns: [] for ns in namespaces}
        total = 80 * len(namespaces)
        for i in range(total):
            if kind == "durable" and i == total // 2:
                await sub.aclose()  # handled so far: it resumes after the last one
                sub = await subscribe()
            delivery = await sub.next(20)
            got[delivery.namespace].append(delivery.sequence)
            await asyncio.sleep(0.02)  # a slow reader
        await saving
        with pytest.raises(TimeoutError):
            await sub.next(1)  # nothing twice
        await sub.aclose()
    growth = peak.stop()
    assert got == wanted
    # 2 MiB buffer + 2 MiB queued in the NATS client per namespace, not the 72 MB stream.
    assert growth < 40 * MIB, growth / MIB
    assert bus.metrics.get("restarts", 0) > 0  # the consumer was held to its budget
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_the_nats_clients_ordered_consumer_does_not_recover_what_it_drops(
    bus, aether_nats_url
):
    """Why the bus replaces a consumer itself when the NATS client drops its messages:
    nats-py counts a dropped message as delivered before it drops it, so its ordered
    consumer sees no gap and never reads it again. With a pending limit alone, a
    subscriber that is slow for a moment would miss events."""
    import nats

    ns = unique_namespace()
    store = JetStreamEventStore(ns, runtime=bus.runtime)
    saved = await store.asave_events([ev("a", v, blob=BLOB) for v in range(1, 21)])
    dropped = []

    async def on_error(error: Exception) -> None:
        dropped.append(error)

    nc = await nats.connect(aether_nats_url, error_cb=on_error)
    got = []

    async def slow(msg) -> None:
        got.append(msg.metadata.sequence.stream)
        await asyncio.sleep(0.1)

    try:
        await nc.jetstream().subscribe(
            f"aether.events.{ns}.*",
            stream=store.stream_name,
            ordered_consumer=True,
            cb=slow,
            idle_heartbeat=0.5,  # its gap checks run with each heartbeat
            pending_bytes_limit=2 * MIB,
        )
        await asyncio.sleep(5)  # far longer than 20 events at 0.1 s each take
    finally:
        await nc.close()
    assert dropped
    assert len(got) == len(set(got)) < len(saved)  # some never arrive
    # With the bus, the same subscriber gets every one (see the tests above).
    sub = await bus.asubscribe(ns, start="all", overflow="wait")
    received = []
    for _ in saved:
        received.append((await sub.next(10)).sequence)
        await asyncio.sleep(0.1)
    assert received == [e.sequence for e in saved]
    await sub.aclose()
