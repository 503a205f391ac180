"""The example project's orders page, through Django's test client, on the session's nats-server.

Every test uses its own order ids; the orders all live in the shop's namespace. No
projection runs here, so a command waits for the orders list not at all (see
test_orders_list.py for the list, fed by a running projection).
"""

from __future__ import annotations

import html
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client

from aether_django.errors import StoreUnavailableError, VersionConflictError
from aether_django.events import Event
from example_project.shop import order_views
from example_project.shop.aggregates import Order

# The pages read the read model and the projection's checkpoint from the database.
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_wait_for_the_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """No projection runs: commands give up waiting for the list at once."""
    monkeypatch.setattr(order_views, "PROJECTION_WAIT", 0.0)


def new_id(prefix: str = "order") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def url(actor_id: str) -> str:
    return f"/orders/{actor_id}/"


def text(response: Any) -> str:
    """The response body with HTML entities decoded and runs of white space made one space."""
    return " ".join(html.unescape(response.content.decode()).split())


def create(client: Client, actor_id: str, customer: str = "Ann") -> Any:
    return client.post("/orders/", {"order_id": actor_id, "customer": customer})


def command(client: Client, actor_id: str, name: str, **fields: Any) -> Any:
    return client.post(url(actor_id), {"command": name, **fields})


def event_types(actor_id: str) -> list[str]:
    return [event.event_type for event in Order.get_store().get_events(actor_id)]


def placed(customer: str = "Ann", lines: int = 0) -> str:
    """A placed order with ``lines`` lines of 2 x 5.00, made without the page."""
    order = Order.objects.create(new_id())
    order.place(customer)
    for i in range(lines):
        order.add_line(f"sku-{i}", 2, 500)
    order.save()
    return str(order.actor_id)


def test_create_add_lines_pay_and_ship(client: Client) -> None:
    actor_id = new_id()
    response = create(client, actor_id, "  Ann  ")
    assert response.status_code == 302
    assert urlsplit(response["Location"]).path == url(actor_id)
    # Saved; the list did not show it in time (no projection runs), which is said.
    assert parse_qs(urlsplit(response["Location"]).query) == {
        "done": ["place"],
        "behind": ["1"],
    }

    body = text(client.get(response["Location"]))
    assert f"Order placed. {actor_id} is at version 1." in body
    assert "may be behind: it did not show this change" in body
    assert "<dd>placed</dd>" in body and "<dd>Ann</dd>" in body

    response = command(client, actor_id, "add_line", sku="book", quantity="2", price_cents="1250")
    assert response.status_code == 302
    assert response["Location"] == f"{url(actor_id)}?done=add_line&behind=1"
    command(client, actor_id, "add_line", sku="pen", quantity="3", price_cents="199")
    assert command(client, actor_id, "pay").status_code == 302
    response = command(client, actor_id, "ship")
    assert response.status_code == 302

    response = client.get(response["Location"])
    assert response.status_code == 200
    body = text(response)
    assert f"Order shipped. {actor_id} is at version 5." in body
    assert "<dd>shipped</dd>" in body
    assert "30.97" in body  # 2 x 12.50 + 3 x 1.99
    assert '<td class="mono">book</td>' in body and '<td class="mono">pen</td>' in body
    # The timeline lists every event, each with a link to the state after it.
    for version in range(1, 6):
        assert f'href="?at_version={version}"' in body
    assert event_types(actor_id) == [
        "OrderPlaced",
        "LineAdded",
        "LineAdded",
        "OrderPaid",
        "OrderShipped",
    ]
    order = Order.objects.get(actor_id)
    assert (order.status, order.total_cents, order.version) == ("shipped", 3097, 5)


