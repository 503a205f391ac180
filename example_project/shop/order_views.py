"""The orders page: the shop's Order aggregate, listed, created, commanded and replayed.

Sync views, like the events page. Every command goes through
``Order.objects.update(actor_id, command, retries=5)``, which loads the order, runs
the command and saves; when another writer got there first it loads the order
again and runs the command again. What can go wrong is shown on the page with a
status that says what happened:

=====  ==============================================================================
400    the order's rules refused the command (``OrderError``), a field is invalid,
       the actor id is not a valid actor id, ``at_version`` is not a positive number
404    no order has this id (``Order.DoesNotExist``)
409    the order exists already (create), or every attempt of ``update`` conflicted
       with another writer (``UpdateRetriesExhausted``)
422    the actor's history cannot be replayed as an order (events appended by hand)
502    the event store answered with an error
503    the event store is not answering (``StoreUnavailableError``)
=====  ==============================================================================

A successful command redirects (post/redirect/get) to the order with ``?done=``.

The order's shipment (the ``Shipment`` aggregate of the same id) is shown below its
lines. The ``StartShipments`` process manager starts it once the order is paid;
``dispatch`` and ``deliver`` run on the shipment, and a dispatch makes
``ShipDispatchedOrders`` ship the order: after a dispatch the view waits (up to
``PROJECTION_WAIT`` seconds each) for that process manager and then for the list, so
the page it redirects to shows the order shipped, or says that it is not yet
(``?pending=ship``).

The list reads the ``OrderSummary`` read model (models.py), which
``OrderSummaryProjection`` (projections.py) keeps up to date from the events, with
filters (status, customer) and numbered pages. It never reads the event store, so it
answers while NATS does not. After a command the view waits (up to
``PROJECTION_WAIT`` seconds) until the projection has applied the saved event, so
the list the user opens next already shows it; when the wait runs out the command
still succeeds, and the order's page says that the list may be behind
(``?behind=1``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import render
from django.urls import reverse

from aether_django.aggregates import (
    AggregateDoesNotExist,
    DomainError,
    UpdateRetriesExhausted,
)
from aether_django.errors import (
    AetherError,
    AggregateReplayError,
    InvalidEventError,
    InvalidNameError,
    NamespaceCollisionError,
    ProjectionTimeoutError,
    SaveOutcomeUnknownError,
    StoreUnavailableError,
    VersionConflictError,
)
from aether_django.events import Event
from aether_django.names import validate_actor_id

from .aggregates import Order
from .forms import AddLineForm, CancelOrderForm, CreateOrderForm, OrderFilterForm
from .models import OrderSummary
from .projections import OrderSummaryProjection, ShipDispatchedOrders, StartShipments
from .shipments import Shipment
from .views import EventRow, _Problems, _row, _sentence, parse_positive_int

logger = logging.getLogger(__name__)

#: How often update() may reload and run a command again after a conflict.
UPDATE_RETRIES = 5
#: Orders on one page of the list.
ORDERS_PER_PAGE = 25
#: Seconds a command waits for OrderSummaryProjection to apply its event before it
#: answers anyway (saying the list may be behind). Short: the projection applies an
#: event within milliseconds when it runs; when it does not run, waiting longer
#: would only slow every command down.
PROJECTION_WAIT = 2.0

#: What the views catch and explain on the page (see _explain); anything else is a bug.
#: A history that Order cannot replay (an event type without a handler, a message that
#: does not decode, a handler that meets data of another shape: the events page
#: appends whatever one types) raises AggregateReplayError, one of these.
SHOWN_ERRORS: tuple[type[Exception], ...] = (AetherError,)

#: The message shown after each successful command, by the ``done`` query parameter.
DONE_MESSAGES = {
    "place": "Order placed.",
    "add_line": "Line added.",
    "pay": "Order paid.",
    "ship": "Order shipped.",
    "cancel": "Order cancelled.",
    "dispatch": "Shipment dispatched.",
    "deliver": "Shipment delivered.",
}

#: The page's commands that run on the order's shipment rather than on the order.
SHIPMENT_COMMANDS = ("dispatch", "deliver")


def _explain(exc: Exception, actor_id: str) -> tuple[str, int]:
    """A message a person can act on, and the HTTP status, for what a view caught."""
    if isinstance(exc, DomainError):
        return f"Refused: {_sentence(exc)}. Nothing was saved.", 400
    if isinstance(exc, Shipment.DoesNotExist):
        return (
            f"Order {actor_id!r} has no shipment yet: {StartShipments._meta.name} starts "
            "one once the order is paid.",
            404,
        )
    if isinstance(exc, AggregateDoesNotExist):
        return f"There is no order {actor_id!r}: it has no events.", 404
    if isinstance(exc, UpdateRetriesExhausted):
        return (
            f"Order {actor_id!r} is too busy: another writer changed it during each of "
            f"{exc.attempts} attempts. Nothing was saved; try again.",
            409,
        )
    if isinstance(exc, VersionConflictError):
        return (
            f"Order {actor_id!r} exists already (it is at version {exc.current_version}). "
            "Nothing was saved.",
            409,
        )
    if isinstance(exc, InvalidNameError):
        return _sentence(exc), 400
    if isinstance(exc, InvalidEventError):
        return f"Invalid event: {exc}. Nothing was saved.", 400
    if isinstance(exc, SaveOutcomeUnknownError):
        return (
            f"The event store did not confirm the save ({exc}); reload the order to see "
            "whether it was stored.",
            503,
        )
    if isinstance(exc, StoreUnavailableError):
        return f"The event store is not answering: {exc}", 503
    if isinstance(exc, NamespaceCollisionError):
        return f"Namespace collision: {exc}", 409
    if isinstance(exc, AggregateReplayError):
        return (
            f"The history of {actor_id!r} cannot be replayed as an order "
            f"({_cause(exc)}). Its events were probably appended by hand "
            "on the events page.",
            422,
        )
    return f"The event store failed: {exc}", 502


def _cause(exc: AggregateReplayError) -> str:
    """What the order's code (or the store's decoder) raised, by its name."""
    return f"{type(exc.cause).__name__}: {exc.cause}"


# --- what the templates show ---------------------------------------------------------


def money(cents: object) -> str:
    """Cents as ``12.34``; anything that is not a whole number of cents as it is."""
    if not isinstance(cents, int) or isinstance(cents, bool):
        return str(cents)
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}{whole}.{rest:02d}"


@dataclass(frozen=True)
class OrderRow:
    """One order in the list."""

    actor_id: str
    url: str
    status: str
    customer: str
    lines: int
    total: str
    version: int
    placed: str
    updated: str


def _order_row(summary: OrderSummary) -> OrderRow:
    return OrderRow(
        actor_id=summary.order_id,
        url=reverse("shop:order", args=[summary.order_id]),
        status=summary.status,
        customer=summary.customer,
        lines=summary.line_count,
        total=money(summary.total_cents),
        version=summary.version,
        placed=summary.placed_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        updated=summary.updated_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
    )


@dataclass(frozen=True)
class LineRow:
    """One line of an order."""

    sku: str
    quantity: str
    price: str
    total: str


def _line_row(line: Mapping[str, Any]) -> LineRow:
    quantity, price = line.get("quantity"), line.get("price_cents")
    try:
        total = money(quantity * price)  # type: ignore[operator]
    except TypeError:
        total = "?"
    return LineRow(
        sku=str(line.get("sku")), quantity=str(quantity), price=money(price), total=total
    )


@dataclass(frozen=True)
class TimelineRow:
    """One event of the order's history, with the link to the state after it."""

    event: EventRow
    link: str
    shown: bool
    later: bool


