"""Aggregates: declare, command, save, load, snapshot, upcast, retry, check."""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.core.checks import run_checks
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aether_django.aggregates import (
    Aggregate,
    AggregateError,
    UpdateRetriesExhausted,
    apply,
    command,
    evolve,
    get_aggregate_class,
    upcaster,
)
from aether_django.errors import StoreUnavailableError, VersionConflictError
from aether_django.events import ActorSnapshot, Event

from . import workers
from .domain import Article, Counter, Order, OrderError, Parcel

ROOT = Path(__file__).resolve().parents[2]


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
    a.lines.append({"sku": "x"})
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


def test_a_conflicting_save_stores_none_of_its_events():
    order = placed_order(lines=1)
    stale = Order.objects.get(order.actor_id)
    for sku in ("a", "b", "c"):
        stale.add_line(sku, quantity=1, price_cents=1)
    Order.objects.update(order.actor_id, lambda o: o.add_line("other", 1, 1))
    with pytest.raises(VersionConflictError):
        stale.save()
    # All or nothing: not even the first of the three, whose version 3 was free
    # until the other writer took it, nor the later ones at the free versions 4 and 5.
    stored = Order.get_store().get_events(order.actor_id)
    assert [e.version for e in stored] == [1, 2, 3]
    assert [e.data.get("sku") for e in stored[1:]] == ["sku-0", "other"]
    assert len(stale.pending_events) == 3  # kept, for a caller that wants to look


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


def test_update_backs_off_with_jitter_between_attempts(monkeypatch):
    order = placed_order(lines=0)
    waits: list[float] = []
    monkeypatch.setattr("aether_django.aggregates.time.sleep", waits.append)

    def always_loses(o: Order) -> None:
        Order.objects.update(order.actor_id, lambda other: other.add_line("x", 1, 1))
        o.add_line("mine", 1, 1)

    manager = Order.objects
    with pytest.raises(UpdateRetriesExhausted, match="after 5 attempts"):
        manager.update(order.actor_id, always_loses, retries=4)
    # One wait before each of the 4 retries, none after the last attempt.
    bounds = [min(manager.backoff_cap, manager.backoff_base * 2**k) for k in range(4)]
    assert len(waits) == 4
    for wait, bound in zip(waits, bounds, strict=True):
        assert 0 <= wait <= bound
    # Jittered: random within each bound, not a fixed exponential schedule.
    assert len(set(waits)) > 1
    assert waits != bounds


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
    assert all(Order.objects.exists(actor_id) for actor_id in ids)
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


