"""run_command / arun_command: routed to a shard's owner or run here, with the same result.

The owner here is a ShardHost on this test's event loop, answering on the real NATS
server (as in tests/cluster/test_routing.py); tests/api/test_commands_server.py does the
same through a real ASGI server and a node process.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from aether_django import sharding
from aether_django.aggregates import Aggregate, UpdateRetriesExhausted, apply, command
from aether_django.cluster import cluster_config
from aether_django.cluster.coordinator import Coordinator
from aether_django.errors import AetherError
from aether_django.events import Event
from aether_django.runtime import Runtime, get_runtime
from aether_django.sharding import CommandError, CommandResult, RemoteDomainError
from aether_django.sharding.commands import forget_liveness
from aether_django.sharding.routing import ShardHost
from aether_django.store import get_event_store

from ..aggregates.domain import Order

NS = "test-orders"
NUM_SHARDS = 100  # tests/settings.py
LINE = {"sku": "pen", "quantity": 2, "price_cents": 150}


@pytest.fixture
def routing() -> Iterator[Any]:
    """``routing(mode, **more)``: the AETHER settings with COMMAND_ROUTING = mode."""
    stack: list[Any] = []

    def use(mode: str, **more: Any) -> None:
        forget_liveness()
        override = override_settings(AETHER={**settings.AETHER, "COMMAND_ROUTING": mode, **more})
        override.enable()
        stack.append(override)

    yield use
    for override in reversed(stack):
        override.disable()
    forget_liveness()


@pytest.fixture
async def owner(aether_nats_url) -> AsyncIterator[ShardHost]:
    """A ShardHost serving every shard, on this test's loop."""
    runtime = Runtime(aether_nats_url)
    host = ShardHost(runtime, "owner-1")
    await host.own(set(range(NUM_SHARDS)))
    yield host
    await host.stop()
    runtime.close()


def actor_id() -> str:
    return f"order-{uuid.uuid4().hex[:10]}"


def same(result: CommandResult, actor: str) -> dict[str, Any]:
    """A result without what differs between two actors (their ids, stream sequences)."""
    body = result.as_dict()
    assert body["actor_id"] == actor and all(e["sequence"] > 0 for e in body["events"])
    return {
        "version": body["version"],
        "state": body["state"],
        "events": [(e["version"], e["event_type"]) for e in body["events"]],
        "replayed": result.replayed,
    }


async def run_all(actor: str) -> list[Any]:
    """The same story for any actor: each step's result, or the error it raised."""
    steps: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("add_line", LINE, {"command_id": "c-0"}),  # no such actor, not creating
        ("place", {"customer": "ann"}, {"create": True, "command_id": "c-1"}),
        ("add_line", LINE, {"command_id": "c-2"}),
        ("add_line", {**LINE, "sku": "ink"}, {"command_id": "c-3"}),
        ("add_line", LINE, {"command_id": "c-2"}),  # again: the first result
        ("pay", {}, {"command_id": "c-4", "metadata": {"note": "by test"}}),
        ("pay", {}, {"command_id": "c-5"}),  # refused: paid already
    ]
    outcomes: list[Any] = []
    for name, arguments, options in steps:
        try:
            result = await sharding.arun_command(NS, actor, name, arguments, **options)
        except AetherError as exc:
            outcomes.append((type(exc).__mro__[1].__name__, str(exc).replace(actor, "A")))
        else:
            outcomes.append(same(result, actor))
    return outcomes


async def test_routed_and_local_commands_give_the_same_results(routing, owner):
    routing("always")
    routed_actor = actor_id()
    routed = await run_all(routed_actor)
    served = owner.served
    routing("never")
    local = await run_all(actor_id())
    assert owner.served == served  # nothing more went to the owner
    assert served == 4  # place, two lines, pay: the repeat and the refusals ran no command
    assert routed == local
    assert routed[0] == ("AggregateDoesNotExist", "no Order with actor id 'A'")
    # The repeat of c-2 is its first result again (state as of version 2), marked replayed.
    assert routed[4] == {**routed[2], "replayed": True}
    assert routed[2]["events"] == [(2, "LineAdded")] and not routed[2]["replayed"]
    assert routed[6][0] == "DomainError"  # RemoteDomainError routed, OrderError here
    events = await Order.get_store().aget_events(routed_actor)
    assert [e.command_id for e in events] == ["c-1", "c-2", "c-3", "c-4"]
    assert events[-1].metadata["note"] == "by test"


async def test_a_routed_domain_error_is_a_remote_domain_error(routing, owner):
    routing("always")
    actor = actor_id()
    await sharding.arun_command(NS, actor, "place", {"customer": "ann"}, create=True)
    with pytest.raises(RemoteDomainError, match="without lines"):
        await sharding.arun_command(NS, actor, "pay")


async def test_names_that_are_not_commands_are_refused_before_anything_is_sent(routing, owner):
    routing("always")
    with pytest.raises(CommandError, match="'save' is not a command of Order"):
        await sharding.arun_command(NS, actor_id(), "save")
    with pytest.raises(CommandError, match="no aggregate class is registered"):
        await sharding.arun_command("test-nobody", actor_id(), "place")
    routing("sometimes")
    with pytest.raises(AetherError, match="COMMAND_ROUTING"):
        await sharding.arun_command(NS, actor_id(), "place")
    assert owner.served == 0


