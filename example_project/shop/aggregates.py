"""The shop's domain: an order that is placed, gets lines, is paid, shipped or cancelled.

Built on aether_django.aggregates; the rules below refuse invalid transitions
with OrderError (a DomainError), never with a storage error.
"""

from __future__ import annotations

from aether_django.aggregates import Aggregate, DomainError, apply, command
from aether_django.events import Event


class OrderError(DomainError):
    """An order command broke one of the order's rules."""


class Order(Aggregate):
    """An order: new → placed → paid → shipped, or cancelled before shipping."""

    status: str = "new"
    customer: str = ""
    lines: list[dict[str, object]] = []
    total_cents: int = 0
    cancel_reason: str = ""

    class Meta:
        namespace = "orders"
        snapshot_every = 20

    # --- commands (@command: other nodes may run them by name) ------------------
    @command
    def place(self, customer: str) -> None:
        if self.status != "new":
            raise OrderError(f"the order is already {self.status}")
        if not customer.strip():
            raise OrderError("an order needs a customer")
        self.record("OrderPlaced", customer=customer.strip())

    @command
    def add_line(self, sku: str, quantity: int, price_cents: int) -> None:
        if self.status != "placed":
            raise OrderError(f"lines can only be added to a placed order, not a {self.status} one")
        if not sku.strip():
            raise OrderError("a line needs a SKU")
        if quantity <= 0:
            raise OrderError("the quantity must be at least 1")
        if price_cents < 0:
            raise OrderError("the price cannot be negative")
        self.record("LineAdded", sku=sku.strip(), quantity=quantity, price_cents=price_cents)

    @command
    def pay(self) -> None:
        if self.status != "placed":
            raise OrderError(f"only a placed order can be paid, not a {self.status} one")
        if not self.lines:
            raise OrderError("an order without lines cannot be paid")
        self.record("OrderPaid", amount_cents=self.total_cents)

    @command
    def ship(self) -> None:
        if self.status != "paid":
            raise OrderError(f"only a paid order can be shipped, not a {self.status} one")
        self.record("OrderShipped")

    @command
    def cancel(self, reason: str = "") -> None:
        if self.status in ("shipped", "cancelled"):
            raise OrderError(f"a {self.status} order cannot be cancelled")
        if self.status == "new":
            raise OrderError("an order that was never placed cannot be cancelled")
        self.record("OrderCancelled", reason=reason)

    # --- handlers ---------------------------------------------------------------
    @apply("OrderPlaced")
    def _placed(self, event: Event) -> None:
        self.status = "placed"
        self.customer = event.data["customer"]

    @apply("LineAdded")
    def _line_added(self, event: Event) -> None:
        data = event.data
        self.lines.append(
            {"sku": data["sku"], "quantity": data["quantity"], "price_cents": data["price_cents"]}
        )
        self.total_cents += data["quantity"] * data["price_cents"]

    @apply("OrderPaid")
    def _paid(self, event: Event) -> None:
        self.status = "paid"

    @apply("OrderShipped")
    def _shipped(self, event: Event) -> None:
        self.status = "shipped"

    @apply("OrderCancelled")
    def _cancelled(self, event: Event) -> None:
        self.status = "cancelled"
        self.cancel_reason = event.data.get("reason", "")
