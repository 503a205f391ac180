"""Correlation and causation ids: every recorded event carries both, as
aether_django/correlation.py documents, whichever way it was recorded, and keeps them
in the store and on the bus."""

from __future__ import annotations

import uuid

import pytest

from aether_django import correlation
from aether_django.bus.nats import NATSEventBus
from aether_django.correlation import CAUSATION_KEY, CORRELATION_KEY
from aether_django.events import Event
from aether_django.runtime import Runtime
from aether_django.sharding.routing import ShardHost, send

from .domain import Ledger, Order


def new_id(prefix: str = "ledger") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ids(event: Event) -> tuple[str | None, str | None]:
    return event.metadata.get(CORRELATION_KEY), event.metadata.get(CAUSATION_KEY)


def stored(actor_id: str) -> list[Event]:
    return Ledger.get_store().get_events(actor_id)


def is_uuid(text: str | None) -> bool:
    try:
        uuid.UUID(str(text))
    except ValueError:
        return False
    return True


def test_update_with_no_context_starts_a_correlation_caused_by_its_command():
    actor = new_id()
    Ledger.objects.update(actor, lambda ledger: ledger.post(), create=True, command_id="cmd-1")
    Ledger.objects.update(actor, lambda ledger: ledger.post())
    first, second = stored(actor)
    # A fresh correlation each; the cause is the command id when there is one, else the
    # correlation itself (a request is its own cause).
    assert is_uuid(ids(first)[0]) and ids(first)[1] == "cmd-1"
    assert is_uuid(ids(second)[0]) and ids(second)[1] == ids(second)[0]
    assert ids(first)[0] != ids(second)[0]


def test_inside_correlation_use_events_carry_the_ids_given():
    actor = new_id()
    with correlation.use("req-1"):
        Ledger.objects.update(actor, lambda ledger: ledger.post(), create=True, command_id="c")
        with correlation.use("req-1", "evt-9"):
            Ledger.objects.update(actor, lambda ledger: ledger.post())
    assert correlation.current() is None  # the context ends with the block
    assert [ids(e) for e in stored(actor)] == [("req-1", "req-1"), ("req-1", "evt-9")]


async def test_aupdate_keeps_the_context_across_awaits():
    actor = new_id()

    async def post(ledger: Ledger) -> None:
        import asyncio

        await asyncio.sleep(0)
        ledger.post()

    with correlation.use("req-async", "cause-async"):
        await Ledger.objects.aupdate(actor, post, create=True)
    (event,) = await Ledger.get_store().aget_events(actor)
    assert ids(event) == ("req-async", "cause-async")


def test_events_caused_by_another_event_take_its_correlation_and_its_id_as_cause():
    actor = new_id()
    with correlation.use("origin"):
        Ledger.objects.update(actor, lambda ledger: ledger.post(), create=True)
    (trigger,) = stored(actor)
    other = new_id()
    with correlation.caused_by(trigger):
        Ledger.objects.update(other, lambda ledger: ledger.post(), create=True)
    assert ids(stored(other)[0]) == ("origin", trigger.id)
    # An event without a correlation id starts one: its own id.
    bare = Event(event_type="Posted", actor_id="x", version=1)
    with correlation.caused_by(bare) as causes:
        assert (causes.correlation_id, causes.causation_id) == (bare.id, bare.id)


def test_the_events_of_one_save_share_their_ids():
    actor = new_id()
    # Recorded outside update() and outside any context: one save, one correlation.
    ledger = Ledger.objects.create(actor)
    ledger.post()
    ledger.post_pair()
    ledger.save()
    events = stored(actor)
    assert len(events) == 3 and len({ids(e) for e in events}) == 1
    assert is_uuid(ids(events[0])[0])
    # The next save is another correlation.
    ledger.post()
    ledger.save()
    assert ids(stored(actor)[3]) != ids(events[0])
    # One command of several events, through update(): the same ids, and its command id.
    Ledger.objects.update(actor, lambda ledger: ledger.post_pair(), command_id="pair")
    pair = stored(actor)[4:]
    assert len({ids(e) for e in pair}) == 1 and ids(pair[0])[1] == "pair"


