"""Aggregates: declare, command, save, load, snapshot, upcast, retry, check."""

from __future__ import annotations

import logging
import multiprocessing
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.checks import run_checks
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aether_django import aggregates
from aether_django.aggregates import (
    Aggregate,
    AggregateError,
    UpdateRetriesExhausted,
    apply,
    get_aggregate_class,
)
from aether_django.errors import VersionConflictError
from aether_django.events import Event

from . import workers
from .domain import Counter, Order, OrderError


def new_id(prefix: str = "order") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def placed_order(lines: int = 2) -> Order:
    order = Order.objects.create(new_id())
    order.place("ann")
    for i in range(lines):
        order.add_line(f"sku-{i}", quantity=i + 1, price_cents=10)
    order.save()
    return order


def test_commands_change_state_and_save_stores_their_events():
    order = Order.objects.create(new_id())
    order.place("ann")
    order.add_line("book", quantity=2, price_cents=15)
    assert (order.status, order.total_cents, order.version) == ("placed", 30, 2)
    assert [e.event_type for e in order.pending_events] == ["OrderPlaced", "LineAdded"]
    order.save()
    assert order.pending_events == []

    loaded = Order.objects.get(order.actor_id)
    assert loaded.get_snapshot_state() == order.get_snapshot_state()
    assert loaded.version == 2


def test_mutable_defaults_are_not_shared_between_instances():
    a, b = Order(new_id()), Order(new_id())
    a.lines.append("x")
    assert b.lines == []


def test_domain_rules_refuse_invalid_transitions_and_record_nothing():
    order = placed_order()
    with pytest.raises(OrderError, match="only a paid order can be shipped"):
        order.ship()
    assert order.pending_events == []
    order.pay()
    order.ship()
    order.save()
    with pytest.raises(OrderError, match="cannot be cancelled"):
        Order.objects.get(order.actor_id).cancel()


def test_unknown_actor_does_not_exist():
    with pytest.raises(Order.DoesNotExist):
        Order.objects.get(new_id())
    assert not Order.objects.exists(new_id())
    with pytest.raises(Order.DoesNotExist):
        Order.objects.update(new_id(), lambda o: o.place("x"))


def test_does_not_exist_is_djangos_object_does_not_exist():
    from django.core.exceptions import ObjectDoesNotExist

    assert issubclass(Order.DoesNotExist, ObjectDoesNotExist)
    assert not issubclass(Order.DoesNotExist, Counter.DoesNotExist)


def test_save_detects_another_writer():
    order = placed_order()
    first, second = Order.objects.get(order.actor_id), Order.objects.get(order.actor_id)
    first.pay()
    first.save()
    second.cancel("changed my mind")
    with pytest.raises(VersionConflictError) as info:
        second.save()
    assert info.value.current_version == first.version
    assert Order.objects.get(order.actor_id).status == "paid"


def test_creating_an_existing_actor_conflicts_on_save():
    order = placed_order()
    again = Order.objects.create(order.actor_id)
    again.place("bob")
    with pytest.raises(VersionConflictError):
        again.save()


def test_at_version_gives_the_state_as_of_that_version():
    order = placed_order(lines=3)
    order.pay()
    order.save()
    assert Order.objects.get(order.actor_id, at_version=1).status == "placed"
    assert Order.objects.get(order.actor_id, at_version=1).lines == []
    assert Order.objects.get(order.actor_id, at_version=3).total_cents == 10 + 20
    assert Order.objects.get(order.actor_id, at_version=5).status == "paid"
    with pytest.raises(ValueError):
        Order.objects.get(order.actor_id, at_version=0)


def test_update_retries_on_conflict_until_every_command_lands():
    order = placed_order(lines=0)

    def add(i: int) -> None:
        Order.objects.update(
            order.actor_id, lambda o: o.add_line(f"sku-{i}", quantity=1, price_cents=i), retries=50
        )

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(add, range(20)))
    loaded = Order.objects.get(order.actor_id)
    assert sorted(line["sku"] for line in loaded.lines) == sorted(f"sku-{i}" for i in range(20))
    assert loaded.total_cents == sum(range(20))


def test_update_gives_up_clearly():
    order = placed_order(lines=0)

    def always_loses(o: Order) -> None:
        # Someone else writes between our load and our save, every time.
        Order.objects.update(order.actor_id, lambda other: other.add_line("x", 1, 1))
        o.add_line("mine", 1, 1)

    with pytest.raises(UpdateRetriesExhausted, match="after 3 attempts") as info:
        Order.objects.update(order.actor_id, always_loses, retries=2)
    assert isinstance(info.value.__cause__, VersionConflictError)
    assert "mine" not in [line["sku"] for line in Order.objects.get(order.actor_id).lines]


