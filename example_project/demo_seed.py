"""Seed the demo with a few orders: ``python -m example_project.demo_seed``.

Run by ``python3 dev.py demo`` once uvicorn answers, in a child process with the
demo's environment (its ``AETHER_NATS_URL``). Places a few ``Order`` aggregates in
the ``orders`` namespace, adds lines, pays some and cancels one; does nothing when the
namespace has orders already, so a restarted demo keeps its data as it was.

A paid order gets its ``Shipment`` from the ``StartShipments`` process manager; the
seed waits a little for that to happen to ``order-1`` and dispatches its shipment, and
``ShipDispatchedOrders`` then ships the order. Where the process managers do not run,
it says so and leaves ``order-1`` paid.

The orders page and ``/api/shop/orders/`` list the ``OrderSummary`` read model, which
``OrderSummaryProjection`` fills from these events wherever it runs (the demo's
Celery worker node, or ``manage.py aether_projections run``). It reads the namespace
from its start, so the seeded orders are listed whether they were saved before or
after it started. The seed waits a little for the list to show them, and says
whether it does.
"""

from __future__ import annotations

import os
import sys

import django

#: Seconds the seed waits for the orders list (the projection) to show its orders.
LIST_WAIT = 15.0

# (actor id, customer, lines as (sku, quantity, price in cents), what happens next)
ORDERS: list[tuple[str, str, list[tuple[str, int, int]], tuple[str, ...]]] = [
    ("order-1", "Ann", [("book-42", 2, 1250), ("pen-7", 3, 199)], ("pay",)),
    ("order-2", "Bob", [("mug-3", 1, 899)], ("pay",)),
    ("order-3", "Cleo", [("lamp-11", 1, 3499), ("bulb-2", 4, 350)], ()),
    ("order-4", "Dan", [("chair-5", 2, 4999)], ("cancel",)),
]


def seed() -> list[str]:
    """Create the demo's orders unless the namespace has some; return the ids created."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    django.setup()
    from example_project.shop.aggregates import Order

    if Order.objects.actor_ids():
        return []

    def command(actor_id: str, name: str, *args: object, create: bool = False) -> None:
        def run(order: Order) -> None:
            getattr(order, name)(*args)

        Order.objects.update(actor_id, run, create=create)

    created = []
    for actor_id, customer, lines, then in ORDERS:
        command(actor_id, "place", customer, create=True)
        for sku, quantity, price in lines:
            command(actor_id, "add_line", sku, quantity, price)
        for step in then:
            command(actor_id, step, *(["changed my mind"] if step == "cancel" else []))
        created.append(actor_id)
    return created


#: Orders whose shipment the seed dispatches once StartShipments has started it.
DISPATCHED = ["order-1"]


def dispatch(actor_ids: list[str], timeout: float = LIST_WAIT) -> str:
    """Dispatch the shipments of ``actor_ids`` once StartShipments has started them
    (it reacts to each order's payment); the sentence to print about it."""
    from aether_django.errors import AetherError, ProjectionTimeoutError
    from example_project.shop.aggregates import Order
    from example_project.shop.projections import ShipDispatchedOrders, StartShipments
    from example_project.shop.shipments import Shipment

    for actor_id in actor_ids:
        try:
            StartShipments.wait_for(Order.objects.get(actor_id), timeout=timeout)
            Shipment.objects.update(actor_id, lambda s: s.dispatch())
        except ProjectionTimeoutError:
            return (
                f"The shipment of {actor_id} is not started yet: the process manager "
                f"{StartShipments._meta.name} starts it once it runs (in a cluster node, or "
                "with `python manage.py aether_projections run`); dispatch it on the order's "
                "page then."
            )
        except AetherError as exc:
            return f"The shipment of {actor_id} was not dispatched: {exc}"
    return (
        f"Dispatched the shipment of {', '.join(actor_ids)}; {ShipDispatchedOrders._meta.name} "
        "ships the order."
    )


def wait_for_the_list(created: list[str], timeout: float = LIST_WAIT) -> str:
    """Wait until the orders list (OrderSummaryProjection) shows the seeded orders'
    last events; the sentence to print about it."""
    from aether_django.errors import ProjectionTimeoutError
    from example_project.shop.aggregates import Order
    from example_project.shop.projections import OrderSummaryProjection

    last = Order.objects.get(created[-1])  # saved last: the others come before it
    try:
        OrderSummaryProjection.wait_for(last, timeout=timeout)
    except ProjectionTimeoutError as exc:
        return (
            f"The orders list does not show them yet ({exc}). It shows them once the "
            "projection runs: in a cluster node (AETHER['PROJECTIONS_IN_NODES']), or "
            "with `python manage.py aether_projections run`."
        )
    return "The orders list shows them (OrderSummaryProjection has applied their events)."


def main() -> int:
    created = seed()
    if created:
        print(f"Seeded the orders namespace with {', '.join(created)}.", flush=True)
        # The waits read LIST_WAIT now (a test shortens it).
        print(dispatch(DISPATCHED, LIST_WAIT), flush=True)
        print(wait_for_the_list(created, LIST_WAIT), flush=True)
    else:
        print("The orders namespace has orders already; not seeding.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
