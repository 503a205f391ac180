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
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django import forms
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
    SaveOutcomeUnknownError,
    StoreUnavailableError,
    VersionConflictError,
)
from aether_django.events import Event
from aether_django.names import validate_actor_id

from .aggregates import Order
from .forms import AddLineForm, CancelOrderForm, CreateOrderForm
from .views import EventRow, _Problems, _row, _sentence, parse_positive_int

#: How often update() may reload and run a command again after a conflict.
UPDATE_RETRIES = 5
#: Orders the list shows at most.
MAX_LISTED_ORDERS = 200

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
}


def _explain(exc: Exception, actor_id: str) -> tuple[str, int]:
    """A message a person can act on, and the HTTP status, for what a view caught."""
    if isinstance(exc, DomainError):
        return f"Refused: {_sentence(exc)}. Nothing was saved.", 400
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


def _order_row(order: Order) -> OrderRow:
    return OrderRow(
        actor_id=order.actor_id,
        url=reverse("shop:order", args=[order.actor_id]),
        status=str(order.status),
        customer=str(order.customer),
        lines=len(order.lines),
        total=money(order.total_cents),
        version=order.version,
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


def _load_orders() -> tuple[list[Order], list[tuple[str, str]], bool]:
    """The orders (at most MAX_LISTED_ORDERS), the histories that are not orders, and
    whether there are more orders than listed.

    Store errors propagate; a history Order cannot replay is reported, not raised.
    """
    orders: list[Order] = []
    try:
        for order in itertools.islice(Order.objects.iterator(), MAX_LISTED_ORDERS + 1):
            orders.append(order)
    except AggregateReplayError:
        # One such history ends the iterator; load the remaining actors one by one.
        pass
    else:
        return orders[:MAX_LISTED_ORDERS], [], len(orders) > MAX_LISTED_ORDERS
    loaded = {order.actor_id for order in orders}
    broken: list[tuple[str, str]] = []
    for actor_id in Order.objects.actor_ids():
        if actor_id in loaded:
            continue
        if len(orders) > MAX_LISTED_ORDERS:
            break
        try:
            orders.append(Order.objects.get(actor_id))
        except Order.DoesNotExist:
            continue
        except AggregateReplayError as exc:
            broken.append((actor_id, _cause(exc)))
    return orders[:MAX_LISTED_ORDERS], broken, len(orders) > MAX_LISTED_ORDERS


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


def _done(actor_id: str, command: str) -> HttpResponseRedirect:
    query = urlencode({"done": command})
    return HttpResponseRedirect(f"{reverse('shop:order', args=[actor_id])}?{query}")


def orders_page(request: HttpRequest) -> HttpResponse:
    """List the orders; POST creates and places one."""
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
                _create(form.cleaned_data)
            except SHOWN_ERRORS as exc:
                problems.add(*_explain(exc, actor_id))
                if isinstance(exc, VersionConflictError):
                    existing_url = reverse("shop:order", args=[actor_id])
            else:
                # Post/redirect/get: reloading the page must not post again.
                return _done(actor_id, "place")

    orders: list[Order] = []
    broken: list[tuple[str, str]] = []
    more = False
    try:
        orders, broken, more = _load_orders()
    except AetherError as exc:
        problems.add(*_explain(exc, ""))

    context = {
        "page": "orders",
        "namespace": Order._meta.namespace,
        "rows": [_order_row(order) for order in orders],
        "broken": [(actor_id, reason, _events_url(actor_id)) for actor_id, reason in broken],
        "more": more,
        "max_listed": MAX_LISTED_ORDERS,
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
        if command is None and form is None:
            problems.add(f"Unknown command {name!r}: use add_line, pay, ship or cancel.", 400)
        elif command is None:
            problems.add("The command was not run: correct the fields marked below.", 400)
        else:
            try:
                Order.objects.update(actor_id, command, retries=UPDATE_RETRIES)
            except SHOWN_ERRORS as exc:
                problems.add(*_explain(exc, actor_id))
            else:
                return _done(actor_id, name)

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
        "order_url": reverse("shop:order", args=[actor_id]),
        "events_url": _events_url(actor_id),
        "forms": forms_,
        "problems": problems.messages,
        "done": DONE_MESSAGES.get(done),
    }
    return render(request, "shop/order.html", context, status=problems.status)