def test_update_does_not_retry_domain_errors():
    order = placed_order()
    calls = []

    def ship(o: Order) -> None:
        calls.append(1)
        o.ship()

    with pytest.raises(OrderError):
        Order.objects.update(order.actor_id, ship, retries=5)
    assert len(calls) == 1


def test_recording_an_event_without_a_handler_is_an_error():
    class Bare(Aggregate):
        class Meta:
            abstract = True

    with pytest.raises(AggregateError, match="no handler for 'Nope'"):
        Bare("x").record("Nope")


def test_iterating_over_the_actors_of_the_namespace():
    ids = {placed_order().actor_id for _ in range(3)}
    assert ids <= set(Order.objects.actor_ids())
    loaded = {o.actor_id: o for o in Order.objects.iterator() if o.actor_id in ids}
    assert set(loaded) == ids and all(o.status == "placed" for o in loaded.values())


# --- replay is deterministic (property) ---------------------------------------------------

COMMANDS = st.lists(
    st.one_of(
        st.tuples(st.just("place"), st.sampled_from(["ann", "bob"])),
        st.tuples(st.just("add_line"), st.integers(1, 5), st.integers(0, 100)),
        st.tuples(st.just("pay")),
        st.tuples(st.just("ship")),
        st.tuples(st.just("cancel")),
    ),
    max_size=25,
)


@override_settings(AETHER={"STORE_CLASS": "aether_django.store.InMemoryEventStore"})
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(COMMANDS)
def test_replaying_the_same_events_always_gives_the_same_state(commands):
    order = Order.objects.create(new_id())
    for name, *args in commands:
        try:
            if name == "add_line":
                order.add_line("sku", *args)
            else:
                getattr(order, name)(*args)
        except OrderError:
            continue
    order.save()
    if order.version == 0:
        return
    states = [Order.objects.get(order.actor_id).get_snapshot_state() for _ in range(3)]
    assert all(state == order.get_snapshot_state() for state in states)
    # Every past version replays to the state the commands produced at that point.
    for version in range(1, order.version + 1):
        assert Order.objects.get(order.actor_id, at_version=version).version == version


# --- snapshots --------------------------------------------------------------------------------


def test_snapshots_are_taken_by_policy_and_used_when_loading(monkeypatch):
    actor = new_id("counter")
    counter = Counter.objects.create(actor)
    for i in range(30):
        counter.increment(by=str(i))
        if i % 4 == 3:
            counter.save()
    counter.save()
    store = Counter.get_store()
    snapshot = store.get_latest_snapshot(actor)
    assert snapshot is not None and snapshot.version == 28  # the save that crossed 25

    snapshot_sequence = store.get_events(actor)[27].sequence  # version 28's
    asked = []
    original = type(store).get_events

    def spy(self, actor_id, from_version=0, *, after_sequence=0):
        asked.append((from_version, after_sequence))
        return original(self, actor_id, from_version, after_sequence=after_sequence)

    monkeypatch.setattr(type(store), "get_events", spy)
    loaded = Counter.objects.get(actor)
    # From version 29, starting right after the snapshot's stream sequence: no search.
    assert asked == [(29, snapshot_sequence)]
    assert loaded.count == 30 and loaded.seen == [str(i) for i in range(30)]


def test_snapshots_of_an_older_snapshot_version_are_ignored(monkeypatch, caplog):
    actor = new_id("counter")
    counter = Counter.objects.create(actor)
    for i in range(26):
        counter.increment(by=str(i))
    counter.save()
    monkeypatch.setattr(Counter._meta, "snapshot_version", 2)
    with caplog.at_level(logging.WARNING, logger="aether_django.aggregates"):
        loaded = Counter.objects.get(actor)
    assert loaded.count == 26
    assert "snapshot_version 1" in caplog.text


def test_without_snapshots_everything_works():
    order = placed_order(lines=40)
    assert Order.get_store().get_latest_snapshot(order.actor_id) is None
    assert Order.objects.get(order.actor_id).total_cents == sum(10 * (i + 1) for i in range(40))


# --- schema evolution -----------------------------------------------------------------------


