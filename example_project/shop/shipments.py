"""The shop's shipments: the ``Shipment`` aggregate (namespace ``shipments``) a paid order gets.

Its own module, beside ``aggregates.py`` (the order, which docs/aggregates.md shows
whole). It is registered when it is imported, and ``projections.py``, which every
process imports when Django starts (autodiscovered), imports it: the shop's process
managers (projections.py) tie it to the order. An order's payment starts its
shipment, and the shipment's dispatch ships the order. The rules below refuse
invalid transitions with ShipmentError (a DomainError).
"""

from __future__ import annotations

from aether_django.aggregates import Aggregate, DomainError, apply, command
from aether_django.events import Event


class ShipmentError(DomainError):
    """A shipment command broke one of the shipment's rules."""


class Shipment(Aggregate):
    """The shipment of one order: new → preparing → dispatched → delivered.

    Its actor id is the order's (``Shipment.objects.get(order_id)``), in the namespace
    ``shipments``. The ``StartShipments`` process manager starts it when the order is
    paid; dispatching it makes ``ShipDispatchedOrders`` ship the order.
    """

    status: str = "new"
    order_id: str = ""

    class Meta:
        namespace = "shipments"
        snapshot_every = 20

    @command
    def start(self, order_id: str) -> None:
        if self.status != "new":
            raise ShipmentError(f"the shipment is already {self.status}")
        if not order_id.strip():
            raise ShipmentError("a shipment needs an order")
        self.record("ShipmentStarted", order_id=order_id)

    @command
    def dispatch(self) -> None:
        if self.status != "preparing":
            raise ShipmentError(
                f"only a shipment being prepared can be dispatched, not a {self.status} one"
            )
        self.record("ShipmentDispatched", order_id=self.order_id)

    @command
    def deliver(self) -> None:
        if self.status != "dispatched":
            raise ShipmentError(
                f"only a dispatched shipment can be delivered, not a {self.status} one"
            )
        self.record("ShipmentDelivered", order_id=self.order_id)

    @apply("ShipmentStarted")
    def _started(self, event: Event) -> None:
        self.status = "preparing"
        self.order_id = event.data["order_id"]

    @apply("ShipmentDispatched")
    def _dispatched(self, event: Event) -> None:
        self.status = "dispatched"

    @apply("ShipmentDelivered")
    def _delivered(self, event: Event) -> None:
        self.status = "delivered"
