"""The events page: pick a namespace and an actor, read its events, append one.

Sync views on purpose: they use the blocking store API (``get_events``,
``save_event``), which aether_django runs on its own event loop.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse

from aether_django import inspection
from aether_django.errors import (
    AetherError,
    InvalidEventError,
    InvalidNameError,
    NamespaceCollisionError,
    StoreUnavailableError,
    VersionConflictError,
)
from aether_django.events import Event
from aether_django.store import EventStore, get_event_store

from .aggregates import Order
from .forms import AppendEventForm

DEFAULT_NAMESPACE = "orders"
#: Actors listed as links to pick from; the field takes any other id.
MAX_LISTED_ACTORS = 100


@dataclass(frozen=True)
class EventRow:
    """One event as the page shows it."""

    version: int
    event_type: str
    data: str
    timestamp: str
    sequence: int | None
    id: str


def _row(event: Event) -> EventRow:
    return EventRow(
        version=event.version,
        event_type=event.event_type,
        data=json.dumps(event.data, ensure_ascii=False),
        timestamp=event.timestamp.strftime("%Y-%m-%d %H:%M:%S.%f UTC"),
        sequence=event.sequence,
        id=event.id,
    )


class _Problems:
    """The messages the page shows in red, and the HTTP status they call for."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.status = 200

    def add(self, message: str, status: int) -> None:
        if message not in self.messages:
            self.messages.append(message)
        # The first problem decides the status; later ones are consequences.
        if self.status == 200:
            self.status = status

    def add_store_error(self, exc: AetherError) -> None:
        """Report an error of the store in words a person can act on."""
        if isinstance(exc, VersionConflictError):
            self.add(
                f"Version conflict: actor {exc.actor_id!r} is already at version "
                f"{exc.current_version}, so version {exc.attempted_version} was refused "
                "(a new version must be greater). Nothing was saved.",
                409,
            )
        elif isinstance(exc, InvalidNameError):
            # The message names the rule, e.g. "invalid namespace 'a..b': use tokens ...".
            self.add(_sentence(exc), 400)
        elif isinstance(exc, InvalidEventError):
            self.add(f"Invalid event: {exc}", 400)
        elif isinstance(exc, NamespaceCollisionError):
            self.add(f"Namespace collision: {exc}", 409)
        elif isinstance(exc, StoreUnavailableError):
            self.add(f"The event store is not answering: {exc}", 503)
        else:
            self.add(f"The event store failed: {exc}", 500)


def _sentence(exc: Exception) -> str:
    text = str(exc)
    return text[:1].upper() + text[1:]


# ASCII digits only ("²".isdigit() is true, but int("²") fails), and few enough of
# them for int() to accept.
_POSITIVE_INT_RE = re.compile(r"^[0-9]{1,18}$")


def parse_positive_int(text: str) -> int | None:
    """``text`` as an integer >= 1, or None when it is anything else."""
    text = text.strip()
    if not _POSITIVE_INT_RE.match(text):
        return None
    return int(text) or None


def order_url(actor_id: str) -> str | None:
    """The orders page of an actor of the Order namespace (None if it has no URL)."""
    try:
        return reverse("shop:order", args=[actor_id])
    except NoReverseMatch:
        return None


def _append(store: EventStore, actor_id: str, cleaned: dict[str, Any]) -> Event:
    """Save the form's event at the chosen version, or at the actor's latest version + 1."""
    version = cleaned["version"] or store.get_latest_version(actor_id) + 1
    event = Event(
        event_type=cleaned["event_type"],
        actor_id=actor_id,
        version=version,
        data=cleaned["event_data"],
    )
    return store.save_event(event)


def events_page(request: HttpRequest) -> HttpResponse:
    """Show an actor's events in ``?namespace=`` (default "orders"); POST appends one."""
    namespace = request.GET.get("namespace", "").strip() or DEFAULT_NAMESPACE
    actor_id = request.GET.get("actor", "").strip()
    problems = _Problems()
    posted = request.method == "POST"
    form = AppendEventForm(request.POST if posted else None)

    store: EventStore | None = None
    try:
        store = get_event_store(namespace)
    except InvalidNameError as exc:
        problems.add_store_error(exc)

    if posted:
        if not actor_id:
            problems.add("Pick an actor id before appending an event.", 400)
        elif not form.is_valid():
            problems.add("The event was not saved: correct the fields marked below.", 400)
        elif store is not None:
            try:
                stored = _append(store, actor_id, form.cleaned_data)
            except AetherError as exc:
                problems.add_store_error(exc)
            else:
                # Post/redirect/get: reloading the page must not append again.
                query = urlencode(
                    {"namespace": namespace, "actor": actor_id, "saved": stored.version}
                )
                return HttpResponseRedirect(f"{reverse('shop:events')}?{query}")

    actor_ids: list[str] = []
    more_actors = False
    events: list[Event] = []
    if store is not None:
        try:
            # The first page of the listing, as the admin and the API read it.
            listing = inspection.actor_page(store, None, MAX_LISTED_ACTORS)
            actor_ids = [row.actor_id for row in listing.rows]
            more_actors = listing.next_after is not None
            if actor_id:
                events = store.get_events(actor_id)
        except AetherError as exc:
            problems.add_store_error(exc)

    saved = parse_positive_int(request.GET.get("saved", ""))
    latest = events[-1].version if events else 0
    context = {
        "page": "events",
        "namespace": namespace,
        "actor_id": actor_id,
        "rows": [_row(event) for event in events],
        "actors": [
            (actor, "?" + urlencode({"namespace": namespace, "actor": actor}))
            for actor in actor_ids
        ],
        "more_actors": more_actors,
        "latest_version": latest,
        "next_version": latest + 1,
        "form": form,
        "problems": problems.messages,
        "saved_version": saved if not problems.messages else None,
        # The same actor on the orders page, when this namespace is the Order's.
        "order_url": (
            order_url(actor_id) if events and namespace == Order._meta.namespace else None
        ),
        "action": "?" + urlencode({"namespace": namespace, "actor": actor_id}),
    }
    return render(request, "shop/events.html", context, status=problems.status)
