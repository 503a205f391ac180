"""Serving commands on a shard's owner: command ids run once, retries, hot actors, handover."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import pytest

from aether_django.aggregates import Aggregate, apply, command
from aether_django.cluster.hashring import shard_for
from aether_django.errors import SaveOutcomeUnknownError, StoreUnavailableError
from aether_django.events import Event
from aether_django.runtime import Runtime
from aether_django.sharding.routing import (
    CommandError,
    RemoteDomainError,
    ShardHost,
    ShardUnavailableError,
    send,
    shard_subject,
)

from ..aggregates.domain import Counter, Order


async def test_a_repeated_command_id_is_answered_without_running_again(aether_nats_url):
    runtime = Runtime(aether_nats_url)
    host = ShardHost(runtime, "node-a")
    try:
        await host.own(set(range(100)))
        actor = f"order-{uuid.uuid4().hex[:8]}"
        nc = await runtime.connection()
        subject = shard_subject(shard_for(actor, 100))

        async def ask(command, command_id, **arguments):
            body = {"namespace": "test-orders", "actor_id": actor, "command": command,
                    "arguments": arguments, "command_id": command_id}  # fmt: skip
            reply = await nc.request(subject, json.dumps(body).encode(), timeout=5)
            return json.loads(reply.data)

        assert (await ask("place", "c-1", customer="ann"))["version"] == 1
        line = {"sku": "pen", "quantity": 1, "price_cents": 2}
        assert (await ask("add_line", "c-2", **line))["version"] == 2
        again = await ask("add_line", "c-2", **line)  # a retry of the same command
        assert again["version"] == 2 and len(again["state"]["lines"]) == 1
        # A new owner (cold cache) recognises it too, from the stored history.
        other = ShardHost(runtime, "node-b")
        await host.stop()
        await other.own(set(range(100)))
        assert (await ask("add_line", "c-2", **line))["version"] == 2
        assert (await ask("add_line", "c-3", **line))["version"] == 3
        # Asked again later, it still answers the version the command was stored at.
        assert (await ask("add_line", "c-2", **line))["version"] == 2
        await other.stop()
        assert [e.command_id for e in await Order.get_store().aget_events(actor)] == [
            "c-1",
            "c-2",
            "c-3",
        ]
    finally:
        runtime.close()


async def test_with_no_owner_a_send_fails_clearly_within_its_timeout(aether_nats_url):
    runtime = Runtime(aether_nats_url)
    try:
        actor = f"order-{uuid.uuid4().hex[:8]}"
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ShardUnavailableError) as raised:
            await send(runtime, "test-orders", actor, None, num_shards=100, timeout=0.5)
        took = loop.time() - started
        # It kept trying for the whole timeout, and not much longer.
        assert 0.5 <= took <= 1.0, took
        subject = shard_subject(shard_for(actor, 100))
        assert actor in str(raised.value) and subject in str(raised.value)
    finally:
        runtime.close()


async def test_a_send_retries_while_the_shard_moves_and_succeeds_once_it_has_an_owner(
    aether_nats_url,
):
    runtime = Runtime(aether_nats_url)
    host = ShardHost(runtime, "node-b")
    try:
        actor = f"order-{uuid.uuid4().hex[:8]}"
        loop = asyncio.get_running_loop()
        started = loop.time()
        sending = asyncio.ensure_future(
            send(runtime, "test-orders", actor, "place", num_shards=100, timeout=5, customer="c")
        )
        await asyncio.sleep(0.5)
        assert not sending.done()  # nobody owns the shard yet: still retrying
        await host.own({shard_for(actor, 100)})  # the shard arrives
        answer = await asyncio.wait_for(sending, 5)
        assert answer["node"] == "node-b" and answer["version"] == 1
        assert loop.time() - started >= 0.5
    finally:
        await host.stop()
        runtime.close()


async def test_a_hot_actor_is_loaded_once_and_dropped_when_its_shard_is_lost(
    aether_nats_url, monkeypatch
):
    loads: list[str] = []
    load = Order.objects.aget

    async def counting_load(actor_id, **kwargs):
        loads.append(actor_id)
        return await load(actor_id, **kwargs)

    monkeypatch.setattr(Order.objects, "aget", counting_load)
    runtime = Runtime(aether_nats_url)
    host = ShardHost(runtime, "node-a")
    try:
        actor = f"order-{uuid.uuid4().hex[:8]}"
        shard = shard_for(actor, 100)
        await host.own({shard})

        async def command(name, **arguments):
            return await send(runtime, "test-orders", actor, name, num_shards=100, **arguments)

        await command("place", customer="ann")
        answer = await command("add_line", sku="pen", quantity=1, price_cents=2)
        assert answer["version"] == 2
        assert loads == [actor]  # two commands, one load: the second used memory

        # Losing the shard drops the actor (its next owner may change it) ...
        await host.own(set())
        await host.own({shard})
        assert (await command(None))["version"] == 2
        assert loads == [actor, actor]  # ... so having it back means loading it again
    finally:
        await host.stop()
        runtime.close()


async def test_a_shard_handed_to_another_host_is_served_from_snapshot_plus_events(
    aether_nats_url, monkeypatch
):
    runtime = Runtime(aether_nats_url)
    first, second = ShardHost(runtime, "node-a"), ShardHost(runtime, "node-b")
    actor = f"counter-{uuid.uuid4().hex[:8]}"
    shard = shard_for(actor, 100)
    try:
        await first.own({shard})
        for i in range(30):  # Counter snapshots every 25 versions
            await send(runtime, "test-counters", actor, "increment", num_shards=100, by=f"c{i}")
        store = Counter.get_store()
        snapshot = await store.aget_latest_snapshot(actor)
        assert snapshot is not None and snapshot.version == 25

        reads: list[int] = []
        read_events = store.aget_events

        async def recording_read(actor_id, from_version=0, **kwargs):
            if actor_id == actor:
                reads.append(from_version)
            return await read_events(actor_id, from_version, **kwargs)

        monkeypatch.setattr(store, "aget_events", recording_read)
        await first.stop()  # the shard moves
        await second.own({shard})
        answer = await send(runtime, "test-counters", actor, None, num_shards=100)
        assert answer["node"] == "node-b" and answer["version"] == 30
        assert answer["state"]["count"] == 30
        assert answer["state"]["seen"] == [f"c{i}" for i in range(30)]
        assert reads == [26]  # only the 5 events after the snapshot were read
    finally:
        await first.stop()
        await second.stop()
        runtime.close()


async def test_two_hosts_that_both_own_a_shard_never_store_two_versions_at_one_number(
    aether_nats_url,
):
    # As during a move or a split brain: both subscribe, so both receive every request
    # and both run it on their own (soon stale) in-memory copy of the actor.
    runtimes = [Runtime(aether_nats_url), Runtime(aether_nats_url)]
    hosts = [ShardHost(runtimes[0], "node-a"), ShardHost(runtimes[1], "node-b")]
    actor = f"order-{uuid.uuid4().hex[:8]}"
    subject = shard_subject(shard_for(actor, 100))
    try:
        for host in hosts:
            await host.own({shard_for(actor, 100)})
        nc = await runtimes[0].connection()

        async def ask(command, command_id, **arguments):
            body = {"namespace": "test-orders", "actor_id": actor, "command": command,
                    "arguments": arguments, "command_id": command_id}  # fmt: skip
            reply = await nc.request(subject, json.dumps(body).encode(), timeout=10)
            return json.loads(reply.data)

        assert (await ask("place", "c-place", customer="ann"))["version"] == 1
        ids = [f"c-{i}" for i in range(12)]
        answers = await asyncio.gather(
            *(ask("add_line", i, sku=i, quantity=1, price_cents=1) for i in ids)
        )
        await asyncio.sleep(0.5)  # let the slower host finish its copies

        events = await Order.get_store().aget_events(actor)
        assert [e.version for e in events] == list(range(1, len(ids) + 2))
        stored = {e.command_id: e.version for e in events}
        assert len(stored) == len(events)  # each command id stored once
        # Both received every command, yet exactly one save of each succeeded: the
        # other host's save conflicted (the store's check), or its reloaded history
        # already held the command.
        assert sum(host.served for host in hosts) == len(events)
        # Each caller was told the version its own command was stored at.
        assert {i: a["version"] for i, a in zip(ids, answers, strict=True)} == {
            i: stored[i] for i in ids
        }
    finally:
        for host in hosts:
            await host.stop()
        for runtime in runtimes:
            runtime.close()


# --- a failed save is never answered as done -------------------------------------------


class Flaky(Aggregate):
    """Records, then fails for an unexpected reason when asked to."""

    count: int = 0

    class Meta:
        namespace = "test-flaky"

    @command
    def bump(self, fail: bool = False) -> None:
        self.record("Bumped")
        if fail:
            raise RuntimeError("a bug after recording")

    @apply("Bumped")
    def _bumped(self, event: Event) -> None:
        self.count += 1


def _routing_errors(caplog):
    return [
        r
        for r in caplog.records
        if r.name == "aether_django.cluster.routing" and r.levelno >= logging.ERROR
    ]


@pytest.fixture
async def order_host(aether_nats_url):
    runtime = Runtime(aether_nats_url)
    host = ShardHost(runtime, "node-a")
    await host.own(set(range(100)))
    yield runtime, host
    await host.stop()
    runtime.close()


async def _ids(store, actor):
    return [e.command_id for e in await store.aget_events(actor)]


async def test_a_save_nats_refused_is_an_error_and_a_retry_with_the_same_id_stores_it(
    order_host, monkeypatch, caplog
):
    runtime, _host = order_host
    actor = f"order-{uuid.uuid4().hex[:8]}"
    store = Order.get_store()

    async def send_(name, command_id, **arguments):
        return await send(runtime, "test-orders", actor, name, num_shards=100,
                          command_id=command_id, timeout=6, **arguments)  # fmt: skip

    assert (await send_("place", "c-1", customer="ann"))["version"] == 1
    save = store.asave_events
    failures = []

    async def unavailable(events, *args, **kwargs):
        failures.append([e.command_id for e in events])
        raise StoreUnavailableError("NATS did not answer")

    monkeypatch.setattr(store, "asave_events", unavailable)
    line = {"sku": "pen", "quantity": 1, "price_cents": 2}
    with pytest.raises(StoreUnavailableError, match="nothing was stored"):
        await send_("add_line", "c-2", **line)
    assert failures == [["c-2"]]  # tried once: the caller decides whether to retry
    assert await store.aget_latest_version(actor) == 1
    assert any(actor in r.getMessage() for r in _routing_errors(caplog))

    # The caller retries with the same command id: the owner runs it again (its
    # failed copy of the actor was dropped) and stores it this time.
    monkeypatch.setattr(store, "asave_events", save)
    again = await send_("add_line", "c-2", **line)
    assert again["version"] == 2 and len(again["state"]["lines"]) == 1
    assert await _ids(store, actor) == ["c-1", "c-2"]
    # Later reads agree with the store.
    assert (await send_(None, None))["version"] == 2


async def test_an_unconfirmed_save_is_done_only_when_the_history_shows_it(order_host, monkeypatch):
    runtime, _host = order_host
    store = Order.get_store()
    save = store.asave_events
    line = {"sku": "pen", "quantity": 1, "price_cents": 2}

    async def stored_but_unconfirmed(events, *args, **kwargs):
        await save(events, *args, **kwargs)
        raise SaveOutcomeUnknownError("no answer after the publish")

    async def lost(events, *args, **kwargs):
        raise SaveOutcomeUnknownError("no answer after the publish")

    async def send_(actor, name, command_id, **arguments):
        return await send(runtime, "test-orders", actor, name, num_shards=100,
                          command_id=command_id, timeout=6, **arguments)  # fmt: skip

    # Stored although unconfirmed: the history shows it, so it is answered as done.
    first = f"order-{uuid.uuid4().hex[:8]}"
    await send_(first, "place", "c-1", customer="ann")
    monkeypatch.setattr(store, "asave_events", stored_but_unconfirmed)
    assert (await send_(first, "add_line", "c-2", **line))["version"] == 2
    monkeypatch.setattr(store, "asave_events", save)
    assert await _ids(store, first) == ["c-1", "c-2"]

    # Not stored: the caller is told the outcome is unknown, and a retry stores it once.
    second = f"order-{uuid.uuid4().hex[:8]}"
    await send_(second, "place", "c-1", customer="bob")
    monkeypatch.setattr(store, "asave_events", lost)
    with pytest.raises(SaveOutcomeUnknownError):
        await send_(second, "add_line", "c-2", **line)
    monkeypatch.setattr(store, "asave_events", save)
    assert await store.aget_latest_version(second) == 1
    assert (await send_(second, "add_line", "c-2", **line))["version"] == 2
    assert (await send_(second, "add_line", "c-2", **line))["version"] == 2
    assert await _ids(store, second) == ["c-1", "c-2"]


async def test_a_command_that_fails_unexpectedly_is_an_error_and_leaves_no_trace(
    order_host, caplog
):
    runtime, _host = order_host
    actor = f"flaky-{uuid.uuid4().hex[:8]}"

    async def send_(command_id, **arguments):
        return await send(runtime, "test-flaky", actor, "bump", num_shards=100,
                          command_id=command_id, timeout=6, **arguments)  # fmt: skip

    assert (await send_("c-1"))["version"] == 1
    with pytest.raises(CommandError, match="RuntimeError: a bug after recording"):
        await send_("c-2", fail=True)
    assert any(actor in r.getMessage() and r.exc_info for r in _routing_errors(caplog)), (
        caplog.records
    )
    # Nothing was stored, and the half-run command is not remembered as done.
    assert await Flaky.get_store().aget_latest_version(actor) == 1
    answer = await send_("c-2")
    assert answer["version"] == 2 and answer["state"]["count"] == 2


# --- only declared commands run ------------------------------------------------------------


async def test_a_request_naming_a_method_that_is_not_a_command_is_refused(order_host):
    runtime, _host = order_host
    actor = f"order-{uuid.uuid4().hex[:8]}"
    nc = await runtime.connection()
    subject = shard_subject(shard_for(actor, 100))

    async def ask(command, **arguments):
        body = {"namespace": "test-orders", "actor_id": actor, "command": command,
                "arguments": arguments, "command_id": uuid.uuid4().hex}  # fmt: skip
        reply = await nc.request(subject, json.dumps(body).encode(), timeout=5)
        return json.loads(reply.data)

    assert (await ask("place", customer="ann"))["version"] == 1
    # Someone who can publish on the shard's subject tries to skip the order's rules:
    # make it look paid, then ship it; or call the base API, a handler, a helper.
    forged = {"status": "paid", "customer": "ann", "lines": [], "total_cents": 0}
    attempts: list[tuple[Any, dict[str, Any]]] = [
        ("set_snapshot_state", {"state": forged}),
        ("save", {}),
        ("record", {"event_type": "OrderPaid"}),
        ("_placed", {"event": None}),
        ("get_store", {}),
        ("recorded_version", {"command_id": "x"}),
        (["place"], {}),
        (7, {}),
    ]
    for command_name, arguments in attempts:
        error = (await ask(command_name, **arguments)).get("error")
        assert error and error["type"] == "bad", (command_name, error)
        assert "is not a command of Order" in error["message"]
    with pytest.raises(CommandError, match="'set_snapshot_state' is not a command of Order"):
        await send(runtime, "test-orders", actor, "set_snapshot_state", num_shards=100,
                   state=forged)  # fmt: skip
    # The rules still hold: an order that was never paid cannot be shipped.
    with pytest.raises(RemoteDomainError, match="only a paid order can be shipped"):
        await send(runtime, "test-orders", actor, "ship", num_shards=100)
    assert [e.event_type for e in await Order.get_store().aget_events(actor)] == ["OrderPlaced"]
    assert (await ask(None))["state"]["status"] == "placed"


async def test_a_shard_lost_while_a_command_saves_leaves_no_stale_actor_behind(
    order_host, monkeypatch
):
    runtime, host = order_host
    actor = f"order-{uuid.uuid4().hex[:8]}"
    shard = shard_for(actor, 100)
    store = Order.get_store()
    await send(runtime, "test-orders", actor, "place", num_shards=100, customer="ann")
    save, saving, release = store.asave_events, asyncio.Event(), asyncio.Event()

    async def slow_save(events, *args, **kwargs):
        saving.set()
        await release.wait()
        return await save(events, *args, **kwargs)

    monkeypatch.setattr(store, "asave_events", slow_save)
    sending = asyncio.ensure_future(
        send(runtime, "test-orders", actor, "add_line", num_shards=100, command_id="c-line",
             timeout=8, sku="pen", quantity=1, price_cents=2)
    )  # fmt: skip
    await asyncio.wait_for(saving.wait(), 5)
    await host.own(set(range(100)) - {shard})  # the shard moves away mid-save
    release.set()
    await asyncio.sleep(0.2)
    monkeypatch.setattr(store, "asave_events", save)
    # Its new owner changes the order meanwhile; when the shard comes back, the
    # actor is loaded again, not served from a copy made before the move.
    await Order.objects.aupdate(actor, lambda o: o.cancel("changed elsewhere"))
    await host.own(set(range(100)))
    answer = await send(runtime, "test-orders", actor, None, num_shards=100)
    events = await store.aget_events(actor)
    assert (answer["version"], answer["state"]["status"]) == (len(events), "cancelled")
    # The command that was cut off is either stored and answered at its version, or
    # refused now (the order is cancelled): never answered without being stored.
    try:
        result = await sending
    except RemoteDomainError:
        assert "c-line" not in [e.command_id for e in events]
    else:
        assert {e.command_id: e.version for e in events}["c-line"] == result["version"]
