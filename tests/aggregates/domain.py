"""A small order domain used by the aggregate tests."""

from __future__ import annotations

from aether_django.aggregates import Aggregate, DomainError, apply, evolve, upcaster
from aether_django.events import Event


class OrderError(DomainError):
    """An order command broke a rule."""


class Order(Aggregate):
    status: str = "new"
    customer: str | None = None
    lines: list = []
    total: int = 0

    class Meta:
        namespace = "test-orders"
        event_schemas = {"LineAdded": 2}

    # --- commands ---
    def place(self, customer: str) -> None:
        if self.status != "new":
            raise OrderError(f"cannot place an order that is {self.status}")
        self.record("OrderPlaced", customer=customer)

    def add_line(self, sku: str, qty: int, price: int) -> None:
        if self.status != "placed":
            raise OrderError(f"cannot add lines to an order that is {self.status}")
        if qty <= 0:
            raise OrderError("quantity must be positive")
        self.record("LineAdded", sku=sku, qty=qty, price=price)

    def pay(self) -> None:
        if self.status != "placed" or not self.lines:
            raise OrderError(
                f"cannot pay an order that is {self.status} with {len(self.lines)} lines"
            )
        self.record("OrderPaid", amount=self.total)

    def ship(self) -> None:
        if self.status != "paid":
            raise OrderError(f"cannot ship an order that is {self.status}")
        self.record("OrderShipped")

    def cancel(self, reason: str = "") -> None:
        if self.status in ("shipped", "cancelled"):
            raise OrderError(f"cannot cancel an order that is {self.status}")
        self.record("OrderCancelled", reason=reason)

    # --- handlers ---
    @apply("OrderPlaced")
    def _placed(self, event: Event) -> None:
        self.status = "placed"
        self.customer = event.data["customer"]

    @apply("LineAdded")
    def _line_added(self, event: Event) -> None:
        line = {"sku": event.data["sku"], "qty": event.data["qty"], "price": event.data["price"]}
        self.lines.append(line)
        self.total += line["qty"] * line["price"]

    @apply("OrderPaid")
    def _paid(self, event: Event) -> None:
        self.status = "paid"

    @apply("OrderShipped")
    def _shipped(self, event: Event) -> None:
        self.status = "shipped"

    @apply("OrderCancelled")
    def _cancelled(self, event: Event) -> None:
        self.status = "cancelled"

    # --- schema evolution: version 1 called it ItemAdded with "product" and "count" ---
    @upcaster("ItemAdded", schema=1)
    def _item_added_v1(event: Event) -> Event:  # type: ignore[misc]
        data = event.data
        return evolve(
            event,
            event_type="LineAdded",
            schema=2,
            data={"sku": data["product"], "qty": data["count"], "price": data.get("price", 0)},
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
