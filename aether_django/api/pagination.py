"""Cursor pagination of the API's two listings, as DRF pagination classes.

Both listings answer ``{"results": [...], "next": url-or-null}`` and take ``limit``.
Neither is a queryset: a page of actors is a window of a stream's sorted subject
listing, a page of events a read of one actor's subject. So ``paginate_queryset``
takes the source to read from (an :class:`~aether_django.store.EventStore` for
actors, an :class:`ActorEvents` for events) instead of a queryset, and otherwise
follows DRF: ``get_paginated_response``, ``get_next_link``, the schema hooks, and
class attributes a subclass changes. A project picks its own subclass with
``AETHER["API_ACTOR_PAGINATION_CLASS"]`` and ``AETHER["API_EVENT_PAGINATION_CLASS"]``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ..conf import aether_settings
from ..errors import InvalidNameError
from ..events import Event
from ..names import validate_actor_id
from ..store import EventStore

__all__ = [
    "ActorCursorPagination",
    "ActorEvents",
    "AetherCursorPagination",
    "EventCursorPagination",
    "PaginatedViewMixin",
    "SourcePagination",
]


class AetherCursorPagination(BasePagination):
    """A page of at most ``limit`` items and the absolute URL of the next one.

    The cursor is a query parameter (``cursor_query_param``) that says where the
    next page starts; ``next`` keeps every other query parameter of the request.
    There is no previous link and no count: both would cost a read of the whole
    listing, which is what cursor pages exist to avoid.
    """

    #: The query parameter of the page size, its default and its largest value.
    limit_query_param = "limit"
    default_limit = 100
    max_limit = 1000
    #: The query parameter of the page's start.
    cursor_query_param = "cursor"
    cursor_query_description = "Where the page starts: the cursor of the previous page's next link."

    def __init__(self) -> None:
        self.request: Request | None = None
        self.next_cursor: str | None = None

    def get_limit(self, request: Request) -> int:
        """The request's ``limit``: an integer from 1 to ``max_limit`` (400 otherwise)."""
        raw = request.query_params.get(self.limit_query_param, str(self.default_limit))
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= self.max_limit:
            raise ValidationError(
                {self.limit_query_param: [f"must be an integer from 1 to {self.max_limit}"]}
            )
        return int(raw)

    def get_next_link(self) -> str | None:
        """The request's URL with the next page's cursor, or None after the last page."""
        if self.next_cursor is None or self.request is None:
            return None
        query = self.request.query_params.copy()
        query[self.cursor_query_param] = self.next_cursor
        return self.request.build_absolute_uri(self.request.path) + "?" + urlencode(query)

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"results": data, "next": self.get_next_link()})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["results", "next"],
            "properties": {
                "results": schema,
                "next": {"type": "string", "format": "uri", "nullable": True},
            },
        }

    def get_schema_operation_parameters(self, view: APIView) -> list[dict[str, Any]]:
        return [
            {
                "name": self.limit_query_param,
                "required": False,
                "in": "query",
                "description": f"Items per page, 1 to {self.max_limit} ({self.default_limit}).",
                "schema": {"type": "integer"},
            },
            {
                "name": self.cursor_query_param,
                "required": False,
                "in": "query",
                "description": self.cursor_query_description,
                "schema": {"type": "string"},
            },
        ]


