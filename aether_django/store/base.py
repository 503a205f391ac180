"""The event-store contract shared by every store, and the settings a store is built with.

A store serves one namespace. Every operation exists twice, Django-style: the
plain name blocks (for views, Celery tasks, the shell), the ``a``-prefixed twin is
a coroutine (for async views and consumers). Both have the same semantics:

* ``save_event`` accepts a version only if it is strictly greater than the
  actor's current version (gaps allowed; an unknown actor has version 0), and
  otherwise raises VersionConflictError carrying the current version.
* ``save_events`` stores several events of one actor atomically: all or none.
* ``get_events(actor_id, from_version)`` returns the events whose version is
  ``>= from_version`` in version order.
"""

from __future__ import annotations

import abc
import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from ..aio import Runtime  # re-exported: the protocol's home is aether_django.aio
from ..errors import InvalidEventError
from ..events import ActorSnapshot, Event, ReplayResult, encode_event, validate_event
from ..names import actor_id_from_token, actor_token, validate_actor_id

T = TypeVar("T")

__all__ = [
    "ActorPage",
    "AsyncFirstEventStore",
    "EventStore",
    "NamespaceInfo",
    "Runtime",
    "StoreConfig",
    "actor_order",
]


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    """Figures of one namespace's stream, read live from the server."""

    name: str
    stream: str
    events: int
    actors: int
    bytes: int
    first_sequence: int
    last_sequence: int
    replicas: int = 1


@dataclass(frozen=True, slots=True)
class ActorPage:
    """One page of a namespace's actor ids, in the order of their subject tokens.

    ``next_at`` is where the next page starts in that order (a hint for the next
    call's ``at``; the next call is correct without it), or None on the last page.
    """

    actor_ids: list[str]
    next_at: int | None


def actor_order(actor_id: str) -> str:
    """The key actor pages are sorted by: the actor's subject token, byte by byte.

    Ids of letters, digits, '-' and '_' are their own token, so they come in byte
    order; any other id is '=' and its base64 (see names.actor_token), so it sorts
    among them by that encoding.
    """
    return actor_token(actor_id)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """What a store needs to know, independent of where it came from (settings, tests)."""

    #: Seconds an operation may take before StoreUnavailableError.
    timeout: float = 5.0
    #: Largest encoded event (or snapshot) accepted, in bytes.
    max_event_bytes: int = 1024 * 1024
    #: First tokens of every event subject.
    subject_prefix: str = "aether.events"
    #: "file" or "memory".
    storage: str = "file"
    replicas: int = 1
    #: Seconds to keep events; 0 keeps them for ever.
    max_age: float = 0.0
    #: Bytes a namespace's stream may hold; -1 for no limit.
    max_bytes: int = -1
    #: Seconds within which a repeated event id is recognised as a retry.
    duplicate_window: float = 120.0
    #: Refuse deleting single events and purging streams on the server.
    immutable: bool = True
    #: Actors whose head (last sequence and version) each store keeps in memory.
    head_cache_size: int = 10_000


