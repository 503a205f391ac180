"""The shop's fulfilment: an order's payment starts its Shipment (StartShipments), the
shipment's dispatch ships the order (ShipDispatchedOrders), shown on the order's page.

The process managers run in a ProjectionRunner in a thread of this process, on the
session's nats-server, as the orders list's projection does in test_orders_list.py.
Each test's database starts empty, so the runner catches up on the whole session's
``orders`` and ``shipments`` namespaces: every command it issues again for an earlier
test's event is found done by its command id, and the tests look at their own orders.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client

from aether_django.correlation import CAUSATION_KEY, CORRELATION_KEY
from aether_django.models import ProjectionCheckpoint
from aether_django.projections.runner import ProjectionRunner
from example_project.shop import order_views
from example_project.shop.aggregates import Order
from example_project.shop.projections import (
    OrderSummaryProjection,
    ShipDispatchedOrders,
    StartShipments,
)
from example_project.shop.shipments import Shipment

from .test_orders_page import command, create, new_id, text

pytestmark = [pytest.mark.django_db(transaction=True)]
Runners = Callable[..., ProjectionRunner]


def paid_order() -> Order:
    """A paid order made without the page."""
    order: Order = Order.objects.create(new_id())
    order.place("Ann")
    order.add_line("book", 2, 1250)
    order.pay()
    order.save()
    return order


def test_payment_starts_the_shipment_and_its_dispatch_ships_the_order(
    client: Client, runners: Runners
) -> None:
    runners(OrderSummaryProjection, StartShipments, ShipDispatchedOrders)
    actor_id = new_id()
    assert create(client, actor_id).status_code == 302
    command(client, actor_id, "add_line", sku="book", quantity="2", price_cents="1250")
    body = text(client.get(f"/orders/{actor_id}/"))
    assert "None: the process manager <code>shop.start-shipments</code> starts the order's" in body

    assert command(client, actor_id, "pay").status_code == 302
    paid = Order.objects.get(actor_id)
    StartShipments.wait_for(paid, timeout=30)
    shipment = Shipment.objects.get(actor_id)
    assert (shipment.status, shipment.order_id, shipment.version) == ("preparing", actor_id, 1)
    body = text(client.get(f"/orders/{actor_id}/"))
    assert '<span class="badge preparing">preparing</span>' in body
    assert 'value="dispatch">Dispatch</button>' in body

    response = command(client, actor_id, "dispatch")
    assert response.status_code == 302
    # The view waited for the process manager and then for the list.
    assert parse_qs(urlsplit(response["Location"]).query) == {"done": ["dispatch"]}
    body = text(client.get(response["Location"]))
    assert "Shipment dispatched." in body
    assert '<span class="badge shipped">shipped</span>' in body
    assert '<span class="badge dispatched">dispatched</span>' in body
    assert 'value="deliver">Deliver</button>' in body
    assert Order.objects.get(actor_id).status == "shipped"
    assert text(client.get("/orders/", {"status": "shipped"})).count(actor_id) >= 1

    response = command(client, actor_id, "deliver")
    assert parse_qs(urlsplit(response["Location"]).query) == {"done": ["deliver"]}
    assert Shipment.objects.get(actor_id).status == "delivered"

    # Each step's events are caused by the one before, across the two aggregates.
    order_events = Order.get_store().get_events(actor_id)
    shipment_events = Shipment.get_store().get_events(actor_id)
    paid_event = next(e for e in order_events if e.event_type == "OrderPaid")
    started, dispatched, _ = shipment_events
    shipped = order_events[-1]
    assert shipped.event_type == "OrderShipped"
    assert started.metadata[CAUSATION_KEY] == paid_event.id
    assert started.metadata[CORRELATION_KEY] == paid_event.metadata[CORRELATION_KEY]
    assert started.command_id == f"shop.start-shipments:{paid_event.id}"
    assert shipped.metadata[CAUSATION_KEY] == dispatched.id
    assert shipped.metadata[CORRELATION_KEY] == dispatched.metadata[CORRELATION_KEY]
    assert shipped.command_id == f"shop.ship-dispatched-orders:{dispatched.id}"


def test_a_dispatch_whose_order_is_not_shipped_in_time_says_so(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No process manager runs: the dispatch is saved and the page says the order is
    not shipped yet."""
    order = paid_order()
    Shipment.objects.update(order.actor_id, lambda s: s.start(order.actor_id), create=True)
    monkeypatch.setattr(order_views, "PROJECTION_WAIT", 0.2)
    response = command(client, order.actor_id, "dispatch")
    assert parse_qs(urlsplit(response["Location"]).query) == {
        "done": ["dispatch"],
        "pending": ["ship"],
    }
    body = text(client.get(response["Location"]))
    assert (
        "The order is shipped by the process manager <code>shop.ship-dispatched-orders</code>"
        in body
    )
    assert Order.objects.get(order.actor_id).status == "paid"


def test_shipment_commands_the_shipment_refuses(client: Client, monkeypatch) -> None:
    monkeypatch.setattr(order_views, "PROJECTION_WAIT", 0.0)
    order = paid_order()
    # No shipment yet: said, nothing saved.
    response = command(client, order.actor_id, "dispatch")
    assert response.status_code == 404
    assert "has no shipment yet: shop.start-shipments starts one once the order is paid" in (
        text(response)
    )
    assert "Not started yet: the process manager <code>shop.start-shipments</code>" in text(
        response
    )
    assert not Shipment.objects.exists(order.actor_id)
    # Delivering a shipment not dispatched: the shipment's rule refuses it.
    Shipment.objects.update(order.actor_id, lambda s: s.start(order.actor_id), create=True)
    response = command(client, order.actor_id, "deliver")
    assert response.status_code == 400
    assert "Refused: Only a dispatched shipment can be delivered, not a preparing one" in (
        text(response)
    )
    assert Shipment.objects.get(order.actor_id).version == 1


def test_a_dispatch_of_a_cancelled_order_is_logged_and_the_process_goes_on(
    runners: Runners, caplog: pytest.LogCaptureFixture
) -> None:
    runners(StartShipments, ShipDispatchedOrders)
    cancelled, kept = paid_order(), paid_order()
    StartShipments.wait_for(kept, timeout=30)
    Order.objects.update(cancelled.actor_id, lambda o: o.cancel("changed my mind"))
    with caplog.at_level(logging.WARNING, logger="example_project.shop.projections"):
        first = Shipment.objects.update(cancelled.actor_id, lambda s: s.dispatch())
        second = Shipment.objects.update(kept.actor_id, lambda s: s.dispatch())
        ShipDispatchedOrders.wait_for(second, timeout=30)
    assert ShipDispatchedOrders._meta.name == "shop.ship-dispatched-orders"
    # The order's refusal is the process manager's decision: logged, not a stop.
    assert Order.objects.get(cancelled.actor_id).status == "cancelled"
    assert Order.objects.get(kept.actor_id).status == "shipped"
    assert f"order {cancelled.actor_id} not shipped" in caplog.text
    assert first.version == 2
    states = set(
        ProjectionCheckpoint.objects.filter(projection=ShipDispatchedOrders._meta.name).values_list(
            "state", flat=True
        )
    )
    assert states == {"running"}
