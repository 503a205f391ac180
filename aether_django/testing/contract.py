"""The event-store and event-bus contracts as test suites: every store, and every bus,
must pass the same tests.

Subclass :class:`EventStoreContract` in a test module and provide a
``make_store`` fixture returning a function ``namespace -> EventStore``::

    class TestMyStore(EventStoreContract):
        @pytest.fixture
        def make_store(self):
            return lambda namespace: MyStore(namespace)

Each test uses fresh namespaces, so stores may share one server.
:class:`EventBusContract` does the same for buses (``make_bus`` and
``make_bus_store`` fixtures; see its docstring).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from ..bus.base import BaseEventBus, Feature, UnsupportedSubscriptionError
from ..bus.local import (
    Delivery,
    Subscription,
    SubscriptionHandlerError,
    SubscriptionOverflowError,
)
from ..errors import (
    InvalidActorIdError,
    InvalidEventError,
    InvalidNameError,
    InvalidNamespaceError,
    PayloadTooLargeError,
    VersionConflictError,
)
from ..events import ActorSnapshot, Event
from ..patterns import InvalidPatternError, SubscriptionFilter
from ..store.base import EventStore, StoreConfig, actor_order

__all__ = ["EventBusContract", "EventStoreContract", "unique_namespace"]

MakeStore = Callable[[str], EventStore]


def unique_namespace(prefix: str = "t") -> str:
    """A namespace no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def ev(actor_id: str, version: int, event_type: str = "Happened", **data: Any) -> Event:
    """A small event for tests."""
    return Event(event_type=event_type, actor_id=actor_id, version=version, data=data)