class EventStore(abc.ABC):
    """The store API: sync methods and their async twins, for one namespace."""

    namespace: str
    #: Whether every read returns events decoded for that read alone, so that nothing
    #: else holds them or their data: loading an aggregate then opens its personal
    #: fields in the events' own data rather than in copies (aether_django.privacy).
    #: False unless a store guarantees it (the in-memory store hands out what it keeps).
    fresh_reads: ClassVar[bool] = False

    # --- sync ---------------------------------------------------------------
    @abc.abstractmethod
    def save_event(self, event: Event) -> Event:
        """Store ``event``; return it with its stream ``sequence`` set."""

    @abc.abstractmethod
    def save_events(self, events: Sequence[Event]) -> list[Event]:
        """Store events of one actor atomically, all or none; return them stored."""

    @abc.abstractmethod
    def get_events(
        self,
        actor_id: str,
        from_version: int = 0,
        *,
        after_sequence: int = 0,
        limit: int | None = None,
    ) -> list[Event]:
        """Events of ``actor_id`` with version >= ``from_version``, in version order.

        Raises ReplayError when a stored message does not decode. ``after_sequence``
        is an optional hint — every wanted event lies after that stream sequence
        (a snapshot knows it) — that lets a store skip searching for the start.
        ``limit`` returns only the first ``limit`` of them, and reads no more than it
        needs to (a page of a long history).
        """

    @abc.abstractmethod
    def get_events_with_errors(
        self, actor_id: str, from_version: int = 0, *, after_sequence: int = 0
    ) -> ReplayResult:
        """Like get_events, but return corrupt messages as ReplayErrors beside the clean events."""

    @abc.abstractmethod
    def get_latest_version(self, actor_id: str) -> int:
        """The actor's current version; 0 for an actor with no events."""

    @abc.abstractmethod
    def get_actor_ids(self) -> list[str]:
        """Ids of every actor with at least one event in this namespace, sorted."""

    @abc.abstractmethod
    def get_latest_snapshot(self, actor_id: str) -> ActorSnapshot | None:
        """The newest snapshot saved for the actor, or None."""

    @abc.abstractmethod
    def save_snapshot(self, snapshot: ActorSnapshot) -> None:
        """Save a snapshot, replacing the previous one of the actor."""

    # --- async --------------------------------------------------------------
    @abc.abstractmethod
    async def asave_event(self, event: Event) -> Event: ...

    @abc.abstractmethod
    async def asave_events(self, events: Sequence[Event]) -> list[Event]: ...

    @abc.abstractmethod
    async def aget_events(
        self,
        actor_id: str,
        from_version: int = 0,
        *,
        after_sequence: int = 0,
        limit: int | None = None,
    ) -> list[Event]: ...

    @abc.abstractmethod
    async def aget_events_with_errors(
        self, actor_id: str, from_version: int = 0, *, after_sequence: int = 0
    ) -> ReplayResult: ...

    @abc.abstractmethod
    async def aget_latest_version(self, actor_id: str) -> int: ...

    @abc.abstractmethod
    async def aget_actor_ids(self) -> list[str]: ...

    @abc.abstractmethod
    async def aget_latest_snapshot(self, actor_id: str) -> ActorSnapshot | None: ...

    # --- pages (API) ------------------------------------------------------------
    def get_events_page(
        self, actor_id: str, from_version: int = 0, *, limit: int, max_bytes: int
    ) -> tuple[list[Event], bool]:
        """Sync twin of :meth:`aget_events_page`."""
        check_page(limit, max_bytes)
        events = self.get_events(actor_id, from_version, limit=limit + 1)
        return _within_bytes(events, limit, max_bytes)

    async def aget_events_page(
        self, actor_id: str, from_version: int = 0, *, limit: int, max_bytes: int
    ) -> tuple[list[Event], bool]:
        """A page of the actor's events from ``from_version`` on, and whether more follow.

        The page holds at most ``limit`` events, and at most ``max_bytes`` of encoded
        events, but always the first one. This default reads ``limit + 1`` events and
        cuts them; a store whose events may be large overrides it to read no more than
        the page (plus one event) in the first place.
        """
        check_page(limit, max_bytes)
        events = await self.aget_events(actor_id, from_version, limit=limit + 1)
        return _within_bytes(events, limit, max_bytes)

    def get_actor_page(self, after: str | None, limit: int, *, at: int = 0) -> ActorPage:
        """Sync twin of :meth:`aget_actor_page`."""
        return _actor_page(self.get_actor_ids(), after, limit)

    async def aget_actor_page(self, after: str | None, limit: int, *, at: int = 0) -> ActorPage:
        """Up to ``limit`` actor ids that come after ``after`` (None: from the start) in
        :func:`actor_order`.

        ``at`` is the ``next_at`` of the page before, a hint where to look; pages are
        right without it. This default sorts every id; a store with many actors
        overrides it to read about a page's worth.
        """
        return _actor_page(await self.aget_actor_ids(), after, limit)

    # --- the whole namespace in stream order (projections) -------------------------------
    def get_stream_events(
        self, after_sequence: int = 0, *, limit: int, max_bytes: int | None = None
    ) -> list[Event]:
        """Sync twin of :meth:`aget_stream_events`."""
        raise NotImplementedError

    async def aget_stream_events(
        self, after_sequence: int = 0, *, limit: int, max_bytes: int | None = None
    ) -> list[Event]:
        """The namespace's events after stream sequence ``after_sequence``, every actor's,
        in stream order, each carrying its ``sequence``.

        At most ``limit`` events, and (with ``max_bytes``) no more encoded bytes than
        that, but always the first one. An empty list: nothing is stored after
        ``after_sequence`` yet. A message that does not decode is never passed over:
        the list stops before it, and a read that starts at it raises ReplayError
        (with its sequence and bytes), so a reader stops there too.
        """
        raise NotImplementedError

    # --- inspection (API, admin) ----------------------------------------------------
    def exists(self) -> bool:
        """Sync twin of :meth:`aexists`."""
        return self.get_info() is not None

    async def aexists(self) -> bool:
        """Whether anything was ever saved in this namespace (its stream exists)."""
        return await self.aget_info() is not None

    def get_info(self) -> NamespaceInfo | None:
        """Sync twin of :meth:`aget_info`."""
        raise NotImplementedError

    def get_latest_versions(self, actor_ids: Sequence[str]) -> dict[str, int]:
        """Sync twin of :meth:`aget_latest_versions`."""
        raise NotImplementedError

    @abc.abstractmethod
    async def aget_info(self) -> NamespaceInfo | None:
        """Figures of this namespace, or None when nothing was ever saved in it."""

    @abc.abstractmethod
    async def aget_latest_versions(self, actor_ids: Sequence[str]) -> dict[str, int]:
        """The current version of each of ``actor_ids`` (0 for unknown ones), in one read."""

    @classmethod
    @abc.abstractmethod
    async def alist_namespaces(cls, *, runtime: Runtime | None, config: StoreConfig) -> list[str]:
        """Every namespace this kind of store holds events for, sorted."""

    @abc.abstractmethod
    async def asave_snapshot(self, snapshot: ActorSnapshot) -> None: ...


