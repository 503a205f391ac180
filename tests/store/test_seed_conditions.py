"""The seed's success conditions for capabilities 1-4, one test each, on the JetStream store.

Test names follow the conditions in shared/seed/aether-capabilities.md:
``test_c<capability>_<condition>_<what it says>`` for the numbered conditions of each
capability, and ``test_c<capability>_summary_<what it says>`` for the condition of the
capability in the document's closing "Success Conditions" list. The time metrics of that
list (conflicts detected in under 1 ms) are measured by ``python -m bench.store``
(figures 5a-5c), not asserted here; what is asserted is the work done (round trips,
messages read), which does not depend on how loaded the machine is.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from aether_django.errors import ReplayError, VersionConflictError
from aether_django.events import ActorSnapshot, Event
from aether_django.runtime import Runtime
from aether_django.store import get_event_store
from aether_django.store.jetstream import JetStreamEventStore
from aether_django.testing.contract import ev, unique_namespace

from . import workers


@pytest.fixture
def writers(aether_nats_url):
    """Independent writers: each with its own runtime, so its own NATS connection."""
    runtimes: list[Runtime] = []

    def make(namespace: str, count: int) -> list[JetStreamEventStore]:
        stores = []
        for _ in range(count):
            runtime = Runtime(aether_nats_url)
            runtimes.append(runtime)
            stores.append(JetStreamEventStore(namespace, runtime=runtime))
        return stores

    yield make
    for runtime in runtimes:
        runtime.close()


def client_stats(store: JetStreamEventStore) -> dict[str, int]:
    """The message counters of the NATS connection the store's sync calls use.

    Sync calls from one thread reuse one pooled connection, so the difference of two
    readings is what the calls in between sent (``out_msgs``) and received (``in_msgs``).
    """
    runtime = store.runtime
    nc = runtime.run(runtime.connection())
    return dict(nc.stats)


def counted(store: JetStreamEventStore, work: Callable[[], Any]) -> tuple[Any, dict[str, int]]:
    """Run ``work`` and return its result with the messages it sent and received."""
    before = client_stats(store)
    result = work()
    after = client_stats(store)
    return result, {key: after[key] - before[key] for key in ("out_msgs", "in_msgs")}


def race_in_threads(calls: list[Callable[[], Any]], timeout: float = 30.0) -> list[Any]:
    """Run each call in its own thread, all released at once; return results or exceptions.

    A barrier makes the threads start together, so the calls really overlap at the
    server. A thread that has not finished within ``timeout`` fails the test (a deadlock).
    """
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait(timeout)
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a writer never finished"
    return results


def fold(events: list[Event]) -> dict:
    """A deterministic state from events (an order's running total and lines)."""
    state: dict = {"total": 0, "lines": [], "version": 0}
    for event in events:
        if event.event_type == "LineAdded":
            state["lines"].append(event.data["sku"])
            state["total"] += event.data["price"]
        state["version"] = event.version
    return state


# --- Capability 1: store events durably with conflict detection -------------------


async def race_ten_writers(writers) -> list:
    """Ten writers, each on its own connection, all append version 2 after version 1."""
    stores = writers(unique_namespace(), 10)
    await stores[0].asave_event(ev("order-1", 1))
    return await asyncio.gather(
        *(s.asave_event(ev("order-1", 2, writer=i)) for i, s in enumerate(stores)),
        return_exceptions=True,
    )


async def test_c1_1_multiple_writers_can_attempt_to_update_the_same_actor_simultaneously(writers):
    ns = unique_namespace()
    stores = writers(ns, 10)
    await stores[0].asave_event(ev("order-1", 1))
    spans: list[tuple[float, float]] = []

    async def attempt(i: int, store: JetStreamEventStore) -> Event:
        started = time.monotonic()
        try:
            return await store.asave_event(ev("order-1", 2, writer=i))
        finally:
            spans.append((started, time.monotonic()))

    results = await asyncio.gather(
        *(attempt(i, s) for i, s in enumerate(stores)), return_exceptions=True
    )
    # Simultaneous: every attempt was under way before the first one was answered.
    assert len(spans) == 10
    assert max(start for start, _ in spans) < min(end for _, end in spans)
    # Each writer's outcome is a stored event or a version conflict, nothing else.
    history = await stores[0].aget_events("order-1")
    assert [e.version for e in history] == [1, 2]
    for i, result in enumerate(results):
        if isinstance(result, Event):
            assert result == history[1] and result.data == {"writer": i}
        else:
            assert isinstance(result, VersionConflictError), f"writer {i}: {result!r}"
            assert (result.actor_id, result.attempted_version, result.current_version) == (
                "order-1",
                2,
                2,
            )
    assert any(isinstance(r, Event) for r in results)  # the stored version 2 is one of them


async def test_c1_2_at_most_one_writer_succeeds_others_receive_version_conflict(writers):
    results = await race_ten_writers(writers)
    winners = [r for r in results if isinstance(r, Event)]
    losers = [r for r in results if isinstance(r, VersionConflictError)]
    assert len(winners) == 1 and len(losers) == 9


async def test_c1_3_failed_writers_can_inspect_current_version_and_retry(writers):
    ns = unique_namespace()
    first, second = writers(ns, 2)
    await first.asave_event(ev("order-1", 1))
    await first.asave_event(ev("order-1", 2))
    with pytest.raises(VersionConflictError) as info:
        await second.asave_event(ev("order-1", 2))
    retry = info.value.current_version + 1
    stored = await second.asave_event(ev("order-1", retry))
    assert stored.version == 3


@pytest.mark.slow
def test_c1_4_no_events_are_lost_or_overwritten_with_8_racing_processes(aether_nats_server):
    """8 OS processes append to one actor until versions 1..400 exist."""
    ns, actor, target = unique_namespace("race"), "order-race", 400
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(8) as pool:
        start = manager.Barrier(8)  # all 8 connected before any appends
        results = pool.starmap(workers.race_append, [(ns, actor, target, start)] * 8)

    events = get_event_store(ns).get_events(actor)
    versions = [e.version for e in events]
    assert versions == list(range(1, target + 1)), "each version exactly once, in order"
    sequences = [e.sequence or 0 for e in events]  # a stored event always has one
    assert sequences == sorted(sequences)

    won = sorted(v for r in results for v in r["won"])
    assert won == versions, "every acknowledged save is stored, and only those"
    by_version = {e.version: e.data["pid"] for e in events}
    for r in results:
        for version in r["won"]:
            assert by_version[version] == r["pid"], "no acknowledged event was overwritten"
        assert [v for kind, v, _ in r["log"] if kind == "won"] == r["won"]
        assert [(a, c) for kind, a, c in r["log"] if kind == "conflict"] == r["conflicts"]
        # Every conflict carried the right current_version: walk the process's own
        # history in the order it happened.
        latest_win, latest_current = 0, 0
        for kind, attempted, current in r["log"]:
            if kind == "won":
                latest_win = attempted
                continue
            assert by_version[attempted] != r["pid"], (
                f"process {r['pid']} was refused version {attempted}, which no other process wrote"
            )
            assert attempted <= current <= target, "the reported version did not exist"
            assert current >= latest_current, "a later conflict reported an older version"
            assert current >= latest_win, "a conflict reported less than the process had won"
            latest_current = current
    conflicts = sum(len(r["conflicts"]) for r in results)
    assert conflicts > 0, "the processes should actually have raced"
    print(f"\n8 processes, {target} versions, {conflicts} conflicts detected")


def test_c1_5_conflicts_are_detected_optimistically_in_two_round_trips_and_no_lock(writers):
    """Detection needs no lock: a stale write is refused by the server's sequence check.

    The writer whose view is stale sends its write (refused by the server, which
    compares Nats-Expected-Last-Subject-Sequence with the subject's last sequence) and
    reads the actor's current version once, for the error: two requests, two answers,
    nothing taken or released. Its latency (target < 1 ms) is figure 5c of
    ``python -m bench.store``, not asserted here.
    """
    ns = unique_namespace()
    first, second = writers(ns, 2)
    first.save_event(ev("a", 1))
    second.get_latest_version("a")  # second's view is now version 1
    first.save_event(ev("a", 2))

    def stale_save() -> VersionConflictError:
        with pytest.raises(VersionConflictError) as info:
            second.save_event(ev("a", 2))
        return info.value

    error, traffic = counted(second, stale_save)
    assert error.current_version == 2
    assert traffic == {"out_msgs": 2, "in_msgs": 2}, "the refused write and one read"


def test_c1_summary_concurrent_saves_of_the_same_version_all_but_one_fail(writers):
    """Eight threads, each with its own connection, save version 2 at the same moment;
    a second attempt at that version then fails for every one of them."""
    ns = unique_namespace()
    stores = writers(ns, 8)
    stores[0].save_event(ev("order-1", 1))
    for store in stores:
        assert store.get_latest_version("order-1") == 1  # every writer read version 1

    results = race_in_threads(
        [
            functools.partial(store.save_event, ev("order-1", 2, writer=i))
            for i, store in enumerate(stores)
        ]
    )
    winners = [r for r in results if isinstance(r, Event)]
    conflicts = [r for r in results if isinstance(r, VersionConflictError)]
    assert len(winners) == 1 and len(conflicts) == 7, results
    assert all(c.current_version == 2 and c.attempted_version == 2 for c in conflicts)

    # A second attempt at the same version fails for everyone, the winner included:
    # the version is taken, whoever asks.
    again = race_in_threads(
        [
            functools.partial(store.save_event, ev("order-1", 2, again=i))
            for i, store in enumerate(stores)
        ]
    )
    assert all(isinstance(r, VersionConflictError) for r in again), again
    stored = stores[0].get_events("order-1")
    assert [e.version for e in stored] == [1, 2]
    assert stored[1].id == winners[0].id, "no conflict went undetected"


# --- Capability 2: rebuild state from event history -------------------------------


def _order_events(actor: str, n: int) -> list[Event]:
    return [
        ev(actor, v, "LineAdded", sku=f"sku-{v}", price=v) if v > 1 else ev(actor, 1, "Placed")
        for v in range(1, n + 1)
    ]


def test_c2_1_get_events_from_zero_returns_all_events_in_order():
    store = get_event_store(unique_namespace())
    store.save_events(_order_events("order-1", 20))
    assert [e.version for e in store.get_events("order-1", 0)] == list(range(1, 21))


def test_c2_2_replaying_all_events_produces_identical_state_every_time():
    store = get_event_store(unique_namespace())
    store.save_events(_order_events("order-1", 50))
    states = [fold(store.get_events("order-1")) for _ in range(5)]
    assert all(state == states[0] for state in states)
    assert states[0]["total"] == sum(range(2, 51))


def _snapshot_load(store: JetStreamEventStore, actor: str) -> tuple[dict, list[Event]]:
    """Load an actor the way an aggregate does: its snapshot, then only the events after it.

    The snapshot records the stream sequence its state reaches, so the read of the
    events after it starts right there instead of searching for them.
    """
    snapshot = store.get_latest_snapshot(actor)
    assert snapshot is not None
    tail = store.get_events(actor, snapshot.version + 1, after_sequence=snapshot.state["sequence"])
    return dict(snapshot.state), tail


def _history_with_snapshot(writers, length: int) -> tuple[JetStreamEventStore, dict]:
    """An actor with ``length`` events and a snapshot 10 events before the end.

    Returns a reader with a connection of its own (nothing cached) and the full state.
    """
    ns = unique_namespace()
    writer, reader = writers(ns, 2)
    events = _order_events("order-1", length)
    for start in range(0, length, 500):  # atomic batches stay well under the server's limit
        writer.save_events(events[start : start + 500])
    stored = writer.get_events("order-1")
    partial = fold(stored[:-10])
    partial["sequence"] = stored[-11].sequence
    writer.save_snapshot(ActorSnapshot(actor_id="order-1", version=length - 10, state=partial))
    return reader, fold(stored)


def test_c2_3_snapshot_reduces_replay_from_o_n_to_o_1_after_the_snapshot(writers):
    """Loading from a snapshot does the same work for 300 events of history as for 3000.

    Work is counted on the reader's connection: requests sent and messages received.
    A full replay receives one message per event (O(n)); a snapshot load receives the
    snapshot and the 10 events after it, whatever the length of the history (O(1)),
    which is also the seed's target of a replay reduced by more than 90 %.
    """
    loads = {}
    for length in (300, 3000):
        reader, full = _history_with_snapshot(writers, length)
        (state, tail), load = counted(reader, functools.partial(_snapshot_load, reader, "order-1"))
        assert [e.version for e in tail] == list(range(length - 9, length + 1))
        for event in tail:
            state["lines"] = [*state["lines"], event.data["sku"]]
            state["total"] += event.data["price"]
            state["version"] = event.version
        del state["sequence"]
        assert state == full, "snapshot plus the events after it is the full state"

        events, replay = counted(reader, functools.partial(reader.get_events, "order-1"))
        assert len(events) == length
        assert replay["in_msgs"] > length, "a full replay receives every event"
        assert load["in_msgs"] < 0.1 * replay["in_msgs"]
        loads[length] = load
    assert loads[300] == loads[3000], f"snapshot load depends on history length: {loads}"


def test_c2_4_snapshots_are_optional():
    store = get_event_store(unique_namespace())
    store.save_events(_order_events("order-1", 5))
    assert store.get_latest_snapshot("order-1") is None
    assert fold(store.get_events("order-1"))["version"] == 5


async def test_c2_5_corrupted_events_are_reported_without_losing_clean_data(aether_nats_url):
    import nats

    store = get_event_store(unique_namespace())
    await store.asave_events(_order_events("order-1", 3))
    nc = await nats.connect(aether_nats_url)
    try:
        await nc.jetstream().publish(store.subject_for("order-1"), b"{corrupt")  # type: ignore[attr-defined]
    finally:
        await nc.close()
    await store.asave_event(ev("order-1", 4, "LineAdded", sku="x", price=1))
    events, errors = await store.aget_events_with_errors("order-1")
    assert [e.version for e in events] == [1, 2, 3, 4]
    assert len(errors) == 1 and isinstance(errors[0], ReplayError)
    assert errors[0].raw == b"{corrupt"


def test_c2_summary_get_events_and_replay_produce_identical_state_every_time(writers):
    """Readers on separate connections, replaying in full or from a snapshot, agree."""
    ns = unique_namespace()
    writer, *readers = writers(ns, 4)
    writer.save_events(_order_events("order-1", 120))
    full = writer.get_events("order-1")
    snapshot_state = fold(full[:100])
    writer.save_snapshot(ActorSnapshot(actor_id="order-1", version=100, state=snapshot_state))

    states = [fold(reader.get_events("order-1")) for reader in readers for _ in range(3)]
    assert all(state == states[0] for state in states)
    for reader in readers:
        snapshot = reader.get_latest_snapshot("order-1")
        assert snapshot is not None
        rebuilt = dict(snapshot.state)
        rebuilt["lines"] = list(rebuilt["lines"])
        for event in reader.get_events("order-1", snapshot.version + 1):
            rebuilt["lines"].append(event.data["sku"])
            rebuilt["total"] += event.data["price"]
            rebuilt["version"] = event.version
        assert rebuilt == states[0], "no data was lost replaying from the snapshot"


# --- Capability 3: enable safe concurrent writes -----------------------------------


def test_c3_1_two_concurrent_writers_both_read_version_1(writers):
    ns = unique_namespace()
    a, b = writers(ns, 2)
    a.save_event(ev("doc", 1))
    assert a.get_latest_version("doc") == 1
    assert b.get_latest_version("doc") == 1


def test_c3_2_first_save_of_version_2_succeeds(writers):
    ns = unique_namespace()
    a, b = writers(ns, 2)
    a.save_event(ev("doc", 1))
    a.get_latest_version("doc"), b.get_latest_version("doc")
    assert a.save_event(ev("doc", 2)).version == 2


def test_c3_3_second_save_of_version_2_gets_conflict_with_current_version_2(writers):
    ns = unique_namespace()
    a, b = writers(ns, 2)
    a.save_event(ev("doc", 1))
    a.get_latest_version("doc"), b.get_latest_version("doc")
    a.save_event(ev("doc", 2))
    with pytest.raises(VersionConflictError) as info:
        b.save_event(ev("doc", 2))
    assert info.value.current_version == 2
    assert info.value.attempted_version == 2
    assert info.value.actor_id == "doc"


def test_c3_4_application_reads_the_version_again_and_retries_with_3(writers):
    ns = unique_namespace()
    a, b = writers(ns, 2)
    a.save_event(ev("doc", 1))
    a.save_event(ev("doc", 2))
    with pytest.raises(VersionConflictError):
        b.save_event(ev("doc", 2))
    version = b.get_latest_version("doc")
    assert version == 2
    assert b.save_event(ev("doc", version + 1)).version == 3
    assert [e.version for e in a.get_events("doc")] == [1, 2, 3]


def test_c3_5_no_locks_are_held_between_reading_and_writing(writers):
    """A writer that read and then stalls blocks nobody; it only learns of the conflict."""
    ns = unique_namespace()
    slow, fast = writers(ns, 2)
    slow.save_event(ev("doc", 1))
    read = slow.get_latest_version("doc")  # slow now "thinks"...
    done = threading.Event()

    def other_writer():
        for v in range(2, 12):
            fast.save_event(ev("doc", v))
        done.set()

    thread = threading.Thread(target=other_writer)
    thread.start()
    assert done.wait(10), "another writer was blocked by a reader"
    thread.join()
    with pytest.raises(VersionConflictError) as info:
        slow.save_event(ev("doc", read + 1))
    assert info.value.current_version == 11


def test_c3_summary_two_writers_race_one_wins_the_other_sees_a_conflict(writers):
    """Two threads, each with its own connection, save the same next version at once.

    Repeated for many rounds so the writes really overlap at the server. In every
    round exactly one wins; the loser sees the conflict with the winner's version and
    its retry goes through. Nothing blocks: each round ends well within its timeout.
    """
    ns = unique_namespace()
    left, right = writers(ns, 2)
    left.save_event(ev("doc", 1))
    version = 1
    for round_number in range(20):
        assert left.get_latest_version("doc") == right.get_latest_version("doc") == version
        attempt = version + 1
        results = race_in_threads(
            [
                functools.partial(left.save_event, ev("doc", attempt, writer="left")),
                functools.partial(right.save_event, ev("doc", attempt, writer="right")),
            ]
        )
        won = [r for r in results if isinstance(r, Event)]
        lost = [r for r in results if isinstance(r, VersionConflictError)]
        assert len(won) == 1 and len(lost) == 1, (round_number, results)
        assert lost[0].current_version == attempt
        loser = right if isinstance(results[1], VersionConflictError) else left
        assert loser.save_event(ev("doc", lost[0].current_version + 1)).version == attempt + 1
        version = attempt + 1
    versions = [e.version for e in left.get_events("doc")]
    assert versions == list(range(1, version + 1))


# --- Capability 4: isolate logical domains using namespaces --------------------------


@pytest.fixture
def tenants(aether_nats_server):
    """The seed's two stores, "tenant-a" and "tenant-b", and an actor id no other test uses."""
    return get_event_store("tenant-a"), get_event_store("tenant-b"), f"order-{uuid.uuid4().hex[:8]}"


def test_c4_1_two_stores_are_created_with_namespaces_tenant_a_and_tenant_b(tenants):
    tenant_a, tenant_b, _ = tenants
    assert (tenant_a.namespace, tenant_b.namespace) == ("tenant-a", "tenant-b")
    assert tenant_a is not tenant_b


async def test_c4_2_save_event_to_tenant_a_stores_it_in_the_tenant_a_stream(
    tenants, aether_nats_url
):
    import nats

    tenant_a, _, actor = tenants
    stored = await tenant_a.asave_event(ev(actor, 1))
    nc = await nats.connect(aether_nats_url)
    try:
        msg = await nc.jetstream().get_msg("tenant-a_events", stored.sequence)
        assert msg.subject == tenant_a.subject_for(actor)
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == stored.id
    finally:
        await nc.close()


def test_c4_3_get_events_from_tenant_a_returns_the_event(tenants):
    tenant_a, _, actor = tenants
    stored = tenant_a.save_event(ev(actor, 1))
    assert tenant_a.get_events(actor) == [stored]


def test_c4_4_get_events_from_tenant_b_returns_empty(tenants):
    tenant_a, tenant_b, actor = tenants
    tenant_a.save_event(ev(actor, 1))
    assert tenant_b.get_events(actor) == []
    assert tenant_b.get_latest_version(actor) == 0


def test_c4_5_stream_names_are_prefixed_tenant_a_events_and_tenant_b_events(tenants):
    tenant_a, tenant_b, actor = tenants
    tenant_a.save_event(ev(actor, 1))
    tenant_b.save_event(ev(actor, 1))
    assert tenant_a.stream_name == "tenant-a_events"
    assert tenant_b.stream_name == "tenant-b_events"
    # Both streams exist on the server under those names.
    streams = {info.stream for info in (tenant_a.get_info(), tenant_b.get_info()) if info}
    assert streams == {"tenant-a_events", "tenant-b_events"}


async def test_c4_5_each_namespace_is_its_own_stream_on_the_server(aether_nats_url):
    import nats

    a, b = get_event_store(unique_namespace("iso-a")), get_event_store(unique_namespace("iso-b"))
    await a.asave_event(ev("x", 1))
    await b.asave_event(ev("x", 1))
    nc = await nats.connect(aether_nats_url)
    try:
        js = nc.jetstream()
        info_a = await js.stream_info(f"{a.namespace}_events")
        info_b = await js.stream_info(f"{b.namespace}_events")
        assert info_a.state.messages == 1 and info_b.state.messages == 1
        assert set(info_a.config.subjects or ()).isdisjoint(info_b.config.subjects or ())
    finally:
        await nc.close()


async def test_c4_summary_events_in_namespace_a_are_invisible_to_namespace_b(aether_nats_url):
    """Nothing written in A can be read from B: events, versions, snapshots, actor lists."""
    import nats

    ns_a, ns_b = unique_namespace("iso-a"), unique_namespace("iso-b")
    a, b = get_event_store(ns_a), get_event_store(ns_b)
    await a.asave_events([ev("shared", 1), ev("shared", 2)])
    await a.asave_snapshot(ActorSnapshot(actor_id="shared", version=2, state={"of": "a"}))
    await b.asave_event(ev("only-b", 1))

    assert await b.aget_events("shared") == []
    assert await b.aget_latest_version("shared") == 0
    assert await b.aget_latest_snapshot("shared") is None
    assert await b.aget_actor_ids() == ["only-b"]
    assert await a.aget_actor_ids() == ["shared"]
    nc = await nats.connect(aether_nats_url)
    try:
        js = nc.jetstream()
        subjects_b = (await js.stream_info(f"{ns_b}_events")).config.subjects or []
        assert all(ns_a not in subject for subject in subjects_b)
        assert (await js.stream_info(f"{ns_b}_events")).state.messages == 1
    finally:
        await nc.close()