@override_settings(AETHER={"BACKEND": "memory"})
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(COMMANDS)
def test_replaying_the_same_events_always_gives_the_same_state(commands):
    order = Order.objects.create(new_id())
    # The state right after each accepted command, by the version it reached.
    observed = {}
    for name, *args in commands:
        try:
            if name == "add_line":
                order.add_line("sku", *args)
            else:
                getattr(order, name)(*args)
        except OrderError:
            continue
        observed[order.version] = order.get_snapshot_state()
    order.save()
    if order.version == 0:
        return
    states = [Order.objects.get(order.actor_id).get_snapshot_state() for _ in range(3)]
    assert all(state == order.get_snapshot_state() for state in states)
    # Every past version replays to the state the commands produced at that point.
    assert sorted(observed) == list(range(1, order.version + 1))
    for version, state in observed.items():
        past = Order.objects.get(order.actor_id, at_version=version)
        assert past.version == version
        assert past.get_snapshot_state() == state


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
    assert loaded.count == 26 and loaded.seen == [str(i) for i in range(26)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("snapshot_version 1" in w and "replaying" in w for w in warnings)


def test_without_snapshots_everything_works():
    order = placed_order(lines=40)
    assert Order.get_store().get_latest_snapshot(order.actor_id) is None
    assert Order.objects.get(order.actor_id).total_cents == sum(10 * (i + 1) for i in range(40))


def spy_on_get_events(monkeypatch, store) -> list[tuple[int, int]]:
    """Record the (from_version, after_sequence) of every get_events call on the store's class."""
    asked: list[tuple[int, int]] = []
    original = type(store).get_events

    def spy(self, actor_id, from_version=0, *, after_sequence=0):
        asked.append((from_version, after_sequence))
        return original(self, actor_id, from_version, after_sequence=after_sequence)

    monkeypatch.setattr(type(store), "get_events", spy)
    return asked


def test_snapshot_hooks_store_state_that_is_not_json(monkeypatch):
    article = Article.objects.create(new_id("article"))
    for name in ("django", "nats", "events", "aether", "python", "django"):
        article.tag(name)
    article.save()  # version 6 crosses 5: a snapshot through the hooks
    store = Article.get_store()
    snapshot = store.get_latest_snapshot(article.actor_id)
    assert snapshot is not None and snapshot.version == 6
    assert snapshot.state["state"] == {"tags": ["aether", "django", "events", "nats", "python"]}

    asked = spy_on_get_events(monkeypatch, store)
    loaded = Article.objects.get(article.actor_id)
    assert asked[0][0] == 7  # restored from the snapshot, not replayed
    assert loaded.tags == {"aether", "django", "events", "nats", "python"}
    assert isinstance(loaded.tags, set)


def test_snapshots_of_another_class_are_ignored_with_a_warning(
    scratch_registry, monkeypatch, caplog
):
    # A namespace of its own: the snapshot below disagrees with the history on purpose.
    class Tally(Counter):
        class Meta:
            namespace = "test-tallies"
            snapshot_every = 25

    actor = new_id("tally")
    tally = Tally.objects.create(actor)
    for i in range(3):
        tally.increment(by=str(i))
    tally.save()
    store = Tally.get_store()
    # A snapshot the class did not make: for instance one of a class since renamed.
    store.save_snapshot(
        ActorSnapshot(
            actor_id=actor,
            version=3,
            state={
                "aggregate": "somewhere.else.OldTally",
                "snapshot_version": 1,
                "state": {"count": 999, "seen": []},
            },
        )
    )
    asked = spy_on_get_events(monkeypatch, store)
    with caplog.at_level(logging.WARNING, logger="aether_django.aggregates"):
        loaded = Tally.objects.get(actor)
    assert asked == [(0, 0)]  # replayed from the first event
    assert loaded.count == 3 and loaded.seen == ["0", "1", "2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"not made by {Tally._meta.label}" in w for w in warnings)


def test_at_version_below_the_snapshot_replays_from_the_start(monkeypatch):
    actor = new_id("counter")
    counter = Counter.objects.create(actor)
    for i in range(30):
        counter.increment(by=str(i))
    counter.save()
    store = Counter.get_store()
    assert store.get_latest_snapshot(actor).version == 30
    last_sequence = store.get_events(actor)[-1].sequence

    asked = spy_on_get_events(monkeypatch, store)
    past = Counter.objects.get(actor, at_version=10)
    assert asked == [(0, 0)]  # the snapshot (v30) is newer than asked: not used
    assert (past.version, past.count, past.seen) == (10, 10, [str(i) for i in range(10)])
    asked.clear()
    current = Counter.objects.get(actor, at_version=30)
    assert asked == [(31, last_sequence)]  # at the snapshot's version: used
    assert current.count == 30


def test_a_failed_snapshot_save_does_not_fail_the_save(monkeypatch, caplog):
    actor = new_id("counter")
    counter = Counter.objects.create(actor)
    for i in range(26):
        counter.increment(by=str(i))
    store = Counter.get_store()

    def unavailable(self, snapshot):
        raise StoreUnavailableError("the snapshot bucket did not answer")

    monkeypatch.setattr(type(store), "save_snapshot", unavailable)
    with caplog.at_level(logging.WARNING, logger="aether_django.aggregates"):
        counter.save()  # does not raise: the events are stored already
    monkeypatch.undo()
    assert counter.pending_events == []
    assert store.get_latest_version(actor) == 26
    assert store.get_latest_snapshot(actor) is None
    assert Counter.objects.get(actor).count == 26
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("could not save a snapshot" in r.getMessage() for r in warnings)


def test_a_later_crossing_replaces_the_snapshot(monkeypatch):
    actor = new_id("counter")
    counter = Counter.objects.create(actor)
    store = Counter.get_store()
    taken = []
    for i in range(60):
        counter.increment(by=str(i))
        if i % 4 == 3:
            counter.save()
            snapshot = store.get_latest_snapshot(actor)
            if snapshot is not None and snapshot.version not in taken:
                taken.append(snapshot.version)
    # Saves at 4, 8, ..., 60: the ones that crossed 25 and 50.
    assert taken == [28, 52]
    snapshot = store.get_latest_snapshot(actor)
    assert snapshot.version == 52 and snapshot.state["state"]["count"] == 52

    asked = spy_on_get_events(monkeypatch, store)
    loaded = Counter.objects.get(actor)
    assert [from_version for from_version, _ in asked] == [53]
    assert loaded.count == 60 and loaded.seen == [str(i) for i in range(60)]


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
    assert order.pending_events[0].metadata["schema"] == "2"
    order.save()
    assert Order.objects.get(actor).total_cents == 17


def weighed(actor: str, version: int, data: dict, schema: int) -> Event:
    """A Weighed event as the release writing ``schema`` stored it."""
    metadata = {"schema": str(schema)} if schema > 1 else {}
    return Event(
        event_type="Weighed", actor_id=actor, version=version, data=data, metadata=metadata
    )


def test_a_field_renamed_within_the_same_type_is_upcast():
    actor = new_id("parcel")
    # Schema 1 called the field "weight"; the handler reads "grams".
    Parcel.get_store().save_events([weighed(actor, 1, {"weight": 1200}, schema=1)])
    parcel = Parcel.objects.get(actor)
    assert parcel.grams == 1200
    upcast = Parcel.upcast(weighed(actor, 1, {"weight": 1200}, schema=1))
    assert upcast.event_type == "Weighed" and "weight" not in upcast.data


def test_upcasters_chain_across_schemas_one_two_three():
    actor = new_id("parcel")
    Parcel.get_store().save_events(
        [
            weighed(actor, 1, {"weight": 100}, schema=1),  # 1 → 2 → 3
            weighed(actor, 2, {"grams": 200}, schema=2),  # 2 → 3
            weighed(actor, 3, {"grams": 300, "source": "scale"}, schema=3),  # as is
        ]
    )
    parcel = Parcel.objects.get(actor)
    assert (parcel.grams, parcel.readings) == (300, ["unknown", "unknown", "scale"])
    upcast = Parcel.upcast(weighed(actor, 1, {"weight": 100}, schema=1))
    assert upcast.metadata == {"schema": "3"}
    assert dict(upcast.data) == {"grams": 100, "source": "unknown"}
    parcel.weigh(400, source="hand")
    assert parcel.pending_events[0].metadata["schema"] == "3"  # new events: current shape
    parcel.save()
    assert Parcel.objects.get(actor).readings[-1] == "hand"


def test_an_upcaster_loop_raises_a_clear_error(scratch_registry):
    class Looping(Aggregate):
        class Meta:
            namespace = "test-looping"

        def ping(self) -> None:
            self.record("Pinged")

        @apply("Pinged")
        def _pinged(self, event: Event) -> None:
            pass

        # A mistake: returns the same type at the same schema, so it matches again.
        @upcaster("Pinged", schema=1)
        def _pinged_v1(event: Event) -> Event:
            return evolve(event, schema=1)

    actor = new_id("loop")
    Looping.get_store().save_events([Event(event_type="Pinged", actor_id=actor, version=1)])
    with pytest.raises(AggregateError, match="'Pinged' loop without ending"):
        Looping.objects.get(actor)


# --- registry and checks -------------------------------------------------------------------


def test_registry_finds_the_class_of_a_namespace():
    assert get_aggregate_class("test-orders") is Order
    assert get_aggregate_class("no-such-namespace") is None


def _ids():
    return [
        m.id
        for m in run_checks()
        if m.id and m.id.startswith("aether_django.") and not m.is_silenced()
    ]


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


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("colour", "blue", "colour"),
        ("namespace", "bad name", "Meta.namespace"),
        ("snapshot_every", 0, "Meta.snapshot_every"),
        ("snapshot_every", True, "Meta.snapshot_every"),
        ("snapshot_every", 2.5, "Meta.snapshot_every"),
        ("snapshot_version", 0, "Meta.snapshot_version"),
        ("snapshot_version", "2", "Meta.snapshot_version"),
        ("event_schemas", {"Went": 0}, "Meta.event_schemas"),
        ("event_schemas", {"Went": True}, "Meta.event_schemas"),
        ("event_schemas", ["Went"], "Meta.event_schemas"),
        ("cache_size", -1, "Meta.cache_size"),
        ("cache_size", False, "Meta.cache_size"),
        ("cache_size", "10", "Meta.cache_size"),
    ],
)
def test_check_invalid_meta_options(scratch_registry, option, value, named):
    meta = type("Meta", (), {"namespace": "bad-meta", option: value})

    class Bad(Aggregate):
        Meta = meta

        def go(self):
            self.record("Went")

        @apply("Went")
        def _went(self, event):
            pass

    messages = [
        m
        for m in run_checks()
        if m.id and m.id.startswith("aether_django.") and not m.is_silenced()
    ]
    # Exactly one error, for the one invalid option, and no other message.
    assert [m.id for m in messages] == ["aether_django.E104"]
    assert named in messages[0].msg and messages[0].obj is Bad