class AsyncFirstEventStore(EventStore):
    """A store written as coroutines; the sync methods run them through the runtime."""

    runtime: Runtime

    def save_event(self, event: Event) -> Event:
        return self.runtime.run(self.asave_event(event))

    def save_events(self, events: Sequence[Event]) -> list[Event]:
        return self.runtime.run(self.asave_events(events))

    def get_events(
        self,
        actor_id: str,
        from_version: int = 0,
        *,
        after_sequence: int = 0,
        limit: int | None = None,
    ) -> list[Event]:
        return self.runtime.run(
            self.aget_events(actor_id, from_version, after_sequence=after_sequence, limit=limit)
        )

    def get_events_with_errors(
        self, actor_id: str, from_version: int = 0, *, after_sequence: int = 0
    ) -> ReplayResult:
        return self.runtime.run(
            self.aget_events_with_errors(actor_id, from_version, after_sequence=after_sequence)
        )

    def get_latest_version(self, actor_id: str) -> int:
        return self.runtime.run(self.aget_latest_version(actor_id))

    def get_actor_ids(self) -> list[str]:
        return self.runtime.run(self.aget_actor_ids())

    def get_latest_snapshot(self, actor_id: str) -> ActorSnapshot | None:
        return self.runtime.run(self.aget_latest_snapshot(actor_id))

    def save_snapshot(self, snapshot: ActorSnapshot) -> None:
        return self.runtime.run(self.asave_snapshot(snapshot))

    def get_info(self) -> NamespaceInfo | None:
        return self.runtime.run(self.aget_info())

    def exists(self) -> bool:
        return self.runtime.run(self.aexists())

    def get_actor_page(self, after: str | None, limit: int, *, at: int = 0) -> ActorPage:
        return self.runtime.run(self.aget_actor_page(after, limit, at=at))

    def get_events_page(
        self, actor_id: str, from_version: int = 0, *, limit: int, max_bytes: int
    ) -> tuple[list[Event], bool]:
        return self.runtime.run(
            self.aget_events_page(actor_id, from_version, limit=limit, max_bytes=max_bytes)
        )

    def get_latest_versions(self, actor_ids: Sequence[str]) -> dict[str, int]:
        return self.runtime.run(self.aget_latest_versions(actor_ids))

    def get_stream_events(
        self, after_sequence: int = 0, *, limit: int, max_bytes: int | None = None
    ) -> list[Event]:
        return self.runtime.run(
            self.aget_stream_events(after_sequence, limit=limit, max_bytes=max_bytes)
        )