class EventStoreContract:
    """Behaviour shared by every EventStore implementation."""

    @pytest.fixture
    def make_store(self) -> MakeStore:
        raise NotImplementedError("provide a make_store fixture")

    @pytest.fixture
    def store(self, make_store: MakeStore) -> EventStore:
        return make_store(unique_namespace())

    # --- versions -------------------------------------------------------------
    def test_unknown_actor_has_version_zero_and_no_events(self, store: EventStore) -> None:
        assert store.get_latest_version("nobody") == 0
        assert store.get_events("nobody") == []
        assert store.get_latest_snapshot("nobody") is None

    def test_saved_events_come_back_in_order(self, store: EventStore) -> None:
        for version in (1, 2, 3):
            store.save_event(ev("a-1", version, n=version))
        events = store.get_events("a-1")
        assert [e.version for e in events] == [1, 2, 3]
        assert [e.data["n"] for e in events] == [1, 2, 3]
        assert store.get_latest_version("a-1") == 3
        result = store.get_events_with_errors("a-1")
        assert result.events == events and result.errors == []
        assert store.get_events_with_errors("a-1", 2).events == events[1:]

    def test_saved_event_round_trips_every_field(self, store: EventStore) -> None:
        original = Event(
            event_type="OrderPlaced",
            actor_id="order-1",
            version=1,
            data={"total": 12.5, "lines": [{"sku": "x", "qty": 2}], "note": "ünïcode"},
            command_id="cmd-1",
            metadata={"user": "ann"},
        )
        stored = store.save_event(original)
        assert stored == original
        assert stored.sequence is not None and stored.sequence > 0
        (loaded,) = store.get_events("order-1")
        assert loaded == original
        assert loaded.timestamp == original.timestamp
        assert loaded.sequence == stored.sequence

    def test_fresh_reads_share_nothing(self, store: EventStore) -> None:
        """A store that claims ``fresh_reads`` hands each read events of its own: what
        one reader does to their data (a load opening personal fields in place) is
        not seen by the store's other readers, nor by the save that wrote them."""
        if not store.fresh_reads:
            return  # nothing claimed, nothing to attack
        saved = store.save_event(ev("a-1", 1, name="sealed"))
        first = store.get_events("a-1")
        second = store.get_events("a-1")
        assert first[0] is not second[0] and first[0].data is not second[0].data
        first[0].data["name"] = "opened"  # type: ignore[index]
        assert second[0].data["name"] == "sealed" and saved.data["name"] == "sealed"
        assert store.get_events("a-1")[0].data["name"] == "sealed"
        assert store.get_events_with_errors("a-1").events[0].data["name"] == "sealed"

    def test_version_must_be_strictly_greater(self, store: EventStore) -> None:
        store.save_event(ev("a", 1))
        store.save_event(ev("a", 2))
        for stale in (1, 2):
            with pytest.raises(VersionConflictError) as info:
                store.save_event(ev("a", stale))
            assert info.value.actor_id == "a"
            assert info.value.attempted_version == stale
            assert info.value.current_version == 2
        assert [e.version for e in store.get_events("a")] == [1, 2]

    def test_gaps_between_versions_are_allowed(self, store: EventStore) -> None:
        store.save_event(ev("a", 5))
        store.save_event(ev("a", 10))
        assert store.get_latest_version("a") == 10
        with pytest.raises(VersionConflictError):
            store.save_event(ev("a", 7))

    @pytest.mark.parametrize("version", [0, -1])
    def test_version_must_be_positive(self, store: EventStore, version: int) -> None:
        with pytest.raises(InvalidEventError, match="greater than 0"):
            store.save_event(ev("a", version))
        assert store.get_latest_version("a") == 0

    def test_repeating_the_last_save_returns_it_without_storing_it_again(
        self, store: EventStore
    ) -> None:
        event = ev("a", 1)
        first = store.save_event(event)
        again = store.save_event(event)
        assert again == first and again.sequence == first.sequence
        assert len(store.get_events("a")) == 1

    def test_get_events_from_version_is_inclusive(self, store: EventStore) -> None:
        for version in (1, 3, 5, 7, 9):
            store.save_event(ev("a", version))
        assert [e.version for e in store.get_events("a", 5)] == [5, 7, 9]
        assert [e.version for e in store.get_events("a", 6)] == [7, 9]
        assert [e.version for e in store.get_events("a", 0)] == [1, 3, 5, 7, 9]
        assert store.get_events("a", 10) == []

    def test_actor_pages_walk_every_actor_once_in_subject_token_order(
        self, store: EventStore
    ) -> None:
        ids = ["b", "a-1", "c d", "Z", "é", "a_2", "0"]
        for actor_id in ids:
            store.save_event(ev(actor_id, 1))
        in_order = sorted(ids, key=actor_order)
        seen, after, at = [], None, 0
        while True:
            page = store.get_actor_page(after, 2, at=at)
            assert 1 <= len(page.actor_ids) <= 2
            seen += page.actor_ids
            if page.next_at is None:
                break
            after, at = page.actor_ids[-1], page.next_at
        assert seen == in_order
        # ``at`` is a hint: a wrong one gives the same page.
        for hint in (0, 3, 10**6):
            assert store.get_actor_page(in_order[2], 3, at=hint).actor_ids == in_order[3:6]
        last = store.get_actor_page(in_order[-1], 5)
        assert last.actor_ids == [] and last.next_at is None
        assert store.get_actor_page("zzz", 5).actor_ids == []  # after every token

    def test_a_page_of_events_is_bounded_by_count_and_by_bytes(self, store: EventStore) -> None:
        for version in range(1, 6):
            store.save_event(ev("a", version, blob="x" * 1000))
            store.save_event(ev("b", version))  # interleaved with another actor's

        def page(from_version: int, limit: int, max_bytes: int) -> tuple[list[int], bool]:
            events, more = store.get_events_page(
                "a", from_version, limit=limit, max_bytes=max_bytes
            )
            return [e.version for e in events], more

        assert page(0, 2, 10**6) == ([1, 2], True)
        assert page(3, 10, 10**6) == ([3, 4, 5], False)
        assert page(5, 1, 10**6) == ([5], False)
        assert page(6, 10, 10**6) == ([], False)
        # Each event encodes to a little over 1000 bytes.
        assert page(0, 10, 2500) == ([1, 2], True)
        assert page(2, 10, 1) == ([2], True), "always at least one event"
        assert store.get_events_page("nobody", limit=5, max_bytes=10) == ([], False)
        for bad in (0, -1, True):
            with pytest.raises(InvalidEventError):
                store.get_events_page("a", limit=bad, max_bytes=10)
            with pytest.raises(InvalidEventError):
                store.get_events_page("a", limit=1, max_bytes=bad)

    def test_get_events_with_a_limit_returns_the_first_ones(self, store: EventStore) -> None:
        for version in range(1, 11):
            store.save_event(ev("a", version))
            store.save_event(ev("b", version))  # interleaved with another actor's
        assert [e.version for e in store.get_events("a", limit=3)] == [1, 2, 3]
        assert [e.version for e in store.get_events("a", 4, limit=3)] == [4, 5, 6]
        assert [e.version for e in store.get_events("a", 9, limit=5)] == [9, 10]
        assert [e.version for e in store.get_events("a", limit=10)] == list(range(1, 11))
        assert store.get_events("a", 11, limit=1) == []
        # A hint that starts the read well before from_version: older versions come
        # first and do not count towards the limit.
        first = store.get_events("a", limit=1)[0].sequence or 0
        assert [e.version for e in store.get_events("a", 5, after_sequence=first, limit=2)] == [
            5,
            6,
        ]
        for bad in (0, -1, True, "3"):
            with pytest.raises(InvalidEventError):
                store.get_events("a", limit=bad)  # type: ignore[arg-type]

    def test_actors_are_independent(self, store: EventStore) -> None:
        store.save_event(ev("a", 1))
        store.save_event(ev("b", 1))
        store.save_event(ev("a", 2))
        assert [e.actor_id for e in store.get_events("a")] == ["a", "a"]
        assert store.get_latest_version("b") == 1

    def test_actor_ids_that_are_not_subject_tokens(self, store: EventStore) -> None:
        odd = ["with space", "dots.and*stars>", "ünïcødé/ü", "=looks-encoded", "a" * 255]
        for actor_id in odd:
            store.save_event(ev(actor_id, 1))
        for actor_id in odd:
            (event,) = store.get_events(actor_id)
            assert event.actor_id == actor_id

    # --- batches ----------------------------------------------------------------
    def test_save_events_stores_all(self, store: EventStore) -> None:
        stored = store.save_events([ev("a", 1), ev("a", 2), ev("a", 3)])
        assert [e.version for e in stored] == [1, 2, 3]
        sequences = [e.sequence or 0 for e in stored]
        assert sequences == sorted(sequences) and 0 not in sequences
        assert [e.version for e in store.get_events("a")] == [1, 2, 3]

    def test_save_events_is_all_or_nothing_on_conflict(self, store: EventStore) -> None:
        store.save_event(ev("a", 1))
        with pytest.raises(VersionConflictError) as info:
            store.save_events([ev("a", 1), ev("a", 2), ev("a", 3)])
        assert info.value.current_version == 1
        assert [e.version for e in store.get_events("a")] == [1]

    def test_save_events_of_nothing_does_nothing(self, store: EventStore) -> None:
        assert store.save_events([]) == []

    @pytest.mark.parametrize(
        "batch",
        [
            [("a", 1), ("b", 2)],
            [("a", 2), ("a", 2)],
            [("a", 3), ("a", 2)],
            [("a", 0), ("a", 1)],
            [("a", 1), ("a", 2), ("a", -3)],
        ],
        ids=["two-actors", "repeated-version", "decreasing", "version-0", "negative-version"],
    )
    def test_invalid_batches_are_refused_whole(
        self, store: EventStore, batch: list[tuple[str, int]]
    ) -> None:
        with pytest.raises(InvalidEventError):
            store.save_events([ev(actor, version) for actor, version in batch])
        assert store.get_latest_version("a") == 0
        assert store.get_latest_version("b") == 0

    # --- bad input ----------------------------------------------------------------
    def test_data_that_is_not_json_is_refused(self, store: EventStore) -> None:
        with pytest.raises(InvalidEventError, match="JSON"):
            store.save_event(ev("a", 1, when=object()))
        with pytest.raises(InvalidEventError, match="JSON"):
            store.save_event(ev("a", 1, n=float("nan")))
        assert store.get_latest_version("a") == 0

    def test_oversized_event_is_refused(self, store: EventStore) -> None:
        big = "x" * (1024 * 1024 + 1)
        with pytest.raises(PayloadTooLargeError) as info:
            store.save_event(ev("a", 1, blob=big))
        assert info.value.limit == 1024 * 1024
        assert store.get_latest_version("a") == 0

    @pytest.mark.parametrize("actor_id", ["", "tab\there", "x" * 256, 42])
    def test_invalid_actor_ids_are_refused(self, store: EventStore, actor_id: Any) -> None:
        with pytest.raises(InvalidActorIdError):
            store.get_latest_version(actor_id)
        with pytest.raises(InvalidActorIdError):
            store.save_event(ev(actor_id, 1))

    @pytest.mark.parametrize("namespace", ["", "a..b", "a b", "a*", "a>", ".a", "x" * 101])
    def test_invalid_namespaces_are_refused(self, make_store: MakeStore, namespace: str) -> None:
        with pytest.raises(InvalidNamespaceError):
            make_store(namespace)

    def test_actor_ids_lists_every_actor_with_events(self, store: EventStore) -> None:
        assert store.get_actor_ids() == []
        for actor_id in ("b", "a", "c d", "a"):
            store.save_event(ev(actor_id, store.get_latest_version(actor_id) + 1))
        assert store.get_actor_ids() == ["a", "b", "c d"]

    def test_namespace_figures_and_versions_in_one_read(self, store: EventStore) -> None:
        assert store.get_info() is None
        assert store.get_latest_versions(["a", "b"]) == {"a": 0, "b": 0}
        store.save_events([ev("a", 1), ev("a", 2)])
        store.save_event(ev("b c", 7))
        info = store.get_info()
        assert info is not None and info.name == store.namespace
        assert (info.events, info.actors) == (3, 2)
        assert info.bytes > 0 and info.last_sequence - info.first_sequence == 2
        assert store.get_latest_versions(["a", "b c", "zz"]) == {"a": 2, "b c": 7, "zz": 0}

    async def test_the_namespaces_of_a_store_class_are_listed(self, store: EventStore) -> None:
        await store.asave_event(ev("a", 1))
        listed = await type(store).alist_namespaces(
            runtime=getattr(store, "runtime", None), config=getattr(store, "config", StoreConfig())
        )
        assert store.namespace in listed

    # --- snapshots ------------------------------------------------------------------
    def test_snapshots_round_trip_and_replace(self, store: EventStore) -> None:
        store.save_event(ev("a", 1))
        store.save_snapshot(ActorSnapshot(actor_id="a", version=1, state={"n": 1}))
        snap = ActorSnapshot(actor_id="a", version=2, state={"n": 2, "items": ["x"]})
        store.save_snapshot(snap)
        assert store.get_latest_snapshot("a") == snap
        assert store.get_latest_snapshot("b") is None

    def test_snapshot_validation(self, store: EventStore) -> None:
        with pytest.raises(InvalidEventError):
            store.save_snapshot(ActorSnapshot(actor_id="a", version=0, state={}))
        with pytest.raises(InvalidEventError):
            store.save_snapshot(ActorSnapshot(actor_id="a", version=1, state={"x": object()}))
        assert store.get_latest_snapshot("a") is None

    # --- namespaces -------------------------------------------------------------------
    def test_namespaces_are_isolated(self, make_store: MakeStore) -> None:
        a, b = make_store(unique_namespace("ta")), make_store(unique_namespace("tb"))
        a.save_event(ev("shared-id", 1))
        a.save_snapshot(ActorSnapshot(actor_id="shared-id", version=1, state={}))
        assert b.get_events("shared-id") == []
        assert b.get_latest_version("shared-id") == 0
        assert b.get_latest_snapshot("shared-id") is None
        b.save_event(ev("shared-id", 1))
        assert len(a.get_events("shared-id")) == 1

    # --- async twins --------------------------------------------------------------------
    async def test_async_twins_have_the_same_semantics(self, store: EventStore) -> None:
        assert await store.aget_latest_version("a") == 0
        stored = await store.asave_event(ev("a", 1))
        assert stored.sequence
        await store.asave_events([ev("a", 2), ev("a", 3)])
        with pytest.raises(VersionConflictError) as info:
            await store.asave_event(ev("a", 3))
        assert info.value.current_version == 3
        assert [e.version for e in await store.aget_events("a", 2)] == [2, 3]
        result = await store.aget_events_with_errors("a")
        assert len(result.events) == 3 and result.errors == []
        assert await store.aget_latest_version("a") == 3
        await store.asave_snapshot(ActorSnapshot(actor_id="a", version=3, state={"n": 3}))
        snap = await store.aget_latest_snapshot("a")
        assert snap is not None and snap.state == {"n": 3}


