"""Idempotent commands in the model layer: a command id is applied to an actor at most once.

``update()``/``aupdate()`` with a ``command_id``, and routed sends, recognise a command id
among the actor's latest ``Meta.command_window`` commands (at least the snapshot
interval), across snapshots, processes and nodes. The multi-process tests send the same
command ids from 8 processes at once and count, in the stored stream, the events of
each command id.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import uuid
from collections.abc import Iterator

import pytest

from aether_django.aggregates import RECENT_COMMANDS, Aggregate
from aether_django.events import ActorSnapshot
from aether_django.runtime import Runtime
from aether_django.sharding.routing import ShardHost, send

from ..cluster.nodes import NodeProcess, wait_until
from . import workers
from .domain import Counter, Ledger, Order, OrderError

PROCESSES = 8
COMMANDS = 50


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def applied_per_command(model: type[Aggregate], actor_ids: list[str]) -> collections.Counter[str]:
    """How many stored events each command id has, over the actors' streams."""
    store = model.get_store()
    return collections.Counter(
        event.command_id or "" for actor_id in actor_ids for event in store.get_events(actor_id)
    )


def send_from_8_processes(mode: str, actor_ids: list[str], command_ids: list[str]) -> list:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(PROCESSES) as pool:
        start = manager.Barrier(PROCESSES)  # all set up and connected before any sends
        return pool.starmap(
            workers.send_commands, [(mode, actor_ids, command_ids, start)] * PROCESSES
        )


def check_each_applied_once(actor_ids: list[str], command_ids: list[str]) -> None:
    counts = applied_per_command(Counter, actor_ids)
    assert counts == collections.Counter(command_ids), [
        (command_id, n) for command_id, n in counts.items() if n != 1
    ]
    for index, actor_id in enumerate(actor_ids):
        counter = Counter.objects.get(actor_id)
        mine = command_ids[index :: len(actor_ids)]
        assert sorted(counter.seen) == sorted(mine) and counter.count == len(mine)


# --- 8 processes, the same 50 command ids ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["update", "aupdate"])
def test_8_processes_send_the_same_50_command_ids_and_each_is_applied_once(mode):
    actor_ids = [new_id("counter") for _ in range(3)]
    command_ids = [new_id("cmd") for _ in range(COMMANDS)]
    replayed = send_from_8_processes(mode, actor_ids, command_ids)
    check_each_applied_once(actor_ids, command_ids)
    # Every send ran its command or found it applied, never both: 50 ran in all.
    assert sum(replayed) == PROCESSES * COMMANDS - COMMANDS


@pytest.fixture
def two_nodes(aether_nats_url, monkeypatch) -> Iterator[list[NodeProcess]]:
    """Two ``aether_node`` processes sharing the 100 shards of a fresh cluster bucket."""
    bucket = f"cluster_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AETHER_TEST_CLUSTER_BUCKET", bucket)  # the senders' too
    nodes = [NodeProcess("node-a", bucket), NodeProcess("node-b", bucket)]
    try:

        def settled() -> bool:
            revisions = {node.last.get("map_revision") for node in nodes}
            shards = [node.last.get("shards") or 0 for node in nodes]
            return (
                len(revisions) == 1 and None not in revisions and sum(shards) == 100 and all(shards)
            )

        wait_until(settled, 30)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.slow
def test_8_processes_route_the_same_50_command_ids_and_each_is_applied_once(two_nodes):
    actor_ids = [new_id("counter") for _ in range(3)]
    command_ids = [new_id("cmd") for _ in range(COMMANDS)]
    send_from_8_processes("routed", actor_ids, command_ids)
    check_each_applied_once(actor_ids, command_ids)


# --- the window ----------------------------------------------------------------------


def post_commands(actor_id: str, first: int, last: int) -> None:
    """Store the commands ``c-first`` .. ``c-last`` (one event each), ten to a save."""
    ledger = Ledger.objects.get(actor_id) if first > 1 else Ledger.objects.create(actor_id)
    for n in range(first, last + 1):
        with ledger.command_context(f"c-{n}"):
            ledger.post()
        if n % 10 == 0 or n == last:
            ledger.save()