def test_a_refused_transition_shows_the_domain_error_and_stores_nothing(client: Client) -> None:
    actor_id = placed(lines=1)
    response = command(client, actor_id, "ship")
    assert response.status_code == 400
    body = text(response)
    assert "Refused: Only a paid order can be shipped, not a placed one. Nothing was saved." in body
    # The page still shows the order as it is.
    assert "<dd>placed</dd>" in body
    assert event_types(actor_id) == ["OrderPlaced", "LineAdded"]

    response = command(client, actor_id, "add_line", sku="x", quantity="0", price_cents="100")
    assert response.status_code == 400
    assert "Refused: The quantity must be at least 1." in text(response)
    assert Order.objects.get(actor_id).version == 2


def test_paying_an_order_without_lines_is_refused(client: Client) -> None:
    actor_id = placed()
    response = command(client, actor_id, "pay")
    assert response.status_code == 400
    assert "An order without lines cannot be paid" in text(response)
    assert event_types(actor_id) == ["OrderPlaced"]


def test_cancel_with_a_reason(client: Client) -> None:
    actor_id = placed(lines=1)
    response = command(client, actor_id, "cancel", reason="changed my mind")
    assert response.status_code == 302
    body = text(client.get(response["Location"]))
    assert "Order cancelled." in body
    assert "<dd>changed my mind</dd>" in body
    response = command(client, actor_id, "cancel", reason="again")
    assert response.status_code == 400
    assert "A cancelled order cannot be cancelled" in text(response)


def test_unknown_order_is_404(client: Client) -> None:
    actor_id = new_id()
    response = client.get(url(actor_id))
    assert response.status_code == 404
    assert f"There is no order '{actor_id}': it has no events." in text(response)

    response = command(client, actor_id, "pay")
    assert response.status_code == 404
    assert "There is no order" in text(response)
    assert not Order.objects.exists(actor_id)


def test_invalid_actor_id_is_400(client: Client) -> None:
    response = client.get("/orders/bell%07/")
    assert response.status_code == 400
    assert "Actor id 'bell\\x07' contains non-printable characters" in text(response)

    response = command(client, "bell\x07", "pay")
    assert response.status_code == 400

    response = client.get(url("x" * 256))
    assert response.status_code == 400
    assert "Actor id is 256 characters; at most 255 allowed" in text(response)

    response = create(client, "bell\x07")
    assert response.status_code == 400
    assert "Actor id 'bell\\x07' contains non-printable characters" in text(response)


def test_actor_ids_with_slashes_and_spaces_have_a_page(client: Client) -> None:
    actor_id = f"shop a/{uuid.uuid4().hex[:12]}"
    response = create(client, actor_id)
    assert response.status_code == 302
    response = client.get(response["Location"])
    assert response.status_code == 200
    assert f"Order <code>{actor_id}</code>" in text(response)


def test_at_version_shows_the_past_state(client: Client) -> None:
    actor_id = placed(lines=2)
    assert command(client, actor_id, "pay").status_code == 302

    response = client.get(url(actor_id), {"at_version": "1"})
    assert response.status_code == 200
    body = text(response)
    assert "You are looking at the order as of version 1" in body
    assert "it is now at version 4" in body
    assert "<dd>placed</dd>" in body
    assert "No lines at this version." in body
    assert "<h2>Commands</h2>" not in body  # only the current state takes commands

    body = text(client.get(url(actor_id), {"at_version": "2"}))
    # The lines table has the first line only (the timeline shows every event).
    assert '<td class="mono">sku-0</td>' in body
    assert '<td class="mono">sku-1</td>' not in body
    assert "10.00" in body

    body = text(client.get(url(actor_id)))
    assert "<dd>paid</dd>" in body and "<h2>Commands</h2>" in body

    # Past the latest version: the current state, said so.
    body = text(client.get(url(actor_id), {"at_version": "99"}))
    assert "Version 99 is past the order's latest version" in body
    assert "<dd>paid</dd>" in body


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5", "²", "9" * 5000])
def test_invalid_at_version_is_400(client: Client, value: str) -> None:
    actor_id = placed()
    response = client.get(url(actor_id), {"at_version": value})
    assert response.status_code == 400
    assert "at_version must be a whole number of at least 1" in text(response)


