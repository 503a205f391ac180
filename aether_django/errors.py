"""The error tree: everything aether_django raises on purpose derives from AetherError."""

from __future__ import annotations

from typing import Any


class AetherError(Exception):
    """Base class of every error aether_django raises on purpose."""


class VersionConflictError(AetherError):
    """A save was refused because the actor already has a version >= the attempted one.

    The caller may read ``current_version``, rebuild its decision and retry with a
    greater version; nothing of the refused save was stored.
    """

    def __init__(self, actor_id: str, attempted_version: int, current_version: int) -> None:
        self.actor_id = actor_id
        self.attempted_version = attempted_version
        self.current_version = current_version
        super().__init__(
            f"version conflict for actor {actor_id!r}: attempted version {attempted_version}, "
            f"current version is {current_version}"
        )

    def __reduce__(self) -> tuple[type[VersionConflictError], tuple[str, int, int]]:
        # Keep the three fields when the error crosses a process boundary.
        return (type(self), (self.actor_id, self.attempted_version, self.current_version))


class InvalidNameError(AetherError, ValueError):
    """A namespace, pattern or actor id breaks a naming rule; the message names the rule."""


class InvalidNamespaceError(InvalidNameError):
    """A namespace is not a valid dotted list of tokens."""


class InvalidActorIdError(InvalidNameError):
    """An actor id is empty, too long or not printable."""


class InvalidEventError(AetherError, ValueError):
    """An event cannot be stored as given (bad version, data that is not JSON, ...)."""


class PayloadTooLargeError(InvalidEventError):
    """An encoded event or snapshot is larger than the configured limit."""

    def __init__(self, size: int, limit: int, what: str = "event") -> None:
        self.size = size
        self.limit = limit
        self.what = what
        super().__init__(f"encoded {what} is {size} bytes; the limit is {limit} bytes")

    def __reduce__(self) -> tuple[type[PayloadTooLargeError], tuple[int, int, str]]:
        # Keep the fields when the error crosses a process boundary.
        return (type(self), (self.size, self.limit, self.what))


class EventStoreError(AetherError):
    """The event store could not complete an operation."""


class StoreUnavailableError(EventStoreError):
    """NATS did not answer within the configured timeout.

    Raised by a save only when none of its attempts can have been stored; when one
    may have been, the save raises the subclass SaveOutcomeUnknownError instead.
    """


class SaveOutcomeUnknownError(StoreUnavailableError):
    """A save was sent but NATS never confirmed it within the timeout: it may be stored.

    Raised instead of plain StoreUnavailableError only when an attempt reached the
    network and no answer came (the server died between storing and answering).
    Saving the same events again (same ids) is safe: it returns them if they were
    stored, stores them if not, or raises VersionConflictError if others wrote since.
    """


class NamespaceCollisionError(EventStoreError):
    """Two namespaces map to the same JetStream stream name."""


class StoreConfigurationError(EventStoreError):
    """The JetStream server refused to create or use a stream or bucket as configured."""


class ReplayError(AetherError):
    """A stored message could not be decoded into an event.

    Returned (not raised) by ``get_events_with_errors``; raised by ``get_events``.
    Carries the stream ``sequence`` and the ``raw`` bytes so nothing is lost.
    """

    def __init__(self, sequence: int, raw: bytes, reason: str, actor_id: str = "") -> None:
        self.sequence = sequence
        self.raw = raw
        self.reason = reason
        self.actor_id = actor_id
        super().__init__(f"cannot decode message {sequence} of actor {actor_id!r}: {reason}")

    def __reduce__(self) -> tuple[type[ReplayError], tuple[int, bytes, str, str]]:
        return (type(self), (self.sequence, self.raw, self.reason, self.actor_id))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReplayError):
            return NotImplemented
        return (self.sequence, self.raw, self.reason, self.actor_id) == (
            other.sequence,
            other.raw,
            other.reason,
            other.actor_id,
        )

    def __hash__(self) -> int:
        return hash((self.sequence, self.raw))


class AggregateError(AetherError):
    """An aggregate was used in a way its declaration does not allow.

    Also importable as ``aether_django.aggregates.AggregateError``.
    """


