"""Catch-up through the store, live through the bus: the hand-over between them.

A worker reads its history with the store's ``aget_stream_events`` up to the stream's
head, then subscribes to the bus from the sequence after the last event it read. These
tests attack the switch: events saved continuously during catch-up and exactly at the
switch point, a subscription that ends, stored messages that do not decode (in the
history, and while live), and the "memory" backend, whose bus can only start at "new".
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator

import nats
import pytest
from django.db import DatabaseError
from django.test import override_settings

from aether_django.bus import get_event_bus
from aether_django.errors import ReplayError
from aether_django.events import Event, encode_event
from aether_django.models import ProjectionCheckpoint
from aether_django.projections import operations, sources
from aether_django.projections import runner as runner_module
from aether_django.projections.runner import catch_up
from aether_django.runtime import get_runtime
from aether_django.store import InMemoryEventStore, get_event_store
from aether_django.store.base import EventStore
from aether_django.testing.contract import ev, unique_namespace

from .app.models import Applied
from .app.projections import ledger
from .conftest import continuous_writes, eventually, save_ticks

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("scratch_projections"),
]


def applied_in_order(name: str, namespace: str) -> list[int]:
    """The sequences of the applied rows in the order they were written (row ids)."""
    return list(
        Applied.objects.filter(projection=name, namespace=namespace)
        .order_by("id")
        .values_list("sequence", flat=True)
    )


def checkpoint(name: str, namespace: str) -> ProjectionCheckpoint:
    return ProjectionCheckpoint.objects.get(projection=name, namespace=namespace)


class Reads:
    """Counts the store's stream reads (calls and events) of one namespace."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.calls = 0
        self.events = 0
        self.afters: list[int] = []
        self.sequences: set[int] = set()


@pytest.fixture
def store_reads(monkeypatch) -> Iterator[dict[str, Reads]]:
    """Count every ``aget_stream_events`` of the configured store class, by namespace."""
    counted: dict[str, Reads] = {}
    store_class = type(get_event_store(unique_namespace("probe")))
    original = store_class.aget_stream_events

    async def counting(self: EventStore, after_sequence: int = 0, **kwargs):
        reads = counted.setdefault(self.namespace, Reads(self.namespace))
        reads.calls += 1
        reads.afters.append(after_sequence)
        events = await original(self, after_sequence, **kwargs)
        reads.events += len(events)
        reads.sequences.update(event.sequence or 0 for event in events)
        return events

    monkeypatch.setattr(store_class, "aget_stream_events", counting)
    yield counted


@pytest.fixture
def subscriptions(monkeypatch) -> list[tuple[str, object]]:
    """Record the (pattern, start) of every bus subscription made."""
    made: list[tuple[str, object]] = []
    bus_class = type(get_event_bus())
    original = bus_class.asubscribe

    async def recording(self, pattern, *args, **kwargs):
        made.append((pattern, kwargs.get("start", "new")))
        return await original(self, pattern, *args, **kwargs)

    monkeypatch.setattr(bus_class, "asubscribe", recording)
    return made


async def _publish_garbage(url: str, namespace: str, actor: str = "a") -> int:
    store = get_event_store(namespace)
    nc = await nats.connect(url)
    try:
        ack = await nc.jetstream().publish(
            store.subject_for(actor),  # type: ignore[attr-defined]
            b"\xffnot an event",
            stream=store.stream_name,  # type: ignore[attr-defined]
        )
    finally:
        await nc.close()
    return int(ack.seq)


def publish_garbage(url: str, namespace: str, actor: str = "a") -> int:
    """Store a message that does not decode on ``actor``'s subject; its sequence."""
    return asyncio.run(_publish_garbage(url, namespace, actor))


# --- the store's read ---------------------------------------------------------------------


def test_get_stream_events_reads_every_actor_in_stream_order(unique, aether_nats_url):
    namespace = unique("proj-read")
    store = get_event_store(namespace)
    store.save_events([ev("a", 1), ev("a", 2)])
    store.save_event(ev("b c", 1))  # an id that is not its own subject token
    store.save_event(ev("a", 3))
    got = store.get_stream_events(0, limit=100)
    assert [e.sequence for e in got] == [1, 2, 3, 4]
    assert [(e.actor_id, e.version) for e in got] == [("a", 1), ("a", 2), ("b c", 1), ("a", 3)]
    assert [e.sequence for e in store.get_stream_events(2, limit=1)] == [3]
    assert store.get_stream_events(4, limit=10) == []
    # max_bytes cuts the read, but never below one event.
    assert len(store.get_stream_events(0, limit=10, max_bytes=1)) == 1
    with pytest.raises(Exception, match="limit"):
        store.get_stream_events(0, limit=0)
    with pytest.raises(Exception, match="after_sequence"):
        store.get_stream_events(-1, limit=1)