def test_ids_given_in_an_events_metadata_win_and_other_metadata_is_kept():
    actor = new_id()
    ledger = Ledger.objects.create(actor)
    with correlation.use("ctx"):
        ledger.record("Posted", amount=1, metadata={CORRELATION_KEY: "own", "source": "import"})
    ledger.save()
    (event,) = stored(actor)
    # A copied or imported event keeps its own correlation; the cause comes from the context.
    assert event.metadata == {CORRELATION_KEY: "own", CAUSATION_KEY: "ctx", "source": "import"}
    Ledger.objects.update(actor, lambda ledger: ledger.post(), metadata={"tenant": "t1"})
    assert stored(actor)[1].metadata["tenant"] == "t1" and ids(stored(actor)[1])[0]


async def test_a_routed_command_carries_the_senders_ids_to_the_owner(aether_nats_url):
    runtime = Runtime(aether_nats_url)
    host = ShardHost(runtime, "node-a")
    try:
        await host.own(set(range(100)))
        actor = new_id()

        async def routed(**options: object) -> None:
            await send(runtime, "test-ledgers", actor, "post", num_shards=100, **options)  # type: ignore[arg-type]

        with correlation.use("http-req-7", "http-req-7"):
            await routed(command_id="r-1")
        with correlation.use("http-req-7", "evt-3"):
            await routed(command_id="r-2", metadata={"tenant": "t1"})
        await routed(command_id="r-3")  # no context: a fresh correlation, caused by the command
        events = await Ledger.get_store().aget_events(actor)
        assert [ids(e) for e in events[:2]] == [
            ("http-req-7", "http-req-7"),
            ("http-req-7", "evt-3"),
        ]
        assert events[1].metadata["tenant"] == "t1"
        assert is_uuid(ids(events[2])[0]) and ids(events[2])[1] == "r-3"
        # The owner's context does not leak into what it runs next.
        assert correlation.current() is None
    finally:
        await host.stop()
        runtime.close()


async def test_a_routed_request_with_bad_causes_gets_fresh_ids(aether_nats_url):
    """A request from an older sender (no "causes") or a malformed one still stores ids."""
    import json

    from aether_django.cluster.hashring import shard_for
    from aether_django.sharding.routing import shard_subject

    runtime = Runtime(aether_nats_url)
    host = ShardHost(runtime, "node-a")
    try:
        await host.own(set(range(100)))
        actor = new_id()
        nc = await runtime.connection()
        bad: list[object] = [None, ["only-one"], [1, 2], ["", "x"]]
        for n, causes in enumerate(bad):
            body: dict[str, object] = {
                "namespace": "test-ledgers",
                "actor_id": actor,
                "command": "post",
                "arguments": {},
                "command_id": f"b-{n}",
            }
            if causes is not None:
                body["causes"] = causes
            subject = shard_subject(shard_for(actor, 100))
            reply = json.loads(
                (await nc.request(subject, json.dumps(body).encode(), timeout=5)).data
            )
            assert reply["version"] == n + 1, reply
        for n, event in enumerate(await Ledger.get_store().aget_events(actor)):
            assert is_uuid(ids(event)[0]) and ids(event)[1] == f"b-{n}"
    finally:
        await host.stop()
        runtime.close()


async def test_events_on_the_bus_keep_their_metadata(aether_nats_url):
    runtime = Runtime(aether_nats_url)
    bus = NATSEventBus(runtime=runtime, node_id="corr", timeout=5)
    try:
        # The namespace's stream exists before the subscription starts at "new".
        await Order.objects.aupdate(new_id("order"), lambda o: o.place("ann"), create=True)
        subscription = await bus.asubscribe("test-orders")
        actor = new_id("order")
        with correlation.use("bus-req", "bus-cause"):
            await Order.objects.aupdate(
                actor, lambda o: o.place("bob"), create=True, command_id="place-1"
            )
        while True:
            delivery = await subscription.next(10)
            if delivery.event.actor_id == actor:
                break
        assert ids(delivery.event) == ("bus-req", "bus-cause")
        assert delivery.event.command_id == "place-1"
        assert delivery.event.metadata == (await Order.get_store().aget_events(actor))[0].metadata
    finally:
        bus.close()
        runtime.close()


@pytest.mark.parametrize("value", ["", None])
def test_use_with_an_empty_causation_means_the_correlation(value):
    with correlation.use("c", value) as causes:
        assert causes == correlation.Causes("c", "c")