class AggregateReplayError(AggregateError):
    """An aggregate could not be rebuilt from its stored history.

    The one error that loading an aggregate (``objects.get``/``aget``, ``update``,
    ``iterator``) raises for anything the stored history does to the aggregate's code:
    an apply handler, upcaster or ``set_snapshot_state`` that raised (``KeyError`` on
    data of another shape, say), a stored event type with no handler, or a stored
    message that does not decode (then the subclass :class:`UndecodableEventError`).
    The original exception is ``cause`` (and ``__cause__``). Surfaces that show an
    aggregate's state catch this one type and answer "this history cannot be
    replayed" instead of a server error; store faults (``EventStoreError``) are not
    wrapped, they say nothing about the history.

    ``version`` is the version of the event that failed (0 when the failure was not
    at one event, e.g. restoring a snapshot) and ``sequence`` its stream sequence
    (0 when unknown).
    """

    def __init__(
        self,
        actor_id: str,
        version: int,
        cause: BaseException,
        *,
        aggregate: str = "",
        event_type: str = "",
        sequence: int = 0,
    ) -> None:
        self.actor_id = actor_id
        self.version = version
        self.cause = cause
        self.aggregate = aggregate
        self.event_type = event_type
        self.sequence = sequence
        #: What went wrong, safe to show to a caller: aether's own message for its
        #: own errors, only the exception's type for the project's code (whose text
        #: may say more than a caller should read).
        self.reason = self._reason(cause)
        self._take_from_cause(cause)
        where = f" at version {version}" if version else ""
        what = f" (event {event_type!r})" if event_type else ""
        # Exception's own __init__, not the next class of the MRO: in
        # UndecodableEventError that is ReplayError, whose fields are set here already.
        Exception.__init__(
            self,
            f"{aggregate or 'the aggregate'} cannot replay actor {actor_id!r}{where}{what}: "
            f"{self.reason}",
        )

    def _take_from_cause(self, cause: BaseException) -> None:
        """Set a subclass's own fields from ``cause`` (this class has none)."""

    @staticmethod
    def _reason(cause: BaseException) -> str:
        if isinstance(cause, AetherError):
            return str(cause)
        return f"its code raised {type(cause).__name__}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the fields when the error crosses a process boundary.
        return (
            _rebuild_replay_error,
            (
                type(self),
                self.actor_id,
                self.version,
                self.cause,
                self.aggregate,
                self.event_type,
                self.sequence,
            ),
        )


def _rebuild_replay_error(
    cls: type[AggregateReplayError],
    actor_id: str,
    version: int,
    cause: BaseException,
    aggregate: str,
    event_type: str,
    sequence: int,
) -> AggregateReplayError:
    return cls(
        actor_id, version, cause, aggregate=aggregate, event_type=event_type, sequence=sequence
    )


class UndecodableEventError(AggregateReplayError, ReplayError):
    """A stored message of the actor does not decode, met while loading an aggregate.

    Both an :class:`AggregateReplayError` (so a surface catches it with the other
    replay failures) and the store's :class:`ReplayError` it wraps (``sequence``,
    ``raw``, ``reason``: code that caught ``ReplayError`` from ``objects.get`` keeps
    working).
    """

    def _take_from_cause(self, cause: BaseException) -> None:
        # ReplayError's fields, from the store's error it wraps.
        self.sequence = self.sequence or getattr(cause, "sequence", 0)
        self.raw: bytes = getattr(cause, "raw", b"")

    @staticmethod
    def _reason(cause: BaseException) -> str:
        # ReplayError's ``reason``: why the message does not decode.
        return str(getattr(cause, "reason", cause))


class SyncCallInAsyncContextError(AetherError, RuntimeError):
    """A blocking (sync) method was called from a running event loop; use its ``a``-twin."""


class ProjectionError(AetherError):
    """A projection is declared wrongly or cannot do what was asked of it."""


class ProjectionTimeoutError(ProjectionError, TimeoutError):
    """A projection had not applied the awaited event when the wait ran out.

    ``namespace`` and ``sequence`` name the awaited event, ``position`` the last
    sequence the projection had applied in that namespace and ``state`` its state
    (running, paused or failed; None when it never ran there).
    """

    def __init__(
        self,
        projection: str,
        namespace: str,
        sequence: int,
        position: int,
        state: str | None,
        timeout: float,
    ) -> None:
        self.projection = projection
        self.namespace = namespace
        self.sequence = sequence
        self.position = position
        self.state = state
        self.timeout = timeout
        super().__init__(
            f"projection {projection!r} had not applied sequence {sequence} of namespace "
            f"{namespace!r} within {timeout:g}s: it is at {position} "
            f"({state or 'never started there'})"
        )

    def __reduce__(self) -> tuple[type[ProjectionTimeoutError], tuple[Any, ...]]:
        # Keep the fields when the error crosses a process boundary.
        return (
            type(self),
            (
                self.projection,
                self.namespace,
                self.sequence,
                self.position,
                self.state,
                self.timeout,
            ),
        )