def test_get_stream_events_stops_at_an_undecodable_message(unique, aether_nats_url):
    namespace = unique("proj-read")
    store = get_event_store(namespace)
    store.save_events([ev("a", 1), ev("a", 2)])
    bad = publish_garbage(aether_nats_url, namespace)
    store.save_event(ev("a", 3))
    # The events before it, then the read that starts at it raises, with its bytes.
    assert [e.sequence for e in store.get_stream_events(0, limit=10)] == [1, 2]
    with pytest.raises(ReplayError) as raised:
        store.get_stream_events(2, limit=10)
    assert (raised.value.sequence, raised.value.raw) == (bad, b"\xffnot an event")
    assert [e.sequence for e in store.get_stream_events(bad, limit=10)] == [bad + 1]


def test_get_stream_events_reads_past_one_batched_get(unique):
    """More events than one batched direct get returns (4,096): the read goes on from
    where the server stopped, in order, and a limit or a byte budget ends it."""
    namespace = unique("proj-read")
    store = get_event_store(namespace)
    for start in range(0, 5000, 100):
        actor = f"a{start % 700}"
        first = store.get_latest_version(actor) + 1
        store.save_events([ev(actor, first + i) for i in range(100)])
    got = store.get_stream_events(0, limit=10_000)
    assert [e.sequence for e in got] == list(range(1, 5001))
    assert [e.sequence for e in store.get_stream_events(10, limit=4500)] == list(range(11, 4511))
    one = len(encode_event(got[0]))
    budget = store.get_stream_events(0, limit=10_000, max_bytes=one * 4200)
    assert 4100 <= len(budget) <= 4200
    assert [e.sequence for e in budget] == list(range(1, len(budget) + 1))


def test_the_memory_store_reads_its_namespace_in_stream_order():
    namespace = unique_namespace("mem-read")
    try:
        store = InMemoryEventStore(namespace)
        store.save_events([ev("a", 1), ev("a", 2)])
        store.save_event(ev("b", 1))
        # Another instance of the namespace shares the data, as on JetStream.
        other = InMemoryEventStore(namespace)
        assert [e.sequence for e in other.get_stream_events(0, limit=10)] == [1, 2, 3]
        assert [e.actor_id for e in other.get_stream_events(2, limit=10)] == ["b"]
        assert other.get_stream_events(3, limit=10) == []
        assert len(other.get_stream_events(0, limit=10, max_bytes=1)) == 1
    finally:
        InMemoryEventStore._instances.pop(namespace, None)


# --- catch-up through the store -----------------------------------------------------------


def test_catch_up_reads_the_history_from_the_store_and_subscribes_at_the_head(
    unique, runners, store_reads, subscriptions
):
    namespace = unique("proj-cu")
    Ledger = ledger(namespace, unique("cu"), batch_size=50)
    history = save_ticks(namespace, 300)
    runners(Ledger)
    Ledger.wait_for(history[-1], timeout=30)
    # Every event of the history came through the store's reads, once (a batch the
    # database refused would make the worker read part of it again, see below)...
    reads = store_reads[namespace]
    assert reads.sequences == {event.sequence for event in history}
    assert reads.afters[0] == 0
    assert reads.events == len(history)
    # ... and the bus was asked only for what follows the head.
    eventually(lambda: (namespace, history[-1].sequence + 1) in subscriptions, what="live")
    assert [start for pattern, start in subscriptions if pattern == namespace] == [
        history[-1].sequence + 1
    ]
    assert applied_in_order(Ledger._meta.name, namespace) == [e.sequence for e in history]
    # Live events after the switch come through the bus: no further store read.
    calls = reads.calls
    later = save_ticks(namespace, 5, first_version=301)
    Ledger.wait_for(later[-1], timeout=15)
    assert reads.calls == calls
    assert applied_in_order(Ledger._meta.name, namespace) == [e.sequence for e in history + later]


def test_a_batch_the_database_refuses_is_read_again_from_the_checkpoint(
    unique, runners, store_reads, monkeypatch
):
    """A batch whose checkpoint write fails (a locked SQLite file, a lost connection)
    commits nothing; the worker starts over from its checkpoint through the store, so the
    history is read partly twice and applied once."""
    namespace = unique("proj-dberr")
    Ledger = ledger(namespace, unique("dberr"), batch_size=50)
    history = save_ticks(namespace, 120)
    refused: list[int] = []
    original = runner_module.NamespaceWorker._apply

    def refuse_once(self, events, previous, *keys):
        if not refused:
            refused.append(previous)
            raise DatabaseError("database table is locked")
        return original(self, events, previous, *keys)

    monkeypatch.setattr(runner_module.NamespaceWorker, "_apply", refuse_once)
    runners(Ledger)
    Ledger.wait_for(history[-1], timeout=30)
    assert refused == [0]
    reads = store_reads[namespace]
    assert reads.afters.count(0) == 2  # read from the checkpoint again
    assert reads.sequences == {event.sequence for event in history}
    assert reads.events > len(history)
    assert applied_in_order(Ledger._meta.name, namespace) == [e.sequence for e in history]