def test_the_sync_twin_routes_too(routing, aether_nats_url):
    """run_command from a plain thread, to an owner serving on the process runtime's loop."""
    routing("always")
    runtime = get_runtime()
    host = ShardHost(runtime, "owner-sync")

    async def own() -> None:
        await host.own(set(range(NUM_SHARDS)))

    runtime.run(own())
    try:
        actor = actor_id()
        first = sharding.run_command(NS, actor, "place", {"customer": "ann"}, create=True)
        again = sharding.run_command(
            NS, actor, "place", {"customer": "ann"}, create=True, command_id=first.command_id
        )
        assert host.served == 1
        assert again.replayed and again.as_dict() == first.as_dict()
    finally:
        runtime.run(host.stop())
    # With no owner at all, "never" runs it here.
    routing("never")
    local = sharding.run_command(NS, actor, "add_line", LINE, command_id="l-1")
    assert local.version == 2 and [e.event_type for e in local.events] == ["LineAdded"]


async def test_auto_routes_while_the_cluster_bucket_shows_live_nodes(routing, owner):
    bucket = f"cmd_{uuid.uuid4().hex[:8]}"
    routing("auto", CLUSTER_BUCKET=bucket, HEARTBEAT_INTERVAL=0.2, FAILURE_TIMEOUT=1.0)
    # No bucket at all: run here, and the bucket is not created by asking.
    assert not await sharding.acommand_routed()
    await sharding.arun_command(NS, actor_id(), "place", {"customer": "ann"}, create=True)
    assert owner.served == 0
    nc = await get_runtime().connection()
    js = nc.jetstream()
    with pytest.raises(Exception, match="not found"):
        await js.stream_info(f"KV_{bucket}")
    # A node's heartbeat: commands go to the owner (within one HEARTBEAT_INTERVAL).
    node = Coordinator(get_runtime(), "node-live", cluster_config())
    await node.heartbeat()
    forget_liveness()
    assert await sharding.acommand_routed()
    await sharding.arun_command(NS, actor_id(), "place", {"customer": "ann"}, create=True)
    assert owner.served == 1
    # The node leaves: back to running here.
    await node.leave()
    forget_liveness()
    assert not await sharding.acommand_routed()


class Raced(Aggregate):
    """A command another writer beats every time, on whichever node runs it."""

    count: int = 0

    class Meta:
        namespace = "test-api-raced"

    @command
    def bump(self) -> None:
        # The other writer stores the version this command is about to record. It runs
        # in a thread of its own: on an owner, commands run inside the event loop.
        event = Event(event_type="Bumped", actor_id=self.actor_id, version=self.version + 1)
        writer = threading.Thread(
            target=get_event_store("test-api-raced").save_event, args=(event,)
        )
        writer.start()
        writer.join()
        self.record("Bumped")

    @apply("Bumped")
    def _bumped(self, event: Event) -> None:
        self.count += 1


@pytest.mark.parametrize("mode", ["always", "never"])
async def test_a_command_that_conflicts_every_time_raises_retries_exhausted(routing, owner, mode):
    """Routed, the owner gives up after its attempts with an answer the sender turns into
    UpdateRetriesExhausted (the API's 409), as update() does here; nothing is stored."""
    routing(mode)
    actor = actor_id()
    with pytest.raises(UpdateRetriesExhausted):
        await sharding.arun_command("test-api-raced", actor, "bump", create=True)
    stored = await get_event_store("test-api-raced").aget_events(actor)
    assert stored and all(e.command_id is None for e in stored)


class EarlierOwner(ShardHost):
    """An owner as the previous release answered: it ignored ``create`` and said nothing
    of the events or of a repeated command id."""

    async def _run(self, msg: Any, doc: dict[str, Any]) -> dict[str, Any]:
        answer = await super()._run(msg, {k: v for k, v in doc.items() if k != "create"})
        return {k: v for k, v in answer.items() if k not in ("events", "replayed")}


async def test_an_owner_of_the_previous_release_gives_the_same_results(routing, aether_nats_url):
    runtime = Runtime(aether_nats_url)
    host = EarlierOwner(runtime, "owner-old")
    await host.own(set(range(NUM_SHARDS)))
    try:
        routing("always")
        actor = actor_id()
        placed = await sharding.arun_command(NS, actor, "place", {"customer": "ann"}, create=True)
        line = await sharding.arun_command(NS, actor, "add_line", LINE, command_id="l")
        again = await sharding.arun_command(NS, actor, "add_line", LINE, command_id="l")
    finally:
        await host.stop()
        runtime.close()
    routing("never")
    local_actor = actor_id()
    local = [
        await sharding.arun_command(NS, local_actor, "place", {"customer": "ann"}, create=True),
        await sharding.arun_command(NS, local_actor, "add_line", LINE, command_id="l"),
        await sharding.arun_command(NS, local_actor, "add_line", LINE, command_id="l"),
    ]
    # The same results, except that such an owner does not say it found a command id
    # applied already (the API still compares the fingerprint of its events).
    assert [{**same(r, actor), "replayed": None} for r in (placed, line, again)] == [
        {**same(r, local_actor), "replayed": None} for r in local
    ]
    assert [r.replayed for r in local] == [False, False, True]
    events = await Order.get_store().aget_events(actor)
    assert [e.command_id for e in events][1:] == ["l"]  # applied once


def test_a_routing_mode_that_does_not_exist_is_reported_by_a_system_check():
    from django.core.checks import run_checks

    with override_settings(AETHER={**settings.AETHER, "COMMAND_ROUTING": "sometimes"}):
        errors = [e for e in run_checks() if e.id == "aether_django.E004"]
    assert len(errors) == 1 and "'sometimes'" in errors[0].msg
    for mode in ("auto", "always", "never"):
        with override_settings(AETHER={**settings.AETHER, "COMMAND_ROUTING": mode}):
            assert not [e for e in run_checks() if e.id == "aether_django.E004"]