def test_the_window_is_the_snapshot_interval_and_survives_a_snapshot():
    assert Ledger._meta.command_window == 250 and Counter._meta.command_window == RECENT_COMMANDS
    actor = new_id("ledger")
    post_commands(actor, 1, 260)
    snapshot = Ledger.get_store().get_latest_snapshot(actor)
    assert snapshot is not None and snapshot.version == 250
    # The snapshot keeps the whole window, and says how long it is.
    assert len(snapshot.state["recent_commands"]) == 250
    assert snapshot.state["command_window"] == 250

    Ledger.objects.forget()
    loaded = Ledger.objects.get(actor)  # from the snapshot, plus 10 events
    assert loaded.recorded_version("c-60") == 60  # 200 commands back
    assert loaded.recorded_version("c-11") == 11  # the oldest of the last 250
    # A command sent again 200 commands later is not run again, through update().
    again = Ledger.objects.update(actor, lambda ledger: ledger.post(), command_id="c-60")
    assert again.command_replayed and again.version == 260
    assert Ledger.get_store().get_latest_version(actor) == 260


def test_a_command_older_than_the_window_runs_again_as_documented():
    actor = new_id("ledger")
    post_commands(actor, 1, 260)
    Ledger.objects.forget()
    # c-10 is 251 commands back: out of the window, so it is a new command again.
    assert Ledger.objects.get(actor).recorded_version("c-10") is None
    again = Ledger.objects.update(actor, lambda ledger: ledger.post(), command_id="c-10")
    assert not again.command_replayed and again.version == 261
    assert applied_per_command(Ledger, [actor])["c-10"] == 2


def test_a_snapshot_written_with_the_older_100_command_window_still_recognises_250():
    actor = new_id("ledger")
    post_commands(actor, 1, 260)
    store = Ledger.get_store()
    current = store.get_latest_snapshot(actor)
    assert current is not None
    # What the code before the longer window wrote: the last 100 commands, no window.
    state = {k: v for k, v in current.state.items() if k != "command_window"}
    state["recent_commands"] = current.state["recent_commands"][-RECENT_COMMANDS:]
    store.save_snapshot(ActorSnapshot(actor_id=actor, version=250, state=state))
    Ledger.objects.forget()

    for loaded in (Ledger.objects.get(actor), asyncio.run(Ledger.objects.aget(actor))):
        assert (loaded.version, loaded.entries) == (260, 260)
        assert loaded.recorded_version("c-60") == 60  # before the snapshot's 100
        assert loaded.recorded_version("c-11") == 11
        assert loaded.recorded_version("c-10") is None
        assert len(loaded._recent_commands) == 250
    again = Ledger.objects.update(actor, lambda ledger: ledger.post(), command_id="c-60")
    assert again.command_replayed and store.get_latest_version(actor) == 260


def test_a_short_snapshot_of_a_young_actor_is_complete_and_read_from_its_end(monkeypatch):
    actor = new_id("ledger")
    ledger = Ledger.objects.create(actor)
    for n in range(1, 4):
        with ledger.command_context(f"c-{n}"):
            ledger.post()
    ledger.save()
    # An older snapshot that holds fewer commands than its window held all there were.
    second = Ledger.get_store().get_events(actor)[1]
    state = {**ledger._snapshot().state, "recent_commands": [["c-1", 1], ["c-2", 2]]}
    state["sequence"] = second.sequence
    del state["command_window"]
    Ledger.get_store().save_snapshot(ActorSnapshot(actor_id=actor, version=2, state=state))
    reads: list[int] = []
    original = type(Ledger.get_store()).get_events

    def counting(self, actor_id, from_version=0, **kwargs):
        reads.append(from_version)
        return original(self, actor_id, from_version, **kwargs)

    monkeypatch.setattr(type(Ledger.get_store()), "get_events", counting)
    Ledger.objects.forget()
    loaded = Ledger.objects.get(actor)
    assert reads == [3]  # only after the snapshot
    assert [loaded.recorded_version(f"c-{n}") for n in (1, 2, 3)] == [1, 2, 3]


# --- update() and aupdate() -------------------------------------------------------------