def test_a_rebuild_replays_through_the_store(unique, store_reads, subscriptions):
    namespace = unique("proj-rb")
    Ledger = ledger(namespace, unique("rb"), batch_size=40)
    history = save_ticks(namespace, 250)
    assert catch_up(Ledger) == {namespace: "caught-up"}
    assert operations.rebuild(Ledger) == {namespace: "caught-up"}
    assert applied_in_order(Ledger._meta.name, namespace) == [e.sequence for e in history]
    assert store_reads[namespace].events == 2 * len(history)
    assert [s for s in subscriptions if s[0] == namespace] == []  # a replay never subscribes


def test_events_saved_exactly_at_the_switch_come_through_the_bus_once(
    unique, runners, monkeypatch, subscriptions
):
    """Events saved after the store's last read (it found the head) and before the
    subscription: the subscription starts at the sequence after the last event read, so
    the bus delivers them; none is missed, none applied twice."""
    namespace = unique("proj-switch")
    Ledger = ledger(namespace, unique("switch"), batch_size=10)
    history = save_ticks(namespace, 95)
    store = get_event_store(namespace)
    at_switch: list[Event] = []
    original = sources.StoreBatches._read

    async def read_then_save(self, after):
        got = await original(self, after)
        if not got and not at_switch:
            # The head was reached: save more before the worker subscribes.
            for version in range(1, 8):
                tick = Event(event_type="Tick", actor_id="switch", version=version)
                at_switch.append(await store.asave_event(tick))
        return got

    monkeypatch.setattr(sources.StoreBatches, "_read", read_then_save)
    runners(Ledger)
    eventually(lambda: len(at_switch) == 7, what="the saves at the switch")
    Ledger.wait_for(at_switch[-1], timeout=15)
    everything = [e.sequence for e in history + at_switch]
    assert applied_in_order(Ledger._meta.name, namespace) == everything
    # Subscribed from right after the last event the store read, before the saves.
    assert (namespace, history[-1].sequence + 1) in subscriptions


def test_continuous_writes_through_catch_up_and_the_switch_apply_each_once_in_order(
    unique, runners, monkeypatch, store_reads
):
    """A long history read in small chunks while a writer saves without pause: the
    worker catches up through many store reads, reaches the head and switches to the
    bus while events keep coming; every sequence is applied exactly once, in order."""
    monkeypatch.setattr(sources, "CATCH_UP_CHUNK", 64)
    namespace = unique("proj-cont")
    Ledger = ledger(namespace, unique("cont"), batch_size=16)
    history = save_ticks(namespace, 600, actor="history")
    with continuous_writes(namespace, 1500, actors=3) as saved:
        runners(Ledger)
        # Let the writer run well past the switch to live.
        eventually(lambda: len(saved) > 300, what="live writes")
        eventually(
            lambda: checkpoint(Ledger._meta.name, namespace).sequence > history[-1].sequence,
            what="catch-up",
        )
        eventually(lambda: len(saved) > 450, what="more live writes")
    everything = sorted(e.sequence for e in history + saved)
    Ledger.wait_for(everything[-1], timeout=30)
    assert applied_in_order(Ledger._meta.name, namespace) == everything
    assert checkpoint(Ledger._meta.name, namespace).sequence == everything[-1]
    assert store_reads[namespace].calls > 600 // 64  # the history came in many reads


def test_an_ended_subscription_sends_the_worker_back_to_the_store(
    unique, runners, monkeypatch, store_reads, subscriptions
):
    namespace = unique("proj-end")
    Ledger = ledger(namespace, unique("end"), batch_size=10)
    first = save_ticks(namespace, 20)
    ended = threading.Event()
    original = sources.BusBatches.take

    async def take_or_end(self):
        if ended.is_set():
            ended.clear()
            return None  # as when the subscriber fell behind and the bus ended it
        return await original(self)

    monkeypatch.setattr(sources.BusBatches, "take", take_or_end)
    runners(Ledger)
    Ledger.wait_for(first[-1], timeout=15)
    eventually(lambda: len([s for s in subscriptions if s[0] == namespace]) == 1, what="live")
    calls = store_reads[namespace].calls
    more = save_ticks(namespace, 30, first_version=21)
    ended.set()
    Ledger.wait_for(more[-1], timeout=15)
    eventually(lambda: len([s for s in subscriptions if s[0] == namespace]) == 2, what="again")
    assert store_reads[namespace].calls > calls  # read from the store again
    assert applied_in_order(Ledger._meta.name, namespace) == [e.sequence for e in first + more]


