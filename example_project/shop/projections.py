"""The shop's projections (autodiscovered): the ``orders`` events into OrderSummary rows,
and the two process managers of an order's fulfilment.

``StartShipments`` reacts to an order's payment by starting its shipment (namespace
``shipments``, same actor id); ``ShipDispatchedOrders`` reacts to a shipment's dispatch
by shipping its order. Two, because each reads one namespace (``Meta.source``).

Handlers read the event data defensively. The events page can append any event to
any actor of ``orders`` (that is its purpose), and such a history is one the Order
aggregate refuses to replay; the list then shows what the events say as far as it
can (a line added to an order that was never placed is passed over, a field of the
wrong type counts as 0 or "") instead of stopping the projection at that event,
which would freeze the list for every order after it.
"""

from __future__ import annotations

import logging
from typing import Any

from aether_django.events import Event
from aether_django.projections import (
    ProcessContext,
    ProcessManager,
    Projection,
    ProjectionContext,
    on,
)

from .aggregates import Order, OrderError
from .models import OrderSummary
from .shipments import Shipment, ShipmentError

logger = logging.getLogger(__name__)


def _int(value: Any) -> int:
    """``value`` when it is a whole number (not a bool), else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class OrderSummaryProjection(Projection):
    """One OrderSummary row per order of the ``orders`` namespace."""

    class Meta:
        source = Order._meta.namespace
        models = [OrderSummary]
        # The checkpoints' key; stays the same if the class moves.
        name = "shop.order-summary"

    def _rows(self, event: Event, context: ProjectionContext) -> Any:
        return OrderSummary.objects.using(context.database).filter(order_id=event.actor_id)

    def _set(self, event: Event, context: ProjectionContext, **fields: Any) -> None:
        """Update the order's row with ``fields``, its version and its last event's time."""
        self._rows(event, context).update(
            version=event.version, updated_at=event.timestamp, **fields
        )

    @on("OrderPlaced")
    def placed(self, event: Event, context: ProjectionContext) -> None:
        customer = event.data.get("customer")
        OrderSummary.objects.using(context.database).update_or_create(
            order_id=event.actor_id,
            defaults={
                "customer": customer.strip() if isinstance(customer, str) else "",
                "status": "placed",
                "version": event.version,
                "placed_at": event.timestamp,
                "updated_at": event.timestamp,
            },
        )

    @on("LineAdded")
    def line_added(self, event: Event, context: ProjectionContext) -> None:
        row = self._rows(event, context).first()
        if row is None:  # appended by hand to an order never placed
            return
        row.line_count += 1
        row.total_cents += _int(event.data.get("quantity")) * _int(event.data.get("price_cents"))
        row.version = event.version
        row.updated_at = event.timestamp
        row.save(update_fields=["line_count", "total_cents", "version", "updated_at"])

    @on("OrderPaid")
    def paid(self, event: Event, context: ProjectionContext) -> None:
        self._set(event, context, status="paid")

    @on("OrderShipped")
    def shipped(self, event: Event, context: ProjectionContext) -> None:
        self._set(event, context, status="shipped")

    @on("OrderCancelled")
    def cancelled(self, event: Event, context: ProjectionContext) -> None:
        self._set(event, context, status="cancelled")


class StartShipments(ProcessManager):
    """An order's payment starts its shipment (``Shipment.start``, same actor id)."""

    class Meta:
        source = Order._meta.namespace
        name = "shop.start-shipments"

    @on("OrderPaid")
    def paid(self, event: Event, context: ProcessContext) -> None:
        try:
            context.send(Shipment, event.actor_id, "start", create=True, order_id=event.actor_id)
        except ShipmentError as exc:
            # A shipment started before the payment (by hand) is the order's shipment:
            # the refusal is expected, not a reason to stop the process.
            logger.info("order %s: its shipment was not started again: %s", event.actor_id, exc)


class ShipDispatchedOrders(ProcessManager):
    """A shipment's dispatch ships its order (``Order.ship``)."""

    class Meta:
        source = Shipment._meta.namespace
        name = "shop.ship-dispatched-orders"

    @on("ShipmentDispatched")
    def dispatched(self, event: Event, context: ProcessContext) -> None:
        order_id = event.data.get("order_id")
        if not isinstance(order_id, str) or not order_id:
            order_id = event.actor_id
        try:
            context.send(Order, order_id, "ship")
        except (OrderError, Order.DoesNotExist) as exc:
            # The order was cancelled (or shipped by hand) after its payment, or never
            # existed (a shipment started by hand): nothing to ship. Logged, and the
            # process goes on with the next shipment.
            logger.warning("shipment %s: order %s not shipped: %s", event.actor_id, order_id, exc)