def test_several_invalid_meta_options_give_one_error_each(scratch_registry):
    class Bad(Aggregate):
        class Meta:
            namespace = "bad name"
            snapshot_every = 0
            colour = "blue"

    messages = [m.msg for m in run_checks() if m.id == "aether_django.E104"]
    assert len(messages) == 3
    assert any("colour" in m for m in messages)
    assert any("snapshot_every" in m for m in messages)


def test_aggregates_modules_of_installed_apps_are_discovered_at_startup():
    # A fresh interpreter whose settings install the example shop, which nothing
    # imports: only the autodiscovery at django.setup() can register its Order.
    code = """
import sys
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "example_project.shop",
        "aether_django",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
)
assert "example_project.shop.aggregates" not in sys.modules
django.setup()
from aether_django.aggregates import get_aggregate_class
model = get_aggregate_class("orders")
print(model.__module__, model.__name__)
"""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["example_project.shop.aggregates", "Order"]


def test_commands_are_the_declared_methods_inherited_or_listed(scratch_registry):
    assert Order._meta.commands == {"place", "add_line", "pay", "ship", "cancel"}

    class Listed(Order):
        class Meta:
            namespace = "listed-orders"
            commands = ["describe"]

        def describe(self):
            self.record("OrderPlaced", customer="x")

        def helper(self):
            pass

    # Decorated commands are inherited, Meta.commands adds to them, and any other
    # method (the base class's API, handlers, helpers) is not a command.
    assert Listed._meta.commands == {"place", "add_line", "pay", "ship", "cancel", "describe"}
    assert not {"save", "asave", "set_snapshot_state", "record", "_placed", "helper"} & set(
        Listed._meta.commands
    )
    assert [m for m in run_checks() if m.id == "aether_django.E106"] == []


