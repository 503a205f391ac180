"""The async twins: aupdate, asave, aget, aexists and aiterator, on the JetStream store."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from aether_django.aggregates import UpdateRetriesExhausted
from aether_django.errors import ReplayError, VersionConflictError

from .domain import Counter, Order


def new_id(prefix: str = "order") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def placed_order(lines: int = 0) -> Order:
    order = await Order.objects.acreate(new_id())
    order.place("ann")
    for i in range(lines):
        order.add_line(f"sku-{i}", quantity=i + 1, price_cents=10)
    await order.asave()
    return order


async def test_aupdate_retries_on_conflict_until_every_command_lands():
    order = await placed_order()
    attempts = []

    def add(i: int):
        def command(o: Order) -> None:
            attempts.append(i)
            o.add_line(f"sku-{i}", quantity=1, price_cents=i)

        return command

    # 20 tasks load version 1 before any of them saves: all but one conflict at first.
    await asyncio.gather(
        *(Order.objects.aupdate(order.actor_id, add(i), retries=50) for i in range(20))
    )
    loaded = await Order.objects.aget(order.actor_id)
    assert sorted(line["sku"] for line in loaded.lines) == sorted(f"sku-{i}" for i in range(20))
    assert loaded.total_cents == sum(range(20)) and loaded.version == 21
    assert len(attempts) > 20, "the tasks should actually have conflicted"


async def test_aupdate_gives_up_clearly():
    order = await placed_order()

    async def always_loses(o: Order) -> None:
        # Someone else writes between our load and our save, every time.
        await Order.objects.aupdate(order.actor_id, lambda other: other.add_line("x", 1, 1))
        o.add_line("mine", 1, 1)

    with pytest.raises(UpdateRetriesExhausted, match="after 3 attempts") as info:
        await Order.objects.aupdate(order.actor_id, always_loses, retries=2)
    assert info.value.actor_id == order.actor_id and info.value.attempts == 3
    assert isinstance(info.value.__cause__, VersionConflictError)
    loaded = await Order.objects.aget(order.actor_id)
    assert [line["sku"] for line in loaded.lines] == ["x", "x", "x"]  # nothing of "mine"


async def test_aupdate_accepts_a_coroutine_command():
    order = await placed_order()

    async def add_priced_line(o: Order) -> None:
        await asyncio.sleep(0)  # e.g. a price looked up before deciding
        o.add_line("pen", quantity=3, price_cents=199)

    result = await Order.objects.aupdate(order.actor_id, add_priced_line)
    assert (result.version, result.total_cents) == (2, 597)
    loaded = await Order.objects.aget(order.actor_id)
    assert loaded.lines == [{"sku": "pen", "quantity": 3, "price_cents": 199}]


async def test_asave_detects_another_writer():
    order = await placed_order(lines=1)
    first = await Order.objects.aget(order.actor_id)
    second = await Order.objects.aget(order.actor_id)
    first.pay()
    await first.asave()
    second.cancel("changed my mind")
    with pytest.raises(VersionConflictError) as info:
        await second.asave()
    assert info.value.current_version == first.version == 3
    loaded = await Order.objects.aget(order.actor_id)
    assert (loaded.status, loaded.version) == ("paid", 3)


async def test_aget_at_version_gives_the_state_as_of_that_version():
    order = await placed_order(lines=3)
    order.pay()
    await order.asave()
    first = await Order.objects.aget(order.actor_id, at_version=1)
    assert (first.status, first.lines) == ("placed", [])
    assert (await Order.objects.aget(order.actor_id, at_version=3)).total_cents == 10 + 20
    assert (await Order.objects.aget(order.actor_id, at_version=5)).status == "paid"
    with pytest.raises(ValueError):
        await Order.objects.aget(order.actor_id, at_version=0)


async def test_asave_takes_snapshots_and_aget_loads_from_them(monkeypatch):
    actor = new_id("counter")
    counter = await Counter.objects.acreate(actor)
    for i in range(30):
        counter.increment(by=str(i))
        if i % 4 == 3:
            await counter.asave()
    await counter.asave()
    store = Counter.get_store()
    snapshot = await store.aget_latest_snapshot(actor)
    assert snapshot is not None and snapshot.version == 28  # the asave that crossed 25

    snapshot_sequence = (await store.aget_events(actor))[27].sequence  # version 28's
    asked = []
    original = type(store).aget_events

    async def spy(self, actor_id, from_version=0, *, after_sequence=0):
        asked.append((from_version, after_sequence))
        return await original(self, actor_id, from_version, after_sequence=after_sequence)

    monkeypatch.setattr(type(store), "aget_events", spy)
    loaded = await Counter.objects.aget(actor)
    assert asked == [(29, snapshot_sequence)]  # the snapshot, then only the events after it
    assert loaded.count == 30 and loaded.seen == [str(i) for i in range(30)]

    asked.clear()
    past = await Counter.objects.aget(actor, at_version=10)
    assert asked == [(0, 0)]  # below the snapshot: replayed from the start
    assert (past.count, past.seen) == (10, [str(i) for i in range(10)])


async def test_aexists_and_aiterator():
    ids = {(await placed_order()).actor_id for _ in range(3)}
    assert all([await Order.objects.aexists(actor_id) for actor_id in ids])
    assert not await Order.objects.aexists(new_id())
    loaded = {o.actor_id: o async for o in Order.objects.aiterator() if o.actor_id in ids}
    assert set(loaded) == ids
    assert all((o.status, o.version) == ("placed", 1) for o in loaded.values())


async def test_loading_a_history_with_a_message_that_does_not_decode_raises_replay_error(
    scratch_registry, aether_nats_url
):
    import nats

    # A namespace of its own: the damaged actor would stop every iterator over test-orders.
    class DamagedOrder(Order):
        class Meta:
            namespace = "test-damaged-orders"
            event_schemas = {"LineAdded": 2}

    order = await DamagedOrder.objects.acreate(new_id())
    order.place("ann")
    await order.asave()
    store = DamagedOrder.get_store()
    nc = await nats.connect(aether_nats_url)
    try:
        # Bytes that are no event, on the actor's subject: a damaged history.
        await nc.jetstream().publish(store.subject_for(order.actor_id), b"{corrupt")  # type: ignore[attr-defined]
    finally:
        await nc.close()
    with pytest.raises(ReplayError) as info:
        await DamagedOrder.objects.aget(order.actor_id)
    assert info.value.raw == b"{corrupt" and info.value.actor_id == order.actor_id
    with pytest.raises(ReplayError):
        await DamagedOrder.objects.aupdate(order.actor_id, lambda o: o.add_line("x", 1, 1))