# --- the list -----------------------------------------------------------------------------


def _list_orders(
    request: HttpRequest, problems: _Problems
) -> tuple[OrderFilterForm, Page[OrderSummary] | None, dict[str, str]]:
    """The filter form, the page of the read model it asks for (None when a filter is
    invalid) and the filters as query parameters, for the page links."""
    # Ids of their own: the create form above it has a customer field too.
    filters = OrderFilterForm(request.GET, auto_id="filter_%s")
    if not filters.is_valid():
        problems.add("The orders were not listed: correct the filters marked below.", 400)
        return filters, None, {}
    summaries = OrderSummary.objects.all()
    query: dict[str, str] = {}
    if status := filters.cleaned_data["status"]:
        summaries = summaries.filter(status=status)
        query["status"] = status
    if customer := filters.cleaned_data["customer"]:
        summaries = summaries.filter(customer__icontains=customer)
        query["customer"] = customer
    # get_page: a page number that is not one, or past the end, shows the first or
    # the last page instead of failing (a link may outlive the orders it counted).
    page = Paginator(summaries, ORDERS_PER_PAGE).get_page(request.GET.get("page"))
    return filters, page, query


def _page_url(query: Mapping[str, str], number: int) -> str:
    return "?" + urlencode({**query, "page": number})