def test_command_replayed_says_whether_the_command_ran():
    actor = new_id("ledger")
    first = Ledger.objects.update(actor, lambda ledger: ledger.post(), create=True, command_id="a")
    assert not first.command_replayed and first.version == 1
    again = Ledger.objects.update(actor, lambda ledger: ledger.post(), command_id="a")
    assert again.command_replayed and again.version == 1
    other = Ledger.objects.update(actor, lambda ledger: ledger.post(), command_id="b")
    assert not other.command_replayed and other.version == 2
    # Without the cached copy too: the stored history says so.
    Ledger.objects.forget()
    assert Ledger.objects.update(
        actor, lambda ledger: ledger.post(), command_id="a"
    ).command_replayed
    assert Ledger.get_store().get_latest_version(actor) == 2


async def test_aupdate_does_not_run_a_command_id_twice():
    actor = new_id("ledger")
    first = await Ledger.objects.aupdate(
        actor, lambda ledger: ledger.post(), create=True, command_id="a"
    )
    assert not first.command_replayed
    Ledger.objects.forget()
    again = await Ledger.objects.aupdate(actor, lambda ledger: ledger.post(), command_id="a")
    assert again.command_replayed and again.version == 1


def test_a_command_refused_by_the_domain_can_be_retried_with_the_same_id():
    actor = new_id("order")
    Order.objects.update(actor, lambda o: o.place("ann"), create=True, command_id="place")
    with pytest.raises(OrderError, match="without lines"):
        Order.objects.update(actor, lambda o: o.pay(), command_id="pay")
    Order.objects.update(actor, lambda o: o.add_line("pen", 1, 2), command_id="line")
    paid = Order.objects.update(actor, lambda o: o.pay(), command_id="pay")
    assert not paid.command_replayed and paid.status == "paid"
    assert [e.command_id for e in Order.get_store().get_events(actor)] == ["place", "line", "pay"]


def test_a_command_that_fails_half_way_leaves_nothing_that_looks_applied():
    actor = new_id("order")
    Order.objects.update(actor, lambda o: o.place("ann"), create=True, command_id="place")

    def add_then_fail(order: Order) -> None:
        order.add_line("pen", 1, 2)  # recorded on the copy, then refused
        raise OrderError("refused after recording")

    with pytest.raises(OrderError):
        Order.objects.update(actor, add_then_fail, command_id="line")
    retried = Order.objects.update(actor, lambda o: o.add_line("pen", 1, 2), command_id="line")
    assert not retried.command_replayed and len(retried.lines) == 1


def test_every_event_of_one_command_carries_its_command_id():
    actor = new_id("ledger")
    done = Ledger.objects.update(
        actor, lambda ledger: ledger.post_pair(), create=True, command_id="pair"
    )
    assert done.version == 2
    events = Ledger.get_store().get_events(actor)
    assert [e.command_id for e in events] == ["pair", "pair"]
    # Remembered once, at its last event's version; sent again, it records nothing.
    assert done.recorded_version("pair") == 2 and list(done._recent_commands) == [("pair", 2)]
    assert (
        Ledger.objects.update(actor, lambda ledger: ledger.post_pair(), command_id="pair").version
        == 2
    )


# --- update() and routed sends agree ---------------------------------------------------------


async def test_update_and_a_routed_send_recognise_each_others_command_ids(aether_nats_url):
    runtime = Runtime(aether_nats_url)
    host = ShardHost(runtime, "node-a")
    try:
        await host.own(set(range(100)))
        actor = new_id("ledger")

        async def routed(command_id: str) -> int:
            answer = await send(
                runtime, "test-ledgers", actor, "post", num_shards=100, command_id=command_id
            )
            return int(answer["version"])

        await Ledger.objects.aupdate(
            actor, lambda ledger: ledger.post(), create=True, command_id="u"
        )
        assert await routed("u") == 1  # applied through update(): not run again
        assert await routed("r") == 2
        Ledger.objects.forget()
        again = await Ledger.objects.aupdate(actor, lambda ledger: ledger.post(), command_id="r")
        assert again.command_replayed and again.version == 2
        assert [e.command_id for e in await Ledger.get_store().aget_events(actor)] == ["u", "r"]
    finally:
        await host.stop()
        runtime.close()
