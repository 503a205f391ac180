"""The aggregates the tests use: the example shop's Order in a test namespace, and a Counter."""

from __future__ import annotations

from aether_django.aggregates import Aggregate, apply, evolve, upcaster
from aether_django.events import Event
from example_project.shop.aggregates import Order as ShopOrder
from example_project.shop.aggregates import OrderError

__all__ = ["Counter", "Order", "OrderError"]


class Order(ShopOrder):
    """The shop's order, plus an upcaster for the shape an older release wrote."""

    class Meta:
        namespace = "test-orders"
        event_schemas = {"LineAdded": 2}

    # Version 1 called it ItemAdded, with "product", "count" and "price".
    @upcaster("ItemAdded", schema=1)
    def _item_added_v1(event: Event) -> Event:  # type: ignore[misc]
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

    def increment(self, by: str) -> None:
        self.record("Incremented", by=by)

    @apply("Incremented")
    def _incremented(self, event: Event) -> None:
        self.count += 1
        self.seen.append(event.data["by"])