def wait_for_list(saved: Order | Event) -> bool:
    """Wait until OrderSummaryProjection has applied ``saved`` (read your own writes);
    False when it has not within PROJECTION_WAIT seconds (it is behind, paused,
    failed or not running), which the next page says."""
    try:
        OrderSummaryProjection.wait_for(saved, timeout=PROJECTION_WAIT)
    except ProjectionTimeoutError as exc:
        logger.warning("the orders list is behind: %s", exc)
        return False
    return True


def _create(cleaned: Mapping[str, Any]) -> Order:
    """Create, place and save a new order; its first save conflicts if it exists."""
    order: Order = Order.objects.create(cleaned["order_id"])
    order.place(cleaned["customer"])
    order.save()
    return order


def _events_url(actor_id: str) -> str:
    """The actor's events on the events page."""
    query = urlencode({"namespace": Order._meta.namespace, "actor": actor_id})
    return f"{reverse('shop:events')}?{query}"


def _done(actor_id: str, command: str, saved: Order) -> HttpResponseRedirect:
    """Wait for the list to show the saved command, then redirect to the order."""
    query = {"done": command}
    if not wait_for_list(saved):
        query["behind"] = "1"
    return HttpResponseRedirect(f"{reverse('shop:order', args=[actor_id])}?{urlencode(query)}")


def _shipment_done(actor_id: str, command: str, saved: Shipment) -> HttpResponseRedirect:
    """After a shipment command: for a dispatch, wait until ShipDispatchedOrders has
    reacted to it (the order is shipped then, or its refusal logged) and the list shows
    the order's last event; then redirect to the order."""
    query = {"done": command}
    if command == "dispatch":
        try:
            ShipDispatchedOrders.wait_for(saved, timeout=PROJECTION_WAIT)
        except ProjectionTimeoutError as exc:
            logger.warning("the dispatched order is not shipped yet: %s", exc)
            query["pending"] = "ship"
        else:
            try:
                latest = Order.objects.get(actor_id)
            except SHOWN_ERRORS:
                latest = None  # the order page says what is wrong with it
            if latest is not None and not wait_for_list(latest):
                query["behind"] = "1"
    return HttpResponseRedirect(f"{reverse('shop:order', args=[actor_id])}?{urlencode(query)}")


def orders_page(request: HttpRequest) -> HttpResponse:
    """List the orders (``?status=``, ``?customer=``, ``?page=``); POST creates and
    places one."""
    problems = _Problems()
    posted = request.method == "POST"
    form = CreateOrderForm(request.POST if posted else None)
    existing_url: str | None = None

    if posted:
        if not form.is_valid():
            problems.add("The order was not created: correct the fields marked below.", 400)
        else:
            actor_id = form.cleaned_data["order_id"]
            try:
                order = _create(form.cleaned_data)
            except SHOWN_ERRORS as exc:
                problems.add(*_explain(exc, actor_id))
                if isinstance(exc, VersionConflictError):
                    existing_url = reverse("shop:order", args=[actor_id])
            else:
                # Post/redirect/get: reloading the page must not post again.
                return _done(actor_id, "place", order)

    filters, page, query = _list_orders(request, problems)
    context = {
        "page": "orders",
        "namespace": Order._meta.namespace,
        "projection": OrderSummaryProjection._meta.name,
        "rows": [_order_row(summary) for summary in page] if page is not None else [],
        "orders_page": page,
        "filtered": bool(query),
        "filters": filters,
        "previous_url": _page_url(query, page.previous_page_number())
        if page is not None and page.has_previous()
        else None,
        "next_url": _page_url(query, page.next_page_number())
        if page is not None and page.has_next()
        else None,
        "form": form,
        "problems": problems.messages,
        "existing_url": existing_url,
    }
    return render(request, "shop/orders.html", context, status=problems.status)


# --- one order ------------------------------------------------------------------------------


def _command(name: str, data: QueryDict) -> tuple[Callable[[Order], Any] | None, forms.Form | None]:
    """The command a POST asks for, as a function of the order, and its bound form.

    The function is None for an unknown command or an invalid form.
    """
    if name == "add_line":
        line = AddLineForm(data)
        if not line.is_valid():
            return None, line
        sku, quantity, price = (line.cleaned_data[k] for k in ("sku", "quantity", "price_cents"))
        return (lambda o: o.add_line(sku, quantity, price)), line
    if name == "cancel":
        cancel = CancelOrderForm(data)
        if not cancel.is_valid():
            return None, cancel
        reason = cancel.cleaned_data["reason"]
        return (lambda o: o.cancel(reason)), cancel
    if name == "pay":
        return (lambda o: o.pay()), None
    if name == "ship":
        return (lambda o: o.ship()), None
    return None, None