def _actor_page(actor_ids: list[str], after: str | None, limit: int) -> ActorPage:
    check_page(limit, 1)
    tokens = sorted(actor_order(a) for a in actor_ids)
    start = 0 if after is None else bisect.bisect_right(tokens, actor_order(after))
    page = [actor_id_from_token(t) for t in tokens[start : start + limit]]
    more = start + limit < len(tokens)
    return ActorPage(page, start + limit if more else None)


def _within_bytes(events: list[Event], limit: int, max_bytes: int) -> tuple[list[Event], bool]:
    """The first of ``events`` that fit ``limit`` and ``max_bytes`` (at least one), and
    whether any are left over."""
    used = 0
    for count, event in enumerate(events[:limit]):
        used += len(encode_event(event))
        if count and used > max_bytes:
            return events[:count], True
    return events[:limit], len(events) > limit


def check_page(limit: int, max_bytes: int) -> None:
    """Validate the ``limit`` and ``max_bytes`` arguments of get_events_page."""
    for name, value in (("limit", limit), ("max_bytes", max_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidEventError(f"{name} must be an integer >= 1, got {value!r}")


def check_batch(events: Sequence[Event]) -> list[Event]:
    """Validate a batch for save_events: one actor, strictly increasing versions."""
    batch = list(events)
    for event in batch:
        validate_event(event)
    for before, after in itertools.pairwise(batch):
        if after.actor_id != before.actor_id:
            raise InvalidEventError("all events of one save_events call must share one actor id")
        if after.version <= before.version:
            raise InvalidEventError(
                f"versions within a batch must strictly increase ({before.version} then "
                f"{after.version})"
            )
    if len({event.id for event in batch}) != len(batch):
        raise InvalidEventError("event ids within a batch must be distinct")
    return batch


def check_stream_read(after_sequence: int, limit: int, max_bytes: int | None) -> None:
    """Validate the arguments of get_stream_events."""
    if (
        isinstance(after_sequence, bool)
        or not isinstance(after_sequence, int)
        or after_sequence < 0
    ):
        raise InvalidEventError(f"after_sequence must be an integer >= 0, got {after_sequence!r}")
    check_page(limit, 1 if max_bytes is None else max_bytes)


def check_from_version(from_version: int) -> int:
    """Validate the ``from_version`` argument of get_events."""
    if isinstance(from_version, bool) or not isinstance(from_version, int) or from_version < 0:
        raise InvalidEventError(f"from_version must be an integer >= 0, got {from_version!r}")
    return from_version


def check_limit(limit: int | None) -> int | None:
    """Validate the ``limit`` argument of get_events."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidEventError(f"limit must be None or an integer >= 1, got {limit!r}")
    return limit


def check_snapshot(snapshot: ActorSnapshot) -> None:
    """Validate a snapshot before it is saved."""
    if not isinstance(snapshot, ActorSnapshot):
        raise InvalidEventError(f"expected an ActorSnapshot, not {type(snapshot).__name__}")
    validate_actor_id(snapshot.actor_id)
    if isinstance(snapshot.version, bool) or not isinstance(snapshot.version, int):
        raise InvalidEventError("snapshot version must be an integer")
    if snapshot.version <= 0:
        raise InvalidEventError(f"snapshot version must be greater than 0, got {snapshot.version}")