# --- the event bus -------------------------------------------------------------------

#: ``make_bus(**options)``: a new bus; options are ``handler_retries``,
#: ``handler_backoff``, ``buffer_size`` (as ``get_event_bus()`` passes them).
MakeBus = Callable[..., BaseEventBus]
#: ``make_bus_store(bus, namespace)``: a store whose saves reach ``bus``.
MakeBusStore = Callable[[BaseEventBus, str], EventStore]

#: Seconds a delivery that is due may take to arrive.
DUE = 5.0
#: Seconds a delivery that is not due is waited for before concluding it never comes.
QUIET = 0.3


async def take(subscription: Subscription, n: int, wait: float = DUE) -> list[Delivery]:
    """The next ``n`` deliveries of ``subscription``."""
    return [await subscription.next(wait) for _ in range(n)]


async def nothing_more(subscription: Subscription, wait: float = QUIET) -> None:
    """Fail when ``subscription`` delivers anything within ``wait`` seconds."""
    with pytest.raises(TimeoutError):
        await subscription.next(wait)


async def _until(condition: Callable[[], bool], wait: float = DUE) -> None:
    deadline = asyncio.get_running_loop().time() + wait
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


#: A start position of each kind, with the feature it needs.
_STARTS: list[tuple[str, Callable[[str, int, datetime], Any], Feature]] = [
    ("all", lambda ns, seq, since: "all", Feature.START_ALL),
    ("sequence", lambda ns, seq, since: seq, Feature.START_SEQUENCE),
    ("mapping", lambda ns, seq, since: {ns: seq}, Feature.START_SEQUENCE),
    ("datetime", lambda ns, seq, since: since, Feature.START_TIME),
]