def test_events_in_an_old_shape_are_upcast_when_read():
    actor = new_id()
    store = Order.get_store()
    store.save_events(
        [
            Event(event_type="OrderPlaced", actor_id=actor, version=1, data={"customer": "ann"}),
            # Written by an older release: another name, other fields, no schema.
            Event(
                event_type="ItemAdded",
                actor_id=actor,
                version=2,
                data={"product": "lamp", "count": 2, "price": 7},
            ),
        ]
    )
    order = Order.objects.get(actor)
    assert order.lines == [{"sku": "lamp", "quantity": 2, "price_cents": 7}]
    order.add_line("bulb", quantity=1, price_cents=3)
    assert order.pending_events[0].metadata == {"schema": "2"}
    order.save()
    assert Order.objects.get(actor).total_cents == 17


# --- registry and checks -------------------------------------------------------------------


@pytest.fixture
def scratch_registry():
    saved = dict(aggregates._registry)
    yield
    aggregates._registry.clear()
    aggregates._registry.update(saved)


def test_registry_finds_the_class_of_a_namespace():
    assert get_aggregate_class("test-orders") is Order
    assert get_aggregate_class("no-such-namespace") is None


def _ids():
    return [m.id for m in run_checks() if m.id and m.id.startswith("aether_django.")]


def test_the_declared_domain_passes_the_checks():
    assert _ids() == []


def test_check_aggregate_without_namespace(scratch_registry):
    class Homeless(Aggregate):
        pass

    assert "aether_django.E101" in _ids()


def test_check_handler_for_an_event_nobody_records(scratch_registry):
    class Lonely(Aggregate):
        class Meta:
            namespace = "lonely"

        def go(self):
            self.record("Went")

        @apply("Went")
        def _went(self, event):
            pass

        @apply("NeverRecorded")
        def _never(self, event):
            pass

    messages = [m for m in run_checks() if m.id == "aether_django.W102"]
    assert len(messages) == 1 and "NeverRecorded" in messages[0].msg


def test_check_two_handlers_for_one_type(scratch_registry):
    class Twice(Aggregate):
        class Meta:
            namespace = "twice"

        def go(self):
            self.record("Went")

        @apply("Went")
        def _one(self, event):
            pass

        @apply("Went")
        def _two(self, event):
            pass

    assert "aether_django.E103" in _ids()


def test_check_invalid_meta_options(scratch_registry):
    class Bad(Aggregate):
        class Meta:
            namespace = "bad name"
            snapshot_every = 0
            colour = "blue"

    messages = [m.msg for m in run_checks() if m.id == "aether_django.E104"]
    assert len(messages) == 3
    assert any("colour" in m for m in messages)
    assert any("snapshot_every" in m for m in messages)


def test_check_two_aggregates_in_one_namespace(scratch_registry):
    class Again(Aggregate):
        class Meta:
            namespace = "test-orders"

    assert "aether_django.E105" in _ids()


# --- concurrency through the model layer ------------------------------------------------


@pytest.mark.slow
def test_8_processes_run_100_updates_each_and_every_command_lands_once(nats_server):
    actor = new_id("counter")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        conflicts = pool.starmap(workers.update_many, [(actor, 100)] * 8)
    counter = Counter.objects.get(actor)
    assert counter.count == 800
    assert len(counter.seen) == len(set(counter.seen)) == 800
    assert counter.version == 800
    print(f"\n800 commands from 8 processes, {sum(conflicts)} conflicts retried")


def test_update_keeps_hot_actors_and_a_stale_copy_costs_only_a_reload(monkeypatch):
    order = placed_order(lines=0)
    Order.objects.update(order.actor_id, lambda o: o.add_line("a", 1, 1))
    loads = []
    original = type(Order.objects).get

    def counting_get(self, actor_id, **kwargs):
        loads.append(actor_id)
        return original(self, actor_id, **kwargs)

    monkeypatch.setattr(type(Order.objects), "get", counting_get)
    returned = Order.objects.update(order.actor_id, lambda o: o.add_line("b", 1, 1))
    assert loads == []  # served from memory: one round trip, the save
    returned.lines.append("not stored")  # the caller's copy is its own
    # Another writer moves the actor on; the cached copy is stale.
    other = Order.objects.get(order.actor_id)
    other.add_line("c", 1, 1)
    other.save()
    loads.clear()
    result = Order.objects.update(order.actor_id, lambda o: o.add_line("d", 1, 1), retries=0)
    assert loads == [order.actor_id]  # reloaded once, without using up a retry
    assert [line["sku"] for line in result.lines] == ["a", "b", "c", "d"]
    assert Order.objects.get(order.actor_id).version == 5