def test_check_a_declared_command_that_cannot_be_one(scratch_registry):
    class Bad(Aggregate):
        class Meta:
            namespace = "bad-commands"
            commands = ["save", "missing", "_hidden"]

        @command
        def set_snapshot_state(self, state):
            super().set_snapshot_state(state)

        @command
        def _private(self):
            pass

    messages = [m for m in run_checks() if m.id == "aether_django.E106"]
    assert sorted(m.msg.split("'")[1] for m in messages) == [
        "_hidden",
        "_private",
        "missing",
        "save",
        "set_snapshot_state",
    ]
    assert all(m.obj is Bad for m in messages)
    assert Bad._meta.commands == frozenset()  # none of them can be run remotely


def test_check_meta_commands_must_be_a_list_of_names(scratch_registry):
    class Bad(Aggregate):
        class Meta:
            namespace = "bad-commands"
            commands = "place"

    assert [m.id for m in run_checks() if m.obj is Bad] == ["aether_django.E104"]


def test_check_two_aggregates_in_one_namespace(scratch_registry):
    class Again(Aggregate):
        class Meta:
            namespace = "test-orders"

    assert "aether_django.E105" in _ids()


# --- concurrency through the model layer ------------------------------------------------


@pytest.mark.slow
def test_8_processes_run_100_updates_each_and_every_command_lands_once(aether_nats_server):
    order = placed_order(lines=0)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(8) as pool:
        start = manager.Barrier(8)  # all 8 set up and connected before any writes
        conflicts = pool.starmap(workers.update_many, [(order.actor_id, 100, start)] * 8)
    loaded = Order.objects.get(order.actor_id)
    skus = [line["sku"] for line in loaded.lines]
    # Every command once: 800 lines, no SKU twice, and each process's 100 in order.
    assert len(skus) == len(set(skus)) == 800
    by_process: dict[str, list[int]] = {}
    for sku in skus:
        pid, done = sku.split("-")
        by_process.setdefault(pid, []).append(int(done))
    assert len(by_process) == 8
    assert all(done == list(range(100)) for done in by_process.values())
    assert (loaded.version, loaded.total_cents, loaded.status) == (801, 800, "placed")
    assert sum(conflicts) > 0, "the processes should actually have raced"
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


# --- the documented example --------------------------------------------------------------


def test_the_documented_order_is_the_example_projects_code():
    doc = (ROOT / "docs" / "aggregates.md").read_text()
    section = doc.split("## Declaring an aggregate", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    source = (ROOT / "example_project" / "shop" / "aggregates.py").read_text()
    # The doc shows the module without its docstring and __future__ import.
    head, _, body = source.partition("from __future__ import annotations\n\n")
    assert head.startswith('"""') and head.rstrip().endswith('"""')
    assert block.group(1) == body


def test_the_recorded_event_types_survive_a_python_3_11_ast_miscount(monkeypatch):
    """CPython 3.11 before 3.11.8 can raise SystemError ("AST constructor recursion depth
    mismatch", gh-106905) from any parse in a thread that once caught a RecursionError,
    inspect.getsource's own parse included; the system check that reads an aggregate's
    source then failed instead of reading it again in a fresh thread."""
    import inspect
    import threading

    from aether_django.aggregates import recorded_event_types

    expected = recorded_event_types(Order)
    assert expected
    caller = threading.current_thread()
    real = inspect.getsource

    def miscounting(obj):
        if threading.current_thread() is caller:
            raise SystemError("AST constructor recursion depth mismatch (before=135, after=155)")
        return real(obj)

    monkeypatch.setattr(inspect, "getsource", miscounting)
    assert recorded_event_types(Order) == expected
