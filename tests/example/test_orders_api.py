"""The shop's order API (``/api/shop/orders/``): the OrderSummary read model, read-only,
behind the API's authentication and the orders namespace's read grant, with filters
and numbered pages.

The rows are written here directly: what the API serves does not depend on how they
were made (test_orders_list.py has them made by the running projection).
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from aether_django.models import NamespaceGrant
from example_project.shop.models import OrderSummary

pytestmark = pytest.mark.django_db
URL = "/api/shop/orders/"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(customer: str, status: str = "placed", n: int = 0, **fields: Any) -> OrderSummary:
    """An order placed at T0 + n minutes."""
    return OrderSummary.objects.create(
        order_id=fields.pop("order_id", f"order-{uuid.uuid4().hex[:10]}"),
        customer=customer,
        status=status,
        line_count=fields.pop("line_count", 1),
        total_cents=fields.pop("total_cents", 1000 + n),
        version=fields.pop("version", 2),
        placed_at=T0 + timedelta(minutes=n),
        updated_at=T0 + timedelta(minutes=n, seconds=30),
    )


def user(*, grant: str | None = None, superuser: bool = False) -> User:
    name = f"u{uuid.uuid4().hex[:8]}"
    if superuser:
        return User.objects.create_superuser(name, password="pw")
    made = User.objects.create_user(name, password="pw")
    if grant is not None:
        NamespaceGrant.objects.create(user=made, pattern=grant, can_read=True)
    return made


@pytest.fixture
def reader(client: Client) -> Client:
    """A client logged in as a user with a read grant on the orders namespace."""
    client.force_login(user(grant="orders"))
    return client


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [r["order_id"] for r in response.json()["results"]]


def test_authentication_and_the_read_grant_are_required(client: Client) -> None:
    row("Ann")
    response = client.get(URL)
    # As on /api/aether/: session auth comes first, so DRF answers 403, not 401.
    assert response.status_code == 403
    assert response.json() == {"detail": "Authentication credentials were not provided."}

    client.force_login(user())
    response = client.get(URL)
    assert response.status_code == 403
    assert "read grant on the namespace 'orders'" in response.json()["detail"]

    client.force_login(user(grant="shop.*"))  # a grant that does not match "orders"
    assert client.get(URL).status_code == 403

    client.force_login(user(grant="orders"))
    assert client.get(URL).status_code == 200
    client.force_login(user(superuser=True))
    assert client.get(URL).status_code == 200

    # HTTP basic auth, as for /api/aether/.
    basic = user(grant="order*")
    token = base64.b64encode(f"{basic.username}:pw".encode()).decode()
    assert Client().get(URL, HTTP_AUTHORIZATION=f"Basic {token}").status_code == 200
    assert Client().get(URL, HTTP_AUTHORIZATION="Basic bm86bm8=").status_code in (401, 403)


def test_list_and_retrieve(reader: Client) -> None:
    first = row("Ann", "paid", 1, line_count=2, total_cents=3097, version=5)
    second = row("Bob", "placed", 2, order_id="shop a/b 7")
    body = reader.get(URL).json()
    assert body["count"] == 2 and body["next"] is None and body["previous"] is None
    # Newest first.
    assert [r["order_id"] for r in body["results"]] == [second.order_id, first.order_id]
    got = body["results"][1]
    # DRF renders times in the project's TIME_ZONE; the instants are the rows'.
    assert datetime.fromisoformat(got.pop("placed_at")) == T0 + timedelta(minutes=1)
    assert datetime.fromisoformat(got.pop("updated_at")) == T0 + timedelta(seconds=90)
    assert got == {
        "order_id": first.order_id,
        "customer": "Ann",
        "status": "paid",
        "line_count": 2,
        "total_cents": 3097,
        "version": 5,
    }
    # An order id with a slash and a space has a URL of its own.
    response = reader.get(f"{URL}shop%20a/b%207/")
    assert response.status_code == 200 and response.json()["customer"] == "Bob"
    assert reader.get(f"{URL}no-such-order/").status_code == 404


def test_filters_by_status_and_customer(reader: Client) -> None:
    ann_paid = row("Ann", "paid", 1)
    ann_placed = row("Ann", "placed", 2)
    bob_paid = row("Bob", "paid", 3)
    row("Annabel", "shipped", 4)
    assert ids(reader.get(URL, {"status": "paid"})) == [bob_paid.order_id, ann_paid.order_id]
    assert ids(reader.get(URL, {"customer": "Ann"})) == [ann_placed.order_id, ann_paid.order_id]
    assert ids(reader.get(URL, {"customer": "Ann", "status": "paid"})) == [ann_paid.order_id]
    assert len(ids(reader.get(URL, {"customer_contains": "ANN"}))) == 3
    assert ids(reader.get(URL, {"ordering": "total_cents", "status": "paid"})) == [
        ann_paid.order_id,
        bob_paid.order_id,
    ]


def test_unknown_filter_values(reader: Client) -> None:
    row("Ann", "paid", 1)
    # A status that is none of the order's: an error naming the choices, not an empty list.
    response = reader.get(URL, {"status": "refunded"})
    assert response.status_code == 400
    assert "Select a valid choice. refunded is not one of the available choices." in str(
        response.json()["status"]
    )
    # A customer with no orders: an empty list.
    body = reader.get(URL, {"customer": "Nobody"}).json()
    assert (body["count"], body["results"]) == (0, [])
    # A parameter that is no filter is ignored (DRF's and django-filter's convention).
    assert reader.get(URL, {"colour": "red"}).json()["count"] == 1
    # An ordering on a field that is not offered is ignored too.
    assert reader.get(URL, {"ordering": "customer"}).status_code == 200


def test_pagination(reader: Client) -> None:
    made = [row("Cleo", "placed", n) for n in range(5)]
    newest_first = [r.order_id for r in reversed(made)]
    body = reader.get(URL, {"page_size": "2", "customer": "Cleo"}).json()
    assert body["count"] == 5 and body["previous"] is None
    assert [r["order_id"] for r in body["results"]] == newest_first[:2]
    # The next link keeps the filter and the page size.
    assert "customer=Cleo" in body["next"] and "page=2" in body["next"]
    seen = [r["order_id"] for r in body["results"]]
    while body["next"]:
        body = reader.get(body["next"]).json()
        seen += [r["order_id"] for r in body["results"]]
    assert seen == newest_first
    assert reader.get(URL, {"page": 99}).status_code == 404
    assert reader.get(URL, {"page": "x"}).status_code == 404
    # At most 200 a page, whatever is asked.
    assert len(reader.get(URL, {"page_size": 10_000}).json()["results"]) == 5


def test_the_api_is_read_only(reader: Client) -> None:
    order = row("Ann")
    assert reader.post(URL, {"order_id": "x", "customer": "Eve"}).status_code == 405
    assert reader.delete(f"{URL}{order.order_id}/").status_code == 405
    assert reader.patch(f"{URL}{order.order_id}/", {"status": "paid"}).status_code == 405
    assert OrderSummary.objects.get().status == "placed"


def test_the_admin_shows_the_read_model_without_edits(client: Client) -> None:
    order = row("Ann", "paid")
    client.force_login(user(superuser=True))
    page = client.get("/admin/shop/ordersummary/", {"status__exact": "paid"})
    assert page.status_code == 200 and order.order_id in page.content.decode()
    assert client.get("/admin/shop/ordersummary/add/").status_code == 403
    # The change page is a view-only page: a post changes nothing.
    change = f"/admin/shop/ordersummary/{order.pk}/change/"
    assert client.get(change).status_code == 200
    assert client.post(change, {"status": "shipped"}).status_code == 403
    assert OrderSummary.objects.get().status == "paid"