def order_page(request: HttpRequest, actor_id: str) -> HttpResponse:
    """One order: its state (``?at_version=n``: as of version n), lines and events.

    POST runs the command named by the ``command`` field.
    """
    problems = _Problems()
    forms_: dict[str, forms.Form] = {"add_line": AddLineForm(), "cancel": CancelOrderForm()}
    try:
        validate_actor_id(actor_id)
    except InvalidNameError as exc:
        problems.add(_sentence(exc), 400)
        context = {"page": "orders", "actor_id": actor_id, "valid": False}
        context["problems"] = problems.messages
        return render(request, "shop/order.html", context, status=problems.status)

    if request.method == "POST":
        name = request.POST.get("command", "")
        command, form = _command(name, request.POST)
        if form is not None:
            forms_[name] = form
        if name in SHIPMENT_COMMANDS:
            try:
                shipped = Shipment.objects.update(
                    actor_id, lambda s: getattr(s, name)(), retries=UPDATE_RETRIES
                )
            except SHOWN_ERRORS as exc:
                problems.add(*_explain(exc, actor_id))
            else:
                return _shipment_done(actor_id, name, shipped)
        elif command is None and form is None:
            problems.add(
                f"Unknown command {name!r}: use add_line, pay, ship, cancel, dispatch or deliver.",
                400,
            )
        elif command is None:
            problems.add("The command was not run: correct the fields marked below.", 400)
        else:
            try:
                saved = Order.objects.update(actor_id, command, retries=UPDATE_RETRIES)
            except SHOWN_ERRORS as exc:
                problems.add(*_explain(exc, actor_id))
            else:
                return _done(actor_id, name, saved)

    at_version: int | None = None
    requested = request.GET.get("at_version", "") if request.method == "GET" else ""
    if requested.strip():
        at_version = parse_positive_int(requested)
        if at_version is None:
            problems.add(
                f"at_version must be a whole number of at least 1, not {requested!r}.", 400
            )

    order: Order | None = None
    events: list[Event] = []
    # After the store failed, asking it again would only make the page wait again.
    if problems.status not in (502, 503):
        try:
            order = Order.objects.get(actor_id, at_version=at_version)
        except SHOWN_ERRORS as exc:
            problems.add(*_explain(exc, actor_id))
    if problems.status not in (404, 502, 503):
        try:
            events = Order.get_store().get_events(actor_id)
        except AetherError as exc:
            problems.add(*_explain(exc, actor_id))

    shipment: Shipment | None = None
    shipment_error = ""
    if order is not None and problems.status not in (502, 503):
        try:
            shipment = Shipment.objects.get(actor_id)
        except Shipment.DoesNotExist:
            pass
        except AetherError as exc:
            shipment_error = f"The shipment could not be read: {exc}"

    latest = events[-1].version if events else (order.version if order else 0)
    shown = order.version if order is not None else None
    done = request.GET.get("done", "") if not problems.messages else ""
    context = {
        "page": "orders",
        "valid": True,
        "actor_id": actor_id,
        "order": order,
        "total": money(order.total_cents) if order else "",
        "lines": [_line_row(line) for line in order.lines] if order else [],
        "at_version": at_version,
        "latest_version": latest,
        # Showing an earlier state than the latest one (the commands are hidden then).
        "past": at_version is not None and shown is not None and shown < latest,
        "timeline": [
            TimelineRow(
                event=_row(event),
                link="?" + urlencode({"at_version": event.version}),
                shown=at_version is not None and event.version == shown,
                later=shown is not None and event.version > shown,
            )
            for event in events
        ],
        "shipment": shipment,
        "shipment_error": shipment_error,
        "start_shipments": StartShipments._meta.name,
        "ship_dispatched": ShipDispatchedOrders._meta.name,
        # A dispatch saved, whose order the process manager had not shipped in time.
        "pending_ship": bool(done) and request.GET.get("pending") == "ship",
        "order_url": reverse("shop:order", args=[actor_id]),
        "events_url": _events_url(actor_id),
        "forms": forms_,
        "problems": problems.messages,
        "done": DONE_MESSAGES.get(done),
        # The command was saved, but the list did not show it in time (see _done).
        "behind": bool(done) and request.GET.get("behind") == "1",
    }
    return render(request, "shop/order.html", context, status=problems.status)
