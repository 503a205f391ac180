"""The aggregates the tests use: the example shop's Order in a test namespace, a Counter,
an Article whose state needs the snapshot hooks, a Parcel whose event changed shape, and a
Ledger with a long snapshot interval (and so a long window of remembered commands)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aether_django.aggregates import Aggregate, apply, command, evolve, upcaster
from aether_django.events import Event
from example_project.shop.aggregates import Order as ShopOrder
from example_project.shop.aggregates import OrderError

__all__ = ["Article", "Counter", "Ledger", "Order", "OrderError", "Parcel"]


class Order(ShopOrder):
    """The shop's order, plus an upcaster for the shape an older release wrote."""

    class Meta:
        namespace = "test-orders"
        event_schemas = {"LineAdded": 2}

    # Version 1 called it ItemAdded, with "product", "count" and "price".
    @upcaster("ItemAdded", schema=1)
    def _item_added_v1(event: Event) -> Event:
        data = event.data
        return evolve(
            event,
            event_type="LineAdded",
            schema=2,
            data={
                "sku": data["product"],
                "quantity": data["count"],
                "price_cents": data.get("price", 0),
            },
        )


class Counter(Aggregate):
    """Counts commands; the multi-process test checks none is lost or doubled."""

    count: int = 0
    seen: list = []

    class Meta:
        namespace = "test-counters"
        snapshot_every = 25

    @command
    def increment(self, by: str) -> None:
        self.record("Incremented", by=by)

    @apply("Incremented")
    def _incremented(self, event: Event) -> None:
        self.count += 1
        self.seen.append(event.data["by"])


class Article(Aggregate):
    """Tags in a set, which JSON cannot hold: the snapshot hooks store a sorted list."""

    tags: set[str] = set()

    class Meta:
        namespace = "test-articles"
        snapshot_every = 5
        snapshot_version = 2

    @command
    def tag(self, name: str) -> None:
        self.record("Tagged", name=name)

    @apply("Tagged")
    def _tagged(self, event: Event) -> None:
        self.tags.add(event.data["name"])

    def get_snapshot_state(self) -> dict[str, Any]:
        return {**super().get_snapshot_state(), "tags": sorted(self.tags)}

    def set_snapshot_state(self, state: Mapping[str, Any]) -> None:
        super().set_snapshot_state(state)
        self.tags = set(state.get("tags", []))


class Parcel(Aggregate):
    """A weight whose event changed shape twice, with an upcaster for each step.

    Schema 1 wrote ``{"weight": <grams>}``; schema 2 renamed the field to
    ``"grams"``; schema 3 added the ``"source"`` of the reading.
    """

    grams: int = 0
    readings: list[str] = []

    class Meta:
        namespace = "test-parcels"
        event_schemas = {"Weighed": 3}

    @command
    def weigh(self, grams: int, source: str) -> None:
        self.record("Weighed", grams=grams, source=source)

    @apply("Weighed")
    def _weighed(self, event: Event) -> None:
        self.grams = event.data["grams"]
        self.readings.append(event.data["source"])

    @upcaster("Weighed", schema=1)
    def _weighed_v1(event: Event) -> Event:
        data = {k: v for k, v in event.data.items() if k != "weight"}
        return evolve(event, schema=2, data={**data, "grams": event.data["weight"]})

    @upcaster("Weighed", schema=2)
    def _weighed_v2(event: Event) -> Event:
        return evolve(event, schema=3, data={**event.data, "source": "unknown"})


class Ledger(Aggregate):
    """Entries, snapshotted every 250 events: the idempotency tests' long window."""

    entries: int = 0

    class Meta:
        namespace = "test-ledgers"
        snapshot_every = 250

    @command
    def post(self, amount: int = 1) -> None:
        self.record("Posted", amount=amount)

    @command
    def post_pair(self) -> None:
        """Two events of one command (a debit and its credit)."""
        self.record("Posted", amount=-1)
        self.record("Posted", amount=1)

    @apply("Posted")
    def _posted(self, event: Event) -> None:
        self.entries += 1