class EventBusContract:
    """Behaviour shared by every event bus (``aether_django.bus.base.BaseEventBus``).

    Subclass it and provide two fixtures: ``make_bus`` (``**options -> bus``) and
    ``make_bus_store`` (``(bus, namespace) -> store`` whose saves reach that bus)::

        class TestMyBus(EventBusContract):
            @pytest.fixture
            def make_bus(self):
                return lambda **options: MyBus(**options)

            @pytest.fixture
            def make_bus_store(self):
                return lambda bus, namespace: MyStore(namespace, bus=bus)

    A part of the contract the bus does not list in ``features`` is expected to
    be refused with UnsupportedSubscriptionError, never silently ignored. The
    tests are async (pytest-asyncio); each uses fresh namespaces.
    """

    @pytest.fixture
    def make_bus(self) -> MakeBus:
        raise NotImplementedError("provide a make_bus fixture")

    @pytest.fixture
    def make_bus_store(self) -> MakeBusStore:
        raise NotImplementedError("provide a make_bus_store fixture")

    @pytest.fixture
    def buses(self, make_bus: MakeBus) -> Iterator[Callable[..., BaseEventBus]]:
        """``buses(**options)``: a new bus, closed when the test ends."""
        made: list[BaseEventBus] = []

        def build(**options: Any) -> BaseEventBus:
            made.append(make_bus(**options))
            return made[-1]

        yield build
        for bus in made:
            bus.close()

    @pytest.fixture
    def bus(self, buses: Callable[..., BaseEventBus]) -> BaseEventBus:
        return buses()

    async def _namespace(
        self, bus: BaseEventBus, make_bus_store: MakeBusStore, prefix: str = "bus"
    ) -> tuple[str, EventStore]:
        """A fresh namespace with one event saved before any subscription (so a bus
        reading streams finds it; and ``start="new"`` must not deliver it)."""
        namespace = unique_namespace(prefix)
        store = make_bus_store(bus, namespace)
        await store.asave_event(ev("warm-up", 1, "WarmedUp"))
        return namespace, store

    # --- delivery ---------------------------------------------------------------------
    async def test_saved_events_reach_a_subscription_in_order(
        self, bus: BaseEventBus, make_bus_store: MakeBusStore
    ) -> None:
        ns, store = await self._namespace(bus, make_bus_store)
        sub = await bus.asubscribe(ns)
        stored = [await store.asave_event(ev("a", v, n=v)) for v in (1, 2, 3)]
        deliveries = await take(sub, 3)
        assert [d.event for d in deliveries] == stored
        assert all(d.namespace == ns for d in deliveries)
        assert [d.sequence for d in deliveries] == [e.sequence for e in stored]
        await nothing_more(sub)  # and not the event saved before subscribing
        await sub.aclose()

    async def test_a_save_of_several_events_delivers_each(
        self, bus: BaseEventBus, make_bus_store: MakeBusStore
    ) -> None:
        ns, store = await self._namespace(bus, make_bus_store)
        sub = await bus.asubscribe(ns)
        stored = await store.asave_events([ev("a", 1), ev("a", 2)])
        assert [d.event for d in await take(sub, 2)] == stored
        await sub.aclose()

    async def test_a_published_event_reaches_a_subscription(self, bus: BaseEventBus) -> None:
        ns = unique_namespace("bus")
        sub = await bus.asubscribe(ns)
        event = ev("signal", 1, "Pinged")
        assert bus.publish(ns, event) == 1
        (delivery,) = await take(sub, 1)
        assert delivery.namespace == ns and delivery.event == event
        assert bus.metrics["published"] >= 1
        await sub.aclose()

    async def test_a_callback_receives_each_delivery(
        self, bus: BaseEventBus, make_bus_store: MakeBusStore
    ) -> None:
        ns, store = await self._namespace(bus, make_bus_store)
        received: list[Delivery] = []

        async def on_delivery(delivery: Delivery) -> None:
            received.append(delivery)

        sub = await bus.asubscribe(ns, callback=on_delivery)
        stored = [await store.asave_event(ev("a", v)) for v in (1, 2)]
        await _until(lambda: len(received) == 2)
        assert [d.event for d in received] == stored
        await sub.aclose()

    # --- filters and patterns ---------------------------------------------------------
    async def test_filters_by_event_type_and_actor_pattern(
        self, bus: BaseEventBus, make_bus_store: MakeBusStore
    ) -> None:
        ns, store = await self._namespace(bus, make_bus_store)
        by_type = await bus.asubscribe(ns, SubscriptionFilter(event_types=["Shipped"]))
        by_actor = await bus.asubscribe(ns, SubscriptionFilter(actor_pattern="order-*"))
        both = await bus.asubscribe(
            ns, SubscriptionFilter(event_types=["Shipped"], actor_pattern="order-*")
        )
        placed = await store.asave_event(ev("order-1", 1, "Placed"))
        shipped = await store.asave_event(ev("order-1", 2, "Shipped"))
        other = await store.asave_event(ev("parcel-1", 1, "Shipped"))
        assert [d.event for d in await take(by_type, 2)] == [shipped, other]
        assert [d.event for d in await take(by_actor, 2)] == [placed, shipped]
        assert [d.event for d in await take(both, 1)] == [shipped]
        for sub in (by_type, by_actor, both):
            await nothing_more(sub, 0.1)
            await sub.aclose()

    async def test_namespace_patterns_cover_the_matching_namespaces_only(
        self, bus: BaseEventBus, make_bus_store: MakeBusStore
    ) -> None:
        family = unique_namespace("fam")
        stores = {}
        for name in (f"{family}.a", f"{family}.b", f"{family}x"):
            stores[name] = make_bus_store(bus, name)
            await stores[name].asave_event(ev("warm-up", 1))
        star = await bus.asubscribe(f"{family}.*")
        prefix = await bus.asubscribe(f"{family}*")
        saved = {name: await store.asave_event(ev("x", 1)) for name, store in stores.items()}
        got = {(d.namespace, d.event.id) for d in await take(star, 2)}
        assert got == {(n, saved[n].id) for n in (f"{family}.a", f"{family}.b")}
        await nothing_more(star)
        (only,) = await take(prefix, 1)  # a prefix token matches one token
        assert (only.namespace, only.event) == (f"{family}x", saved[f"{family}x"])
        await nothing_more(prefix, 0.1)
        await star.aclose()
        await prefix.aclose()

    async def test_readable_narrows_a_pattern(
        self, bus: BaseEventBus, make_bus_store: MakeBusStore
    ) -> None:
        family = unique_namespace("read")
        a, b = f"{family}.a", f"{family}.b"
        stores = {n: make_bus_store(bus, n) for n in (a, b)}
        for store in stores.values():
            await store.asave_event(ev("warm-up", 1))
        if Feature.READABLE not in bus.features:
            with pytest.raises(UnsupportedSubscriptionError):
                await bus.asubscribe(f"{family}.*", readable={a})
            return
        sub = await bus.asubscribe(f"{family}.*", readable={a})
        await stores[b].asave_event(ev("x", 1))
        bus.publish(b, ev("signal", 1))
        saved = await stores[a].asave_event(ev("x", 1))
        (delivery,) = await take(sub, 1)
        assert (delivery.namespace, delivery.event) == (a, saved)
        await nothing_more(sub)
        await sub.aclose()

    # --- start positions and durable subscriptions ------------------------------------
    @pytest.mark.parametrize("kind", [kind for kind, _, _ in _STARTS])
    async def test_start_positions_replay_or_are_refused(
        self, bus: BaseEventBus, make_bus_store: MakeBusStore, kind: str
    ) -> None:
        _, position, feature = next(s for s in _STARTS if s[0] == kind)
        ns, store = await self._namespace(bus, make_bus_store)
        since = datetime.now(UTC)
        await asyncio.sleep(0.01)
        first = await store.asave_event(ev("a", 1))
        second = await store.asave_event(ev("a", 2))
        assert first.sequence is not None
        start = position(ns, first.sequence, since)
        if feature not in bus.features:
            with pytest.raises(UnsupportedSubscriptionError):
                await bus.asubscribe(ns, start=start)
            return
        sub = await bus.asubscribe(ns, start=start)
        expected = [first, second]
        if kind == "all":
            expected = await store.aget_events("warm-up") + expected
        assert [d.event for d in await take(sub, len(expected))] == expected
        later = await store.asave_event(ev("a", 3))
        assert [d.event for d in await take(sub, 1)] == [later]
        await sub.aclose()

    async def test_invalid_options_are_refused_by_every_bus(self, bus: BaseEventBus) -> None:
        ns = unique_namespace("bus")
        with pytest.raises(ValueError):
            await bus.asubscribe(ns, start="bogus")
        with pytest.raises(ValueError):
            await bus.asubscribe(ns, start=0)
        with pytest.raises(ValueError, match="several namespaces"):
            await bus.asubscribe(f"{ns}.*", start=5)
        with pytest.raises(InvalidNameError):
            await bus.asubscribe(ns, durable="not a name")
        with pytest.raises(ValueError):
            await bus.asubscribe(ns, overflow="drop")
        with pytest.raises(InvalidPatternError):
            await bus.asubscribe("a..b")
        assert bus.metrics["subscriptions"] == 0

    async def test_a_durable_subscription_resumes_after_what_it_handled(
        self, bus: BaseEventBus, make_bus_store: MakeBusStore
    ) -> None:
        ns, store = await self._namespace(bus, make_bus_store)
        name = unique_namespace("durable")
        if Feature.DURABLE not in bus.features:
            with pytest.raises(UnsupportedSubscriptionError):
                await bus.asubscribe(ns, durable=name)
            return
        sub = await bus.asubscribe(ns, durable=name)
        handled = await store.asave_event(ev("a", 1))
        assert [d.event for d in await take(sub, 1)] == [handled]
        await sub.aclose()
        missed = await store.asave_event(ev("a", 2))
        again = await bus.asubscribe(ns, durable=name)
        assert [d.event for d in await take(again, 1)] == [missed]
        await nothing_more(again)
        await again.aclose()

    # --- ending: unsubscribe, close, handler failures, overflow -----------------------
    async def test_unsubscribe_and_close_end_subscriptions(
        self, bus: BaseEventBus, make_bus_store: MakeBusStore
    ) -> None:
        ns, store = await self._namespace(bus, make_bus_store)
        before = bus.metrics["subscriptions"]
        one = await bus.asubscribe(ns)
        two = await bus.asubscribe(ns)
        assert bus.metrics["subscriptions"] == before + 2
        bus.unsubscribe(one)
        assert one.closed and bus.metrics["subscriptions"] == before + 1
        with pytest.raises(StopAsyncIteration):
            await one.next(DUE)
        saved = await store.asave_event(ev("a", 1))
        assert [d.event for d in await take(two, 1)] == [saved]
        bus.close()
        assert two.closed and bus.metrics["subscriptions"] == before
        with pytest.raises(StopAsyncIteration):
            await two.next(DUE)

    async def test_a_failing_handler_is_retried_then_stops_the_subscription_at_its_event(
        self, buses: Callable[..., BaseEventBus], make_bus_store: MakeBusStore
    ) -> None:
        bus = buses(handler_retries=2, handler_backoff=0.01)
        ns, store = await self._namespace(bus, make_bus_store)
        attempts: list[int] = []
        handled: list[Event] = []
        ended: list[BaseException] = []

        async def handler(delivery: Delivery) -> None:
            if delivery.event.version == 2:
                attempts.append(delivery.event.version)
                raise RuntimeError("cannot handle it")
            handled.append(delivery.event)

        sub = await bus.asubscribe(ns, callback=handler, on_error=ended.append)
        ok = await store.asave_event(ev("a", 1))
        bad = await store.asave_event(ev("a", 2))
        await store.asave_event(ev("a", 3))
        await _until(lambda: bool(ended))
        (error,) = ended
        assert isinstance(error, SubscriptionHandlerError)
        assert error.event_id == bad.id and error.attempts == 3 and len(attempts) == 3
        assert isinstance(error.__cause__, RuntimeError)
        assert handled == [ok]  # nothing after the failed event was handed over
        assert bad.sequence is not None
        assert error.resume_start() == {ns: bad.sequence}
        assert sub.closed

    async def test_nack_hands_the_delivery_over_again(
        self, buses: Callable[..., BaseEventBus], make_bus_store: MakeBusStore
    ) -> None:
        bus = buses(handler_retries=1, handler_backoff=0.01)
        ns, store = await self._namespace(bus, make_bus_store)
        sub = await bus.asubscribe(ns)
        saved = await store.asave_event(ev("a", 1))
        (first,) = await take(sub, 1)
        sub.nack(RuntimeError("not now"))
        (again,) = await take(sub, 1)
        assert first.event == again.event == saved
        sub.nack(RuntimeError("still not"))
        with pytest.raises(SubscriptionHandlerError) as failed:
            await sub.next(DUE)
        assert failed.value.event_id == saved.id

    async def test_a_full_buffer_ends_the_subscription_with_a_resume_point(
        self, bus: BaseEventBus, make_bus_store: MakeBusStore
    ) -> None:
        ns, store = await self._namespace(bus, make_bus_store)
        sub = await bus.asubscribe(ns, buffer_size=2)
        saved = await store.asave_events([ev("a", v) for v in range(1, 6)])
        await _until(lambda: sub.closed)
        assert [d.event for d in await take(sub, 2)] == saved[:2]
        with pytest.raises(SubscriptionOverflowError) as overflow:
            await sub.next(DUE)
        assert saved[1].sequence is not None
        assert overflow.value.resume_start() == {ns: saved[1].sequence + 1}
        assert bus.metrics["overflowed"] >= 1

    async def test_overflow_wait_holds_the_source_back_or_is_refused(
        self, bus: BaseEventBus, make_bus_store: MakeBusStore
    ) -> None:
        ns, store = await self._namespace(bus, make_bus_store)
        if Feature.OVERFLOW_WAIT not in bus.features:
            with pytest.raises(UnsupportedSubscriptionError):
                await bus.asubscribe(ns, overflow="wait")
            return
        sub = await bus.asubscribe(ns, buffer_size=2, overflow="wait")
        saved = await store.asave_events([ev("a", v) for v in range(1, 6)])
        await asyncio.sleep(QUIET)
        assert not sub.closed
        assert [d.event for d in await take(sub, 5)] == saved
        await sub.aclose()