# --- messages that do not decode ----------------------------------------------------------


def test_an_undecodable_event_in_the_history_stops_the_projection_at_it(unique, aether_nats_url):
    namespace = unique("proj-bad")
    Ledger = ledger(namespace, unique("bad"), batch_size=4)
    before = save_ticks(namespace, 10)
    bad = publish_garbage(aether_nats_url, namespace)
    after = save_ticks(namespace, 5, first_version=11)
    assert catch_up(Ledger) == {namespace: "failed"}
    cp = checkpoint(Ledger._meta.name, namespace)
    assert (cp.state, cp.sequence, cp.last_error_sequence) == ("failed", bad - 1, bad)
    assert "cannot decode message" in cp.last_error
    assert applied_in_order(Ledger._meta.name, namespace) == [e.sequence for e in before]
    # Passed over only by a recorded skip; then it goes on after it.
    operations.skip(Ledger, namespace, bad, reason="written by hand", by="test")
    assert catch_up(Ledger) == {namespace: "caught-up"}
    assert applied_in_order(Ledger._meta.name, namespace) == [e.sequence for e in before + after]


def test_an_undecodable_event_saved_while_live_stops_the_projection_at_it(
    unique, runners, aether_nats_url
):
    """The bus cannot deliver a message it cannot decode (it logs and counts it): the
    worker sees the gap in the sequences and reads it from the store."""
    namespace = unique("proj-badlive")
    Ledger = ledger(namespace, unique("badlive"), batch_size=4)
    before = save_ticks(namespace, 6)
    runners(Ledger)
    Ledger.wait_for(before[-1], timeout=15)
    bad = publish_garbage(aether_nats_url, namespace)
    save_ticks(namespace, 3, first_version=7)
    eventually(lambda: checkpoint(Ledger._meta.name, namespace).state == "failed", what="the stop")
    cp = checkpoint(Ledger._meta.name, namespace)
    assert (cp.sequence, cp.last_error_sequence) == (bad - 1, bad)
    assert applied_in_order(Ledger._meta.name, namespace) == [e.sequence for e in before]


# --- a bus that starts only at "new" ----------------------------------------------------


@pytest.fixture
def memory_backend(monkeypatch):
    # Asked for before ``runners``: its runners stop before NATS is back.
    monkeypatch.setenv("AETHER_NATS_URL", "nats://127.0.0.1:1")  # any use of NATS fails
    with override_settings(AETHER={"BACKEND": "memory", "TIMEOUT": 1.0}):
        assert get_runtime().url == "nats://127.0.0.1:1"
        yield
    InMemoryEventStore._instances.clear()


def test_on_the_memory_backend_the_store_closes_the_gap_before_a_new_subscription(
    memory_backend, unique, runners, subscriptions
):
    """The in-process bus starts only at "new": the worker subscribes first and reads
    the store once more, under continuous writes; each event is applied once."""
    namespace = unique("proj-mem")
    Ledger = ledger(namespace, unique("mem"), batch_size=8)
    history = save_ticks(namespace, 200, actor="history")
    with continuous_writes(namespace, 600) as saved:
        runners(Ledger)
        eventually(lambda: len(saved) > 200, what="live writes")
    everything = sorted(e.sequence for e in history + saved)
    Ledger.wait_for(everything[-1], timeout=30)
    assert applied_in_order(Ledger._meta.name, namespace) == everything
    # A worker that catches up from the store after the writes ended subscribes once
    # it is at the head, which may be just after it applied the last event.
    eventually(lambda: (namespace, "new") in subscriptions, what="a subscription at the head")


# --- gathering a live batch ---------------------------------------------------------------


class _Trickle:
    """A subscription that has a delivery ready every millisecond, for ever."""

    pattern = "trickle"

    def __init__(self) -> None:
        self.sequence = 0

    async def next(self, timeout: float | None = None) -> object:
        from aether_django.bus.local import Delivery

        await asyncio.sleep(0.001)
        self.sequence += 1
        event = Event(event_type="Tick", actor_id="a", version=self.sequence)
        return Delivery("trickle", dataclasses.replace(event, sequence=self.sequence))


async def test_a_live_batch_stops_gathering_soon_after_its_first_event():
    """Under a steady trickle a batch must not wait until it is full: each event would
    wait for the batch_size - 1 after it (at 500 events/s and batch_size 100, 200 ms of
    lag before its transaction even starts). Gathering ends GATHER_WAIT after the first."""
    batches = sources.BusBatches(_Trickle(), None, 0, batch_size=200)  # type: ignore[arg-type]
    batch = await batches.take()
    assert batch is not None and 1 <= len(batch) < 200
    assert [sources.sequence_of(item) for item in batch] == list(range(1, len(batch) + 1))