class ActorCursorPagination(AetherCursorPagination):
    """Pages of a namespace's actor ids, in the order of their subject tokens.

    The cursor is opaque: the last id shown and its rank, in URL-safe base64. The
    rank is a hint that saves the store a search; a cursor is right without it.
    """

    cursor_query_description = "Opaque: the cursor of the previous page's next link."

    # The source is a store, not a queryset, hence no Row type of DRF's stubs.
    def paginate_queryset(  # type: ignore[override]
        self, queryset: Any, request: Request, view: APIView | None = None
    ) -> list[str]:
        """The actor ids of the request's page of ``queryset``, an EventStore."""
        store: EventStore = queryset
        self.request = request
        limit = self.get_limit(request)
        after, at = self.decode_cursor(request.query_params.get(self.cursor_query_param))
        page = store.get_actor_page(after, limit, at=at)
        self.next_cursor = None
        if page.next_at is not None and page.actor_ids:
            self.next_cursor = self.encode_cursor(page.actor_ids[-1], page.next_at)
        return page.actor_ids

    def encode_cursor(self, actor_id: str, at: int) -> str:
        """The cursor of the page after ``actor_id``; ``at`` is its rank, a hint only."""
        doc = json.dumps({"after": actor_id, "at": at}).encode()
        return base64.urlsafe_b64encode(doc).decode()

    def decode_cursor(self, cursor: str | None) -> tuple[str | None, int]:
        """The last id shown and the rank hint of ``cursor`` (None, 0 for the first page)."""
        if not cursor:
            return None, 0
        try:
            doc = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii") + b"=="))
            after, at = doc["after"], doc.get("at", 0)
            if not isinstance(after, str) or isinstance(at, bool) or not isinstance(at, int):
                raise TypeError
            validate_actor_id(after)
            if not 0 <= at < 2**63:
                raise ValueError
            return after, at
        except (ValueError, KeyError, TypeError, UnicodeError, InvalidNameError):
            raise ValidationError({self.cursor_query_param: ["invalid cursor"]}) from None


@dataclass(frozen=True)
class ActorEvents:
    """What :class:`EventCursorPagination` pages through: one actor's events in a store."""

    store: EventStore
    actor_id: str


class EventCursorPagination(AetherCursorPagination):
    """Pages of an actor's events in version order, bounded by count and by bytes.

    The cursor is the first version of the page (``from_version``, inclusive), which
    a client may also set itself. A page holds at most ``limit`` events and at most
    :meth:`get_page_bytes` of encoded events, but always at least one: events may be
    1 MiB each, and ``limit=1000`` of those would be a page of a GiB. When the bytes
    run out first, the page ends early, with a next link.
    """

    cursor_query_param = "from_version"
    cursor_query_description = "The first version of the page (inclusive), 0 by default."

    def get_page_bytes(self) -> int:
        """The byte budget of a page: ``AETHER["API_PAGE_BYTES"]``."""
        return int(aether_settings.API_PAGE_BYTES)

    def get_from_version(self, request: Request) -> int:
        raw = request.query_params.get(self.cursor_query_param)
        if raw is None or raw == "":
            return 0
        if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
            raise ValidationError({self.cursor_query_param: ["must be an integer >= 0"]})
        return int(raw)

    def paginate_queryset(  # type: ignore[override]
        self, queryset: Any, request: Request, view: APIView | None = None
    ) -> list[Event]:
        """The events of the request's page of ``queryset``, an :class:`ActorEvents`."""
        source: ActorEvents = queryset
        self.request = request
        from_version = self.get_from_version(request)
        limit = self.get_limit(request)
        page, more = source.store.get_events_page(
            source.actor_id, from_version, limit=limit, max_bytes=self.get_page_bytes()
        )
        self.next_cursor = str(page[-1].version + 1) if more and page else None
        return page


class SourcePagination(Protocol):
    """What the listing views need of a pagination class (any BasePagination subclass
    whose ``paginate_queryset`` reads the view's source: a store, or ActorEvents)."""

    def paginate_queryset(
        self, queryset: Any, request: Request, view: APIView | None = None
    ) -> list[Any] | None: ...

    def get_paginated_response(self, data: Any) -> Response: ...


class PaginatedViewMixin:
    """``paginator`` for a view with a pagination class, as DRF's generic views have.

    ``pagination_class`` None (the default) means the class named by the AETHER
    setting ``pagination_setting``, read per request so ``override_settings`` works.
    """

    pagination_class: type[BasePagination] | None = None
    pagination_setting: str = ""

    def get_pagination_class(self) -> type[BasePagination]:
        if self.pagination_class is not None:
            return self.pagination_class
        cls: type[BasePagination] = getattr(aether_settings, self.pagination_setting)
        return cls

    @property
    def paginator(self) -> SourcePagination:
        """One paginator per request (it keeps the page's state)."""
        if not hasattr(self, "_paginator"):
            self._paginator: SourcePagination = self.get_pagination_class()()
        return self._paginator