def test_creating_an_existing_order_is_a_conflict(client: Client) -> None:
    actor_id = placed("Ann")
    response = create(client, actor_id, "Bob")
    assert response.status_code == 409
    body = text(response)
    assert f"Order '{actor_id}' exists already (it is at version 1). Nothing was saved." in body
    assert f'<a href="{url(actor_id)}">Open the existing order</a>' in body
    assert Order.objects.get(actor_id).customer == "Ann"


def test_create_refused_by_the_domain_stores_nothing(client: Client) -> None:
    actor_id = new_id()
    response = create(client, actor_id, "   ")
    assert response.status_code == 400
    assert "Refused: An order needs a customer. Nothing was saved." in text(response)
    assert not Order.objects.exists(actor_id)

    response = client.post("/orders/", {"order_id": "", "customer": "Ann"})
    assert response.status_code == 400
    assert "This field is required." in text(response)


def test_invalid_fields_and_unknown_commands_are_400(client: Client) -> None:
    actor_id = placed()
    response = command(client, actor_id, "add_line", sku="x", quantity="two", price_cents="1")
    assert response.status_code == 400
    body = text(response)
    assert "The command was not run: correct the fields marked below." in body
    assert "Enter a whole number." in body

    response = command(client, actor_id, "refund")
    assert response.status_code == 400
    assert "Unknown command 'refund'" in text(response)
    assert event_types(actor_id) == ["OrderPlaced"]


def test_update_that_keeps_conflicting_is_409(client: Client, monkeypatch) -> None:
    actor_id = placed(lines=1)

    def always_conflicts(self: Order) -> None:
        raise VersionConflictError(self.actor_id, self.version, self.version)

    monkeypatch.setattr(Order, "save", always_conflicts)
    monkeypatch.setattr(Order.objects, "backoff_base", 0.0)
    response = command(client, actor_id, "pay")
    assert response.status_code == 409
    assert f"Order '{actor_id}' is too busy" in text(response)
    assert "6 attempts" in text(response)  # the first one and 5 retries
    assert event_types(actor_id) == ["OrderPlaced", "LineAdded"]


class DownStore:
    """A store whose every operation times out."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailableError("NATS did not answer within 5.0s")

        return fail


def test_store_unavailable_is_503(client: Client, monkeypatch) -> None:
    monkeypatch.setattr(Order, "get_store", classmethod(lambda cls: DownStore()))
    # The list reads the read model, not the store: it still answers.
    response = client.get("/orders/")
    assert response.status_code == 200
    assert "The event store is not answering" not in text(response)
    for response in (
        create(client, new_id()),
        client.get(url(new_id())),
        command(client, new_id(), "pay"),
    ):
        assert response.status_code == 503
        assert "The event store is not answering: NATS did not answer within 5.0s" in text(response)


def test_a_history_that_is_not_an_order_is_422_and_the_list_still_works(client: Client) -> None:
    broken = new_id("typed-by-hand")
    # As the events page appends them: an OrderPlaced without a customer.
    Order.get_store().save_event(
        Event(event_type="OrderPlaced", actor_id=broken, version=1, data={"amount": 3})
    )

    response = client.get(url(broken))
    assert response.status_code == 422
    body = text(response)
    assert f"The history of '{broken}' cannot be replayed as an order (KeyError" in body
    assert '{"amount": 3}' in body  # the timeline still shows what is stored

    assert command(client, broken, "pay").status_code == 422

    # The list reads the read model, which its projection fills as far as such a
    # history allows (test_orders_list.py shows the row).
    assert client.get("/orders/").status_code == 200


def test_the_pages_link_to_each_other(client: Client) -> None:
    assert '<a href="/orders/">orders</a>' in text(client.get("/"))
    assert '<a href="/">events</a>' in text(client.get("/orders/"))
    actor_id = placed()
    assert f'<a href="/?namespace=orders&actor={actor_id}">' in text(client.get(url(actor_id)))
    body = text(client.get("/", {"namespace": "orders", "actor": actor_id}))
    assert f'<a href="{url(actor_id)}">Open {actor_id} on the orders page</a>' in body
