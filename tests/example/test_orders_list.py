"""The orders list, read from the OrderSummary read model while the shop's
OrderSummaryProjection runs (a ProjectionRunner in a thread of this process, on the
session's nats-server): read-your-writes after the page's commands, the filters, the
pages, and histories appended by hand.

The orders namespace is shared by every test of the session, and each test's runner
catches up on all of it (the database starts empty): a test looks at its own
customers only.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client

from aether_django.events import Event
from aether_django.models import ProjectionCheckpoint
from aether_django.projections.runner import ProjectionRunner
from example_project.shop import order_views
from example_project.shop.aggregates import Order
from example_project.shop.models import OrderSummary
from example_project.shop.projections import OrderSummaryProjection

from .test_orders_page import command, create, new_id, text, url

pytestmark = [pytest.mark.django_db(transaction=True)]
Runners = Callable[..., ProjectionRunner]


def customer() -> str:
    return f"Cust {uuid.uuid4().hex[:8]}"


def listed(client: Client, **query: Any) -> list[str]:
    """The order ids of the list's page, as links, in order."""
    response = client.get("/orders/", query)
    assert response.status_code == 200, text(response)
    return re.findall(r'<td class="mono"><a href="/orders/[^"]+/">([^<]+)</a></td>', text(response))


def placed_orders(who: str, count: int, paid: int = 0) -> list[str]:
    """``count`` orders of ``who`` made without the page, the first ``paid`` paid; waits
    for the list to show them. Oldest first."""
    made = []
    order = None
    for i in range(count):
        order = Order.objects.create(new_id())
        order.place(who)
        order.add_line("sku", 1, 100 * (i + 1))
        if i < paid:
            order.pay()
        order.save()
        made.append(str(order.actor_id))
    assert order is not None
    OrderSummaryProjection.wait_for(order, timeout=30)
    return made


def test_the_list_shows_each_command_at_once(client: Client, runners: Runners) -> None:
    runners(OrderSummaryProjection)
    who = customer()
    actor_id = new_id()
    response = create(client, actor_id, who)
    assert response.status_code == 302
    # The view waited for the projection: no "behind" in the redirect.
    assert parse_qs(urlsplit(response["Location"]).query) == {"done": ["place"]}
    assert "may be behind" not in text(client.get(response["Location"]))
    # The very next request lists it.
    assert listed(client, customer=who) == [actor_id]

    for name, fields in (
        ("add_line", {"sku": "book", "quantity": "2", "price_cents": "1250"}),
        ("add_line", {"sku": "pen", "quantity": "3", "price_cents": "199"}),
        ("pay", {}),
    ):
        response = command(client, actor_id, name, **fields)
        assert response.status_code == 302
        assert "behind" not in response["Location"]
    body = text(client.get("/orders/", {"customer": who}))
    row = body[body.index(f'<a href="{url(actor_id)}">{actor_id}</a>') :]
    row = row[: row.index("</tr>")]
    for cell in ("paid", f"<td>{who}</td>", '"num">2<', '"num">30.97<', '"num">4<'):
        assert cell in row, row

    # The row holds what the events say, their timestamps included.
    events = Order.get_store().get_events(actor_id)
    summary = OrderSummary.objects.get(order_id=actor_id)
    assert (summary.customer, summary.status, summary.line_count) == (who, "paid", 2)
    assert (summary.total_cents, summary.version) == (3097, 4)
    assert (summary.placed_at, summary.updated_at) == (events[0].timestamp, events[-1].timestamp)


def test_a_command_the_projection_does_not_apply_in_time_still_answers(
    client: Client, runners: Runners, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = runners(OrderSummaryProjection)
    actor_id = placed_orders(customer(), 1)[0]
    # The projection stops (as when its node is down): the command is saved, the
    # page answers after the wait and says the list may be behind.
    runner.stop()
    monkeypatch.setattr(order_views, "PROJECTION_WAIT", 0.3)
    response = command(client, actor_id, "pay")
    assert response.status_code == 302
    assert parse_qs(urlsplit(response["Location"]).query) == {"done": ["pay"], "behind": ["1"]}
    body = text(client.get(response["Location"]))
    assert "Order paid." in body and "may be behind" in body
    assert OrderSummary.objects.get(order_id=actor_id).status == "placed"
    # Started again, it catches up: the list shows the payment.
    runners(OrderSummaryProjection)
    OrderSummaryProjection.wait_for(Order.objects.get(actor_id), timeout=30)
    assert OrderSummary.objects.get(order_id=actor_id).status == "paid"


def test_filters_and_pages(client: Client, runners: Runners, monkeypatch) -> None:
    runners(OrderSummaryProjection)
    monkeypatch.setattr(order_views, "ORDERS_PER_PAGE", 2)
    who = customer()
    made = placed_orders(who, 5, paid=2)
    newest_first = made[::-1]

    # Numbered pages, newest first; the links keep the filter.
    body = text(client.get("/orders/", {"customer": who}))
    assert "Page 1 of 3 (5 orders)" in body
    assert f'href="?customer={who.replace(" ", "+")}&page=2" rel="next"' in body
    assert 'rel="prev"' not in body
    pages = [listed(client, customer=who, page=n) for n in (1, 2, 3)]
    assert [order for page in pages for order in page] == newest_first
    assert 'rel="prev"' in text(client.get("/orders/", {"customer": who, "page": "3"}))
    # A page past the end shows the last one; one that is no number the first one.
    assert listed(client, customer=who, page=99) == pages[2]
    assert listed(client, customer=who, page="x") == pages[0]

    # Status and customer (a part of the name, in any case) together.
    assert listed(client, customer=who.upper(), status="paid") == made[1::-1]
    assert listed(client, customer=who, status="shipped") == []
    assert "No orders match these filters." in text(
        client.get("/orders/", {"customer": who, "status": "shipped"})
    )
    # A status that is not one: 400, the form says so, nothing listed.
    response = client.get("/orders/", {"customer": who, "status": "refunded"})
    assert response.status_code == 400
    body = text(response)
    assert "The orders were not listed: correct the filters marked below." in body
    assert "Select a valid choice. refunded is not one of the available choices." in body
    assert made[0] not in body


def test_histories_appended_by_hand_do_not_stop_the_list(client: Client, runners) -> None:
    """The events page appends anything: the projection reads what it can and goes on."""
    store = Order.get_store()
    odd, stray = new_id("typed-by-hand"), new_id("stray")
    who = customer()
    # An OrderPlaced without a customer, then a line whose fields are of the wrong type.
    store.save_event(Event(event_type="OrderPlaced", actor_id=odd, version=1, data={"a": 3}))
    store.save_event(
        Event(
            event_type="LineAdded",
            actor_id=odd,
            version=2,
            data={"sku": "x", "quantity": "two", "price_cents": 5},
        )
    )
    # A line of an order never placed.
    store.save_event(Event(event_type="LineAdded", actor_id=stray, version=1, data={}))
    runners(OrderSummaryProjection)
    good = placed_orders(who, 1)[0]

    summary = OrderSummary.objects.get(order_id=odd)
    assert (summary.customer, summary.status, summary.line_count) == ("", "placed", 1)
    assert (summary.total_cents, summary.version) == (0, 2)
    assert not OrderSummary.objects.filter(order_id=stray).exists()
    assert listed(client, customer=who) == [good]
    checkpoint = ProjectionCheckpoint.objects.get(projection="shop.order-summary")
    assert (checkpoint.state, checkpoint.last_error) == ("running", "")
