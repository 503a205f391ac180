"""Model-like aggregates: declare an actor like a Django model, load it, change it, save it safely.

An aggregate class declares its namespace and options in ``Meta``, its state as
annotated class attributes with defaults, commands (``@command``) that ``record()``
events, and handlers (``@apply("EventType")``) that change state from events::

    class Order(Aggregate):
        status: str = "new"
        lines: list = []

        class Meta:
            namespace = "orders"
            snapshot_every = 50

        @command
        def place(self, customer):
            if self.status != "new":
                raise DomainError("the order was placed already")
            self.record("OrderPlaced", customer=customer)

        @apply("OrderPlaced")
        def _placed(self, event):
            self.status = "placed"

    order = Order.objects.create("order-1")
    order.place("ann")
    order.save()                      # atomic, version-checked
    Order.objects.get("order-1")      # replayed (from a snapshot when there is one)
    Order.objects.update("order-1", lambda o: o.place("bob"), retries=5)

See docs/aggregates.md for the whole story.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import concurrent.futures
import contextlib
import copy
import dataclasses
import inspect
import logging
import random
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from django.core.exceptions import ObjectDoesNotExist

from . import correlation, privacy, tracing
from .errors import (
    AetherError,
    AggregateError,
    AggregateReplayError,
    InvalidNameError,
    ReplayError,
    UndecodableEventError,
    VersionConflictError,
)
from .events import ActorSnapshot, Event, with_sequence
from .names import validate_actor_id, validate_namespace
from .store import EventStore, get_event_store

logger = logging.getLogger(__name__)

__all__ = [
    "Aggregate",
    "AggregateDoesNotExist",
    "AggregateError",
    "AggregateManager",
    "AggregateReplayError",
    "DomainError",
    "UpdateRetriesExhausted",
    "all_aggregates",
    "apply",
    "command",
    "evolve",
    "get_aggregate_class",
    "upcaster",
]

A = TypeVar("A", bound="Aggregate")
F = TypeVar("F", bound=Callable[..., Any])

#: Metadata key holding an event's schema version (absent means 1).
SCHEMA_KEY = "schema"
#: Command ids an aggregate remembers (and snapshots) to recognise a repeated command,
#: at least; an aggregate with a longer snapshot interval remembers that many
#: (``Options.command_window``), so a snapshot never forgets a command the events
#: after it would not show.
RECENT_COMMANDS = 100
#: Meta options an aggregate may declare.
META_OPTIONS = frozenset(
    {
        "namespace",
        "snapshot_every",
        "snapshot_version",
        "event_schemas",
        "abstract",
        "cache_size",
        "commands",
        "personal_data",
        "data_subject",
    }
)
#: Aggregates update() keeps in memory per class unless Meta.cache_size says otherwise.
DEFAULT_CACHE_SIZE = 1000


# --- errors -------------------------------------------------------------------------


class DomainError(AetherError):
    """A command was refused by the aggregate's own rules (not by storage).

    Subclass it for your domain's errors; nothing was recorded.
    """


class AggregateDoesNotExist(AetherError, ObjectDoesNotExist):
    """No events exist for the actor (each aggregate class has its own ``DoesNotExist``)."""


class UpdateRetriesExhausted(AetherError):
    """``update()`` met a version conflict on every attempt and gave up.

    The last VersionConflictError is the ``__cause__``; nothing of the last
    attempt was stored.
    """

    def __init__(self, actor_id: str, attempts: int) -> None:
        self.actor_id = actor_id
        self.attempts = attempts
        super().__init__(
            f"gave up updating {actor_id!r} after {attempts} attempts, each of which "
            "conflicted with another writer; retry later or raise retries="
        )


# --- declaring handlers and upcasters ------------------------------------------------


def apply(event_type: str) -> Callable[[Callable[[A, Event], None]], Callable[[A, Event], None]]:
    """Mark a method as the handler that applies ``event_type`` events to state.

    Handlers must not fail: a command checks its rules before it records.
    """

    def mark(fn: Callable[[A, Event], None]) -> Callable[[A, Event], None]:
        fn._aether_applies = event_type  # type: ignore[attr-defined]
        return fn

    return mark


def command(fn: F) -> F:
    """Mark a method as a command: one that other nodes may run by name.

    A routed command (``aether_django.sharding.send_command``) runs only methods
    declared this way or listed in ``Meta.commands``; any other name, public or
    not, is refused, so a message on a shard's subject cannot call ``save``,
    ``set_snapshot_state`` or a helper. Called directly in Python, a command is an
    ordinary method. Inherited like handlers.
    """
    fn._aether_command = True  # type: ignore[attr-defined]
    return fn


def upcaster(event_type: str, schema: int) -> Callable[[Callable[[Event], Event]], Any]:
    """Mark a function that turns a stored ``event_type`` event of ``schema`` into a newer one.

    The function takes the old Event and returns a new one (use :func:`evolve`),
    with a greater schema or another type. Upcasters chain until none matches.
    """

    def mark(fn: Callable[[Event], Event]) -> Any:
        wrapped = staticmethod(fn)
        wrapped._aether_upcasts = (event_type, schema)  # type: ignore[attr-defined]
        return wrapped

    return mark


def evolve(
    event: Event,
    *,
    schema: int,
    event_type: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> Event:
    """A copy of ``event`` at another schema version (and maybe another type or data)."""
    metadata = dict(event.metadata)
    metadata[SCHEMA_KEY] = str(schema)
    return dataclasses.replace(
        event,
        event_type=event_type or event.event_type,
        data=dict(data) if data is not None else event.data,
        metadata=metadata,
    )


def schema_of(event: Event) -> int:
    """The schema version an event was written with (1 when it does not say)."""
    try:
        return int(event.metadata.get(SCHEMA_KEY, 1))
    except ValueError:
        return 1


# --- options and registry --------------------------------------------------------------


class Options:
    """An aggregate class's ``Meta``, checked; problems are kept for the system checks."""

    def __init__(self, model: type[Aggregate], meta: type | None) -> None:
        self.model = model
        self.problems: list[str] = []
        raw = {k: v for k, v in vars(meta).items() if not k.startswith("_")} if meta else {}
        for unknown in sorted(set(raw) - META_OPTIONS):
            self.problems.append(f"unknown Meta option {unknown!r}")
        self.abstract: bool = bool(raw.get("abstract", False))
        self.namespace: str | None = raw.get("namespace")
        if self.namespace is not None:
            try:
                validate_namespace(self.namespace)
            except InvalidNameError as exc:
                self.problems.append(f"Meta.namespace: {exc}")
        self.snapshot_every: int | None = raw.get("snapshot_every")
        if self.snapshot_every is not None and not _positive_int(self.snapshot_every):
            self.problems.append("Meta.snapshot_every must be a positive integer or None")
            self.snapshot_every = None
        self.snapshot_version: int = raw.get("snapshot_version", 1)
        if not _positive_int(self.snapshot_version):
            self.problems.append("Meta.snapshot_version must be a positive integer")
            self.snapshot_version = 1
        schemas = raw.get("event_schemas", {})
        if not isinstance(schemas, Mapping) or not all(
            isinstance(k, str) and _positive_int(v) for k, v in schemas.items()
        ):
            self.problems.append("Meta.event_schemas must map event types to positive integers")
            schemas = {}
        self.event_schemas: dict[str, int] = dict(schemas)
        self.cache_size: int = raw.get("cache_size", DEFAULT_CACHE_SIZE)
        if (
            isinstance(self.cache_size, bool)
            or not isinstance(self.cache_size, int)
            or (self.cache_size < 0)
        ):
            self.problems.append("Meta.cache_size must be an integer >= 0")
            self.cache_size = DEFAULT_CACHE_SIZE
        listed = raw.get("commands", ())
        if isinstance(listed, str) or not all(isinstance(n, str) for n in listed):
            self.problems.append("Meta.commands must be a list of method names")
            listed = ()
        self.listed_commands: tuple[str, ...] = tuple(listed)
        self.personal_data: dict[str, tuple[str, ...]] = {}
        #: Why Meta.personal_data is unusable, if it is: saves of the class then refuse
        #: (they cannot tell which fields to protect, and never store them in plain text).
        self.personal_data_error: str | None = None
        self.data_subject: str | Callable[[Event], Any] | None = None
        self._personal_data(raw)
        # Set by the class once its methods are known: the names send_command may run.
        self.commands: frozenset[str] = frozenset()
        self.command_problems: list[str] = []

    def _personal_data(self, raw: Mapping[str, Any]) -> None:
        """Meta.personal_data and Meta.data_subject (docs/privacy.md), checked."""
        declared = raw.get("personal_data", {})
        if not isinstance(declared, Mapping) or not all(
            isinstance(event_type, str)
            and isinstance(fields, (list, tuple))
            and fields
            and all(isinstance(f, str) and f for f in fields)
            for event_type, fields in declared.items()
        ):
            self.personal_data_error = (
                "Meta.personal_data must map event types to non-empty lists of field names"
            )
            self.problems.append(self.personal_data_error)
            declared = {}
        self.personal_data = {k: tuple(v) for k, v in declared.items()}
        subject = raw.get("data_subject")
        if isinstance(subject, staticmethod):
            subject = subject.__func__
        if subject is not None and not (
            (isinstance(subject, str) and subject) or callable(subject)
        ):
            self.problems.append(
                "Meta.data_subject must be the name of an event data field or a "
                "callable taking the event"
            )
        elif self.personal_data and subject is None:
            self.problems.append(
                "Meta.personal_data needs Meta.data_subject: the event data field (or a "
                "callable taking the event) that names the data subject"
            )
        if not (isinstance(subject, str) and subject) and not callable(subject):
            subject = None
        if subject is not None and not self.personal_data and not self.personal_data_error:
            self.problems.append("Meta.data_subject is set but Meta.personal_data is empty")
        if isinstance(subject, str):
            for event_type, fields in self.personal_data.items():
                if subject in fields:
                    self.problems.append(
                        f"Meta.personal_data[{event_type!r}] lists the data subject field "
                        f"{subject!r}: it must stay readable to find the subject's key"
                    )
        self.data_subject = subject

    @property
    def label(self) -> str:
        return f"{self.model.__module__}.{self.model.__qualname__}"

    @property
    def command_window(self) -> int:
        """How many of an actor's latest commands are recognised when sent again."""
        return max(RECENT_COMMANDS, self.snapshot_every or 0)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_registry: dict[str, type[Aggregate]] = {}


def _register(model: type[Aggregate]) -> None:
    # Keyed by the class's dotted path, so a module reloaded in development
    # replaces its classes instead of adding duplicates.
    _registry[model._meta.label] = model


def all_aggregates() -> list[type[Aggregate]]:
    """Every concrete aggregate class defined so far."""
    return list(_registry.values())


def get_aggregate_class(namespace: str) -> type[Aggregate] | None:
    """The aggregate class registered for ``namespace``, or None."""
    for model in _registry.values():
        if model._meta.namespace == namespace:
            return model
    return None


# --- the aggregate ------------------------------------------------------------------------


class Aggregate:
    """Base class of event-sourced aggregates; see the module docstring."""

    _meta: ClassVar[Options]
    _handlers: ClassVar[dict[str, Callable[[Any, Event], None]]]
    _duplicate_handlers: ClassVar[list[str]]
    _upcasters: ClassVar[dict[tuple[str, int], Callable[[Event], Event]]]
    _state_fields: ClassVar[dict[str, Any]]
    objects: ClassVar[AggregateManager[Any]]
    DoesNotExist: ClassVar[type[AggregateDoesNotExist]] = AggregateDoesNotExist

    actor_id: str
    version: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._meta = Options(cls, cls.__dict__.get("Meta"))
        cls._collect_state_fields()
        cls._collect_handlers()
        cls._collect_commands()
        cls.DoesNotExist = type(
            "DoesNotExist",
            (AggregateDoesNotExist,),
            {"__module__": cls.__module__, "__qualname__": f"{cls.__qualname__}.DoesNotExist"},
        )
        cls.objects = AggregateManager(cls)
        if not cls._meta.abstract:
            _register(cls)

    @classmethod
    def _collect_state_fields(cls) -> None:
        fields: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            for name, annotation in vars(klass).get("__annotations__", {}).items():
                text = annotation if isinstance(annotation, str) else repr(annotation)
                if name.startswith("_") or "ClassVar" in text or name in ("actor_id", "version"):
                    continue
                fields[name] = vars(klass).get(name)
        cls._state_fields = fields

    @classmethod
    def _collect_handlers(cls) -> None:
        handlers: dict[str, Callable[[Any, Event], None]] = {}
        upcasters: dict[tuple[str, int], Callable[[Event], Event]] = {}
        duplicates: list[str] = []
        for klass in reversed(cls.__mro__):
            seen_here: set[str] = set()
            for value in vars(klass).values():
                event_type = getattr(value, "_aether_applies", None)
                if event_type is not None:
                    if event_type in seen_here and klass is cls:
                        duplicates.append(event_type)
                    seen_here.add(event_type)
                    handlers[event_type] = value
                key = getattr(value, "_aether_upcasts", None)
                if key is not None:
                    upcasters[key] = value.__func__
        cls._handlers = handlers
        cls._upcasters = upcasters
        cls._duplicate_handlers = duplicates

    @classmethod
    def _collect_commands(cls) -> None:
        declared = {
            name
            for klass in cls.__mro__
            for name, value in vars(klass).items()
            if getattr(value, "_aether_command", False)
        }
        declared.update(cls._meta.listed_commands)
        commands: set[str] = set()
        problems: list[str] = []
        for name in sorted(declared):
            if name.startswith("_"):
                problems.append(f"{name!r} starts with '_' and cannot be a command")
            elif name in _BASE_API:
                problems.append(f"{name!r} is part of Aggregate's own API, not a command")
            elif not callable(getattr(cls, name, None)):
                problems.append(f"Meta.commands names {name!r}, which is not a method")
            else:
                commands.add(name)
        cls._meta.commands = frozenset(commands)
        cls._meta.command_problems = problems

    def __init__(self, actor_id: str) -> None:
        self.actor_id = validate_actor_id(actor_id)
        self.version = 0
        self._pending: list[Event] = []
        self._command_id: str | None = None
        self._command_metadata: dict[str, str] = {}
        # Stream sequence of the last stored event applied, and the command ids of
        # the last ones: a snapshot keeps both, so loading can start right after it
        # and a node can tell a command it already ran (see sharding.routing).
        self._last_sequence = 0
        # The data subjects whose sealed fields the stored history holds, with the key
        # id of the latest: a snapshot of an aggregate with personal data is sealed
        # under each, with that key only (docs/privacy.md#snapshots).
        self._subjects: dict[str, str] = {}
        #: Whether the last update() found its command id already applied (and did
        #: not run the command again).
        self.command_replayed = False
        #: The events the last save() stored, as stored (with their stream sequences).
        self.saved_events: list[Event] = []
        # (command id, version of the last event it recorded), oldest first.
        self._recent_commands: collections.deque[tuple[str, int]] = collections.deque(
            maxlen=self._meta.command_window
        )
        for name, default in self._state_fields.items():
            # Each instance gets its own copy of mutable defaults (lists, dicts).
            setattr(self, name, copy.deepcopy(default))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.actor_id!r} v{self.version}>"

    # --- commands record events ---------------------------------------------------
    def record(
        self,
        event_type: str,
        data: Mapping[str, Any] | None = None,
        /,
        *,
        command_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> Event:
        """Record a new event: apply it to state now, store it on the next save()."""
        if event_type not in self._handlers:
            raise AggregateError(
                f"{type(self).__name__} has no handler for {event_type!r}; "
                f"add a method decorated with @apply({event_type!r})"
            )
        meta = {**self._command_metadata, **(metadata or {})}
        schema = self._meta.event_schemas.get(event_type, 1)
        if schema > 1:
            meta[SCHEMA_KEY] = str(schema)
        command_id = command_id or self._command_id
        if correlation.current() is None and self._pending:
            # Outside any request or command context, the events recorded before one
            # save belong together: they share the first one's ids.
            first = self._pending[-1].metadata
            for key in (correlation.CORRELATION_KEY, correlation.CAUSATION_KEY):
                if key in first:
                    meta.setdefault(key, first[key])
        event = Event(
            event_type=event_type,
            actor_id=self.actor_id,
            version=self.version + 1,
            data={**(data or {}), **fields},
            command_id=command_id,
            metadata=correlation.stamp(meta, command_id=command_id),
        )
        self._apply(event)
        self._pending.append(event)
        return event

    @contextlib.contextmanager
    def command_context(
        self, command_id: str | None, metadata: Mapping[str, str] | None = None
    ) -> Iterator[None]:
        """Within the block, events recorded carry ``command_id`` (unless given their own)
        and the entries of ``metadata`` (unless the command gives the same keys)."""
        previous = self._command_id, self._command_metadata
        self._command_id = command_id
        self._command_metadata = dict(metadata or {})
        try:
            yield
        finally:
            self._command_id, self._command_metadata = previous

    @property
    def pending_events(self) -> list[Event]:
        """Events recorded since the last save, not stored yet."""
        return list(self._pending)

    # --- applying events ---------------------------------------------------------------
    @classmethod
    def upcast(cls, event: Event) -> Event:
        """Bring a stored event to its current schema with the registered upcasters."""
        for _ in range(100):
            upcast = cls._upcasters.get((event.event_type, schema_of(event)))
            if upcast is None:
                return event
            event = upcast(event)
        raise AggregateError(f"upcasters for {event.event_type!r} loop without ending")

    def _apply(self, event: Event) -> None:
        handler = self._handlers.get(event.event_type)
        if handler is None:
            raise AggregateError(
                f"{type(self).__name__} cannot apply stored event {event.event_type!r} "
                f"(version {event.version}): no handler and no upcaster for it"
            )
        handler(self, event)
        self.version = event.version
        if event.sequence:
            self._last_sequence = event.sequence
        if event.command_id:
            if self._recent_commands and self._recent_commands[-1][0] == event.command_id:
                self._recent_commands.pop()  # one command, several events: keep the last
            self._recent_commands.append((event.command_id, event.version))

    def recorded_version(self, command_id: str) -> int | None:
        """The version of the last event ``command_id`` recorded, if it is among the
        actor's last ``Meta``-dependent ``command_window`` commands; None otherwise."""
        for recorded, version in reversed(self._recent_commands):
            if recorded == command_id:
                return version
        return None

    # --- snapshots ---------------------------------------------------------------------
    def get_snapshot_state(self) -> dict[str, Any]:
        """The state to snapshot: by default every declared state attribute.

        Override (with :meth:`set_snapshot_state`) for state that is not JSON-able.
        """
        return {name: copy.deepcopy(getattr(self, name)) for name in self._state_fields}

    def set_snapshot_state(self, state: Mapping[str, Any]) -> None:
        """Restore state saved by :meth:`get_snapshot_state`."""
        for name in self._state_fields:
            if name in state:
                setattr(self, name, copy.deepcopy(state[name]))

    def _snapshot(self) -> ActorSnapshot:
        state: dict[str, Any] = {}
        if self._meta.personal_data:
            # Plain, to find the keys; the state is sealed by privacy.seal_snapshot.
            state["subjects"] = sorted(self._subjects)
        return ActorSnapshot(
            actor_id=self.actor_id,
            version=self.version,
            state={
                **state,
                "aggregate": self._meta.label,
                "snapshot_version": self._meta.snapshot_version,
                "state": self.get_snapshot_state(),
                "sequence": self._last_sequence,
                "recent_commands": [list(pair) for pair in self._recent_commands],
                # How many it could hold: a reader with a longer window can tell a
                # complete list from one cut short (see AggregateManager._window_start).
                "command_window": self._meta.command_window,
            },
        )

    def _snapshot_due(self, before: int) -> bool:
        every = self._meta.snapshot_every
        return bool(every) and self.version // every > before // every  # type: ignore[operator]

    # --- saving ------------------------------------------------------------------------
    @classmethod
    def get_store(cls) -> EventStore:
        """The event store of this aggregate's namespace."""
        if cls._meta.namespace is None:
            raise AggregateError(f"{cls.__name__} has no Meta.namespace")
        return get_event_store(cls._meta.namespace)

    def save(self) -> None:
        """Store the pending events atomically; VersionConflictError if someone wrote first.

        After a conflict this instance is out of date: load the actor again.
        """
        if not self._pending:
            self.saved_events = []
            return
        if tracing.enabled and tracing.recording():
            with tracing.span("aether save", attributes=self._save_attributes()):
                self._store_pending()
            return
        self._store_pending()

    def _save_attributes(self) -> dict[str, Any]:
        """What the ``aether save`` span says about the pending events."""
        first, last = self._pending[0], self._pending[-1]
        attributes: dict[str, Any] = {
            "aether.namespace": self._meta.namespace or "",
            "aether.actor_id": self.actor_id,
            "aether.aggregate": type(self).__name__,
            "aether.events": len(self._pending),
            "aether.version.first": first.version,
            "aether.version.last": last.version,
        }
        if first.command_id:
            attributes["aether.command_id"] = first.command_id
        return attributes

    def _store_pending(self) -> None:
        before = self._pending[0].version - 1
        store = self.get_store()
        if self._meta.personal_data or self._meta.personal_data_error:
            sealed, subjects = privacy.seal_history(type(self), self._pending)
            stored = _unsealed(self._pending, store.save_events(sealed))
            self._subjects.update(subjects)
        else:
            stored = store.save_events(self._pending)
        self.saved_events = list(stored)
        self._last_sequence = stored[-1].sequence or self._last_sequence
        self._pending = []
        if self._snapshot_due(before):
            try:
                # Sealed under its data subjects' keys when it holds personal data;
                # None when one of them was forgotten meanwhile: no snapshot then.
                snapshot = privacy.seal_snapshot(type(self), self._snapshot(), self._subjects)
                if snapshot is not None:
                    store.save_snapshot(snapshot)
            except (AetherError, privacy.EnvelopeError, privacy.KeyUnwrapError):
                logger.warning("could not save a snapshot of %r", self, exc_info=True)

    async def asave(self) -> None:
        """Async twin of :meth:`save`."""
        if not self._pending:
            self.saved_events = []
            return
        if tracing.enabled and tracing.recording():
            with tracing.span("aether save", attributes=self._save_attributes()):
                await self._astore_pending()
            return
        await self._astore_pending()

    async def _astore_pending(self) -> None:
        before = self._pending[0].version - 1
        store = self.get_store()
        if self._meta.personal_data or self._meta.personal_data_error:
            sealed, subjects = await privacy.aseal_history(type(self), self._pending)
            stored = _unsealed(self._pending, await store.asave_events(sealed))
            self._subjects.update(subjects)
        else:
            stored = await store.asave_events(self._pending)
        self.saved_events = list(stored)
        self._last_sequence = stored[-1].sequence or self._last_sequence
        self._pending = []
        if self._snapshot_due(before):
            try:
                # Sealed under its data subjects' keys when it holds personal data;
                # None when one of them was forgotten meanwhile: no snapshot then.
                snapshot = await privacy.aseal_snapshot(
                    type(self), self._snapshot(), self._subjects
                )
                if snapshot is not None:
                    await store.asave_snapshot(snapshot)
            except (AetherError, privacy.EnvelopeError, privacy.KeyUnwrapError):
                logger.warning("could not save a snapshot of %r", self, exc_info=True)


def _unsealed(plain: list[Event], stored: list[Event]) -> list[Event]:
    """The events as recorded (personal fields readable), with the sequences the store gave."""
    return [with_sequence(p, s.sequence or 0) for p, s in zip(plain, stored, strict=True)]


#: Names of the base class's own API: never commands, even when declared.
_BASE_API = frozenset({"objects", *(name for name in dir(Aggregate) if not name.startswith("_"))})


# --- the manager ------------------------------------------------------------------------------


class AggregateManager(Generic[A]):
    """``Model.objects``: load, create and update aggregates of one class."""

    #: Seconds of the first back-off of update(); it doubles per attempt, with jitter.
    backoff_base = 0.005
    #: Longest back-off between two attempts of update(), in seconds.
    backoff_cap = 0.25

    def __init__(self, model: type[A]) -> None:
        self.model = model
        # Aggregates as their last update() saved them. Used optimistically: a
        # command runs on the cached state and the save's version check catches
        # any writer that came in between (then the actor is reloaded), so a
        # command on a hot actor costs one round trip instead of two.
        self._cache: collections.OrderedDict[str, A] = collections.OrderedDict()
        self._cache_lock = threading.Lock()

    def _take_cached(self, actor_id: str) -> A | None:
        with self._cache_lock:
            return self._cache.pop(actor_id, None)  # exclusive while a command runs

    def _keep(self, obj: A) -> None:
        size = self.model._meta.cache_size
        if not size or self.model._meta.personal_data:
            # An aggregate holding personal data is not kept: its state would outlive
            # a forget() in another process (docs/privacy.md#caches).
            return
        kept = copy.deepcopy(obj)  # the caller's object stays its own
        with self._cache_lock:
            self._cache[obj.actor_id] = kept
            self._cache.move_to_end(obj.actor_id)
            while len(self._cache) > size:
                self._cache.popitem(last=False)

    def forget(self, actor_id: str | None = None) -> None:
        """Drop the cached copy of one actor (or of all) that update() keeps."""
        with self._cache_lock:
            if actor_id is None:
                self._cache.clear()
            else:
                self._cache.pop(actor_id, None)

    # --- loading ---------------------------------------------------------------------
    def _usable_snapshot(
        self, snapshot: ActorSnapshot | None, at_version: int | None
    ) -> ActorSnapshot | None:
        if snapshot is None or (at_version is not None and snapshot.version > at_version):
            return None
        meta = self.model._meta
        state = snapshot.state
        if state.get("aggregate") != meta.label or not isinstance(state.get("state"), dict):
            logger.warning(
                "ignoring a snapshot of %s not made by %s", snapshot.actor_id, meta.label
            )
            return None
        if state.get("snapshot_version") != meta.snapshot_version:
            logger.warning(
                "ignoring snapshot of %s: snapshot_version %s, %s expects %s; replaying",
                snapshot.actor_id,
                state.get("snapshot_version"),
                meta.label,
                meta.snapshot_version,
            )
            return None
        return snapshot

    def _window_start(self, snapshot: ActorSnapshot | None) -> int:
        """The first version to read after loading ``snapshot`` (0: the whole history).

        Right after the snapshot, unless its list of recent commands may have been cut
        short of this class's ``command_window``: a snapshot written when the window
        was smaller (100 before it grew with ``snapshot_every``, or before
        ``snapshot_every`` was raised) and full to that size. Then the events of the
        window's length before it are read as well, for their command ids only, so a
        command sent again is still recognised across the snapshot.
        """
        if snapshot is None:
            return 0
        window = self.model._meta.command_window
        written = _int(snapshot.state.get("command_window")) or RECENT_COMMANDS
        held = len(snapshot.state.get("recent_commands") or [])
        if written < window and held >= written and snapshot.version > held:
            return max(1, snapshot.version - window + 1)
        return snapshot.version + 1

    def _after(self, snapshot: ActorSnapshot | None) -> int:
        """Where the events to read start in the stream (0: unknown, search for them)."""
        if snapshot is None or self._window_start(snapshot) <= snapshot.version:
            return 0  # the snapshot's sequence is past the first event wanted
        return _int(snapshot.state.get("sequence"))

    def _within_history(self, snapshot: ActorSnapshot, stored_version: int) -> bool:
        """Whether ``snapshot`` is at or below the actor's last stored version.

        A snapshot above it describes events that were never stored (one written
        straight into the bucket, say): loading it would make its state the actor's
        and number the next event after it, so it is ignored and the events replayed.
        """
        if snapshot.version <= stored_version:
            return True
        logger.warning(
            "ignoring snapshot of %s at version %s: the actor's last stored version is %s",
            snapshot.actor_id,
            snapshot.version,
            stored_version,
        )
        return False

    def _build(
        self,
        actor_id: str,
        snapshot: ActorSnapshot | None,
        events: list[Event],
        at_version: int | None,
        subjects: Mapping[str, str] | None = None,
    ) -> A:
        obj = self.model(actor_id)
        name = self.model.__name__
        if snapshot is not None:
            # The key ids an opened snapshot was sealed with, then the later events'.
            obj._subjects.update(snapshot.state.get("key_ids") or {})
        obj._subjects.update(subjects or {})
        if snapshot is not None:
            try:
                obj.set_snapshot_state(snapshot.state["state"])
            except Exception as exc:  # the project's code, on stored state
                raise AggregateReplayError(actor_id, snapshot.version, exc, aggregate=name) from exc
            obj.version = snapshot.version
            obj._last_sequence = _int(snapshot.state.get("sequence"))
            recent = [
                (pair[0], _int(pair[1]))
                for pair in snapshot.state.get("recent_commands") or []
                if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
            ]
            # Events at or before the snapshot were read only when its list of commands
            # may be shorter than this class's window (_window_start): their commands
            # fill it up.
            recent += _commands_of(e for e in events if e.version <= snapshot.version)
            obj._recent_commands.extend(_by_last_version(recent))
        for event in events:
            if at_version is not None and event.version > at_version:
                break
            if event.version <= obj.version:
                continue
            try:
                obj._apply(self.model.upcast(event))
            except Exception as exc:
                # Whatever a handler or upcaster raises on stored data (or the
                # AggregateError of a type without a handler) is a fact about the
                # history: one type, so callers need not guess the project's exceptions.
                raise AggregateReplayError(
                    actor_id,
                    event.version,
                    exc,
                    aggregate=name,
                    event_type=event.event_type,
                    sequence=event.sequence or 0,
                ) from exc
        if obj.version == 0:
            raise self.model.DoesNotExist(f"no {self.model.__name__} with actor id {actor_id!r}")
        return obj

    def _check_at_version(self, at_version: int | None) -> None:
        if at_version is not None and (not _positive_int(at_version)):
            raise ValueError(f"at_version must be a positive integer, got {at_version!r}")

    def get(self, actor_id: str, *, at_version: int | None = None) -> A:
        """Load the actor's current state, or its state as of ``at_version``.

        Raises ``Model.DoesNotExist`` when the actor has no events.
        """
        self._check_at_version(at_version)
        if tracing.enabled and tracing.recording():
            with tracing.span("aether load", attributes=self._load_attributes(actor_id)) as span:
                try:
                    obj = self._load(actor_id, at_version)
                except AggregateDoesNotExist as exc:
                    # An answer, not a failure (update(create=True) expects it).
                    span.set_attribute("aether.version", 0)
                    missing = exc
                else:
                    span.set_attribute("aether.version", obj.version)
                    return obj
            raise missing
        return self._load(actor_id, at_version)

    def _load_attributes(self, actor_id: str) -> dict[str, Any]:
        return {
            "aether.namespace": self.model._meta.namespace or "",
            "aether.actor_id": actor_id,
            "aether.aggregate": self.model.__name__,
        }

    def _load(self, actor_id: str, at_version: int | None) -> A:
        store = self.model.get_store()
        snapshot = None
        if self.model._meta.snapshot_every:
            snapshot = self._usable_snapshot(store.get_latest_snapshot(actor_id), at_version)
            if snapshot is not None and self.model._meta.personal_data:
                # Opened before the events are read: one that cannot be (a subject
                # forgotten) means replaying them all.
                snapshot = privacy.open_snapshot(self.model, snapshot)
        try:
            events = store.get_events(
                actor_id, self._window_start(snapshot), after_sequence=self._after(snapshot)
            )
            # Nothing stored after the snapshot: it must not claim more than is stored.
            if (
                snapshot is not None
                and not _past(snapshot, events)
                and not self._within_history(snapshot, store.get_latest_version(actor_id))
            ):
                snapshot, events = None, store.get_events(actor_id)
        except ReplayError as exc:
            raise self._undecodable(actor_id, exc) from exc
        subjects: dict[str, str] = {}
        if self.model._meta.personal_data:
            events, subjects = privacy.open_history(
                self.model,
                events,
                after_version=snapshot.version if snapshot else 0,
                in_place=store.fresh_reads,
            )
        return self._build(actor_id, snapshot, events, at_version, subjects)

    async def aget(self, actor_id: str, *, at_version: int | None = None) -> A:
        """Async twin of :meth:`get`."""
        self._check_at_version(at_version)
        if tracing.enabled and tracing.recording():
            with tracing.span("aether load", attributes=self._load_attributes(actor_id)) as span:
                try:
                    obj = await self._aload(actor_id, at_version)
                except AggregateDoesNotExist as exc:
                    # An answer, not a failure (update(create=True) expects it).
                    span.set_attribute("aether.version", 0)
                    missing = exc
                else:
                    span.set_attribute("aether.version", obj.version)
                    return obj
            raise missing
        return await self._aload(actor_id, at_version)

    async def _aload(self, actor_id: str, at_version: int | None) -> A:
        store = self.model.get_store()
        snapshot = None
        if self.model._meta.snapshot_every:
            snapshot = self._usable_snapshot(await store.aget_latest_snapshot(actor_id), at_version)
            if snapshot is not None and self.model._meta.personal_data:
                snapshot = await privacy.aopen_snapshot(self.model, snapshot)
        try:
            events = await store.aget_events(
                actor_id, self._window_start(snapshot), after_sequence=self._after(snapshot)
            )
            if (
                snapshot is not None
                and not _past(snapshot, events)
                and not self._within_history(snapshot, await store.aget_latest_version(actor_id))
            ):
                snapshot, events = None, await store.aget_events(actor_id)
        except ReplayError as exc:
            raise self._undecodable(actor_id, exc) from exc
        subjects: dict[str, str] = {}
        if self.model._meta.personal_data:
            events, subjects = await privacy.aopen_history(
                self.model,
                events,
                after_version=snapshot.version if snapshot else 0,
                in_place=store.fresh_reads,
            )
        return self._build(actor_id, snapshot, events, at_version, subjects)

    def _undecodable(self, actor_id: str, exc: ReplayError) -> UndecodableEventError:
        """The store's ReplayError, as the aggregate's replay error (still a ReplayError)."""
        return UndecodableEventError(actor_id, 0, exc, aggregate=self.model.__name__)

    def create(self, actor_id: str) -> A:
        """A new, empty aggregate (version 0); its first save fails if the actor exists."""
        return self.model(actor_id)

    async def acreate(self, actor_id: str) -> A:
        """Async twin of :meth:`create`."""
        return self.model(actor_id)

    def exists(self, actor_id: str) -> bool:
        """Whether the actor has any event."""
        return self.model.get_store().get_latest_version(actor_id) > 0

    async def aexists(self, actor_id: str) -> bool:
        """Async twin of :meth:`exists`."""
        return await self.model.get_store().aget_latest_version(actor_id) > 0

    def actor_ids(self) -> list[str]:
        """Ids of every actor of this namespace."""
        return self.model.get_store().get_actor_ids()

    def iterator(self) -> Iterator[A]:
        """Load every actor of the namespace, one at a time."""
        for actor_id in self.actor_ids():
            try:
                yield self.get(actor_id)
            except AggregateDoesNotExist:
                continue

    async def aiterator(self) -> AsyncIterator[A]:
        """Async twin of :meth:`iterator`."""
        for actor_id in await self.model.get_store().aget_actor_ids():
            try:
                yield await self.aget(actor_id)
            except AggregateDoesNotExist:
                continue

    # --- commands with retries -----------------------------------------------------------
    def _delay(self, attempt: int) -> float:
        # Full jitter: spreads competing writers out instead of retrying in lock-step.
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))

    def update(
        self,
        actor_id: str,
        command: Callable[[A], Any],
        *,
        retries: int = 5,
        create: bool = False,
        command_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> A:
        """Load the actor, run ``command`` on it and save; on conflict reload and run it again.

        ``command`` must only decide from the aggregate's state (it may run more
        than once). DomainError and other errors from the command are not
        retried. With ``create=True`` a missing actor starts empty. Raises
        UpdateRetriesExhausted after ``retries`` conflicting retries.

        With ``command_id``, the events carry it and a command id the actor already
        holds among its latest ``command_window`` commands is not run again: the
        actor is returned as it is (``obj.command_replayed`` is then True).
        ``metadata`` entries are added to every event the command records.
        """
        cached = self._take_cached(actor_id)
        attempt = 0
        while True:
            obj = cached if cached is not None else self._load_for_update(actor_id, create)
            if self._already_done(obj, command_id):
                self._keep(obj)
                return obj
            with obj.command_context(command_id, metadata):
                command(obj)
            try:
                obj.save()
            except VersionConflictError as exc:
                delay = self._conflict_delay(exc, actor_id, cached is not None, attempt, retries)
                if delay is not None:
                    time.sleep(delay)
                    attempt += 1
                cached = None
                continue
            self._keep(obj)
            return obj

    @staticmethod
    def _already_done(obj: Aggregate, command_id: str | None) -> bool:
        done = command_id is not None and obj.recorded_version(command_id) is not None
        obj.command_replayed = done
        return done

    def _conflict_delay(
        self,
        conflict: VersionConflictError,
        actor_id: str,
        was_cached: bool,
        attempt: int,
        retries: int,
    ) -> float | None:
        """What :meth:`update` and :meth:`aupdate` do after a conflict: reload at once
        (None: the cached copy was stale, which is not a retry), or wait this long and
        retry; raise UpdateRetriesExhausted once ``retries`` retries have failed."""
        if was_cached:
            return None
        if attempt == retries:
            raise UpdateRetriesExhausted(actor_id, attempt + 1) from conflict
        return self._delay(attempt)

    def _load_for_update(self, actor_id: str, create: bool) -> A:
        try:
            return self.get(actor_id)
        except AggregateDoesNotExist:
            if not create:
                raise
            return self.model(actor_id)

    async def aupdate(
        self,
        actor_id: str,
        command: Callable[[A], Any | Awaitable[Any]],
        *,
        retries: int = 5,
        create: bool = False,
        command_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> A:
        """Async twin of :meth:`update`; ``command`` may be a coroutine function."""
        cached = self._take_cached(actor_id)
        attempt = 0
        while True:
            if cached is not None:
                obj = cached
            else:
                try:
                    obj = await self.aget(actor_id)
                except AggregateDoesNotExist:
                    if not create:
                        raise
                    obj = self.model(actor_id)
            if self._already_done(obj, command_id):
                self._keep(obj)
                return obj
            with obj.command_context(command_id, metadata):
                result = command(obj)
                if inspect.isawaitable(result):
                    await result
            try:
                await obj.asave()
            except VersionConflictError as exc:
                delay = self._conflict_delay(exc, actor_id, cached is not None, attempt, retries)
                if delay is not None:
                    await asyncio.sleep(delay)
                    attempt += 1
                cached = None
                continue
            self._keep(obj)
            return obj


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _past(snapshot: ActorSnapshot, events: list[Event]) -> bool:
    """Whether any of ``events`` comes after ``snapshot``."""
    return bool(events) and events[-1].version > snapshot.version


def _commands_of(events: Iterable[Event]) -> list[tuple[str, int]]:
    """(command id, version) of each event that has a command id, in version order."""
    return [(e.command_id, e.version) for e in events if e.command_id]


def _by_last_version(pairs: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """``pairs`` of (command id, version) in version order, each command once, at the
    version of its last event (a command may record several)."""
    last: dict[str, int] = {}
    for command_id, version in pairs:
        last[command_id] = max(version, last.get(command_id, 0))
    return sorted(last.items(), key=lambda pair: pair[1])


# --- what the system checks need ------------------------------------------------------------


def _class_tree(klass: type) -> ast.Module:
    """The parsed source of ``klass``."""

    def read() -> ast.Module:
        return ast.parse(textwrap.dedent(inspect.getsource(klass)))

    try:
        return read()
    except SystemError:
        # CPython 3.11 (before 3.11.8) can miscount the AST constructor's recursion
        # depth in a thread that earlier caught a RecursionError (gh-106905); that hits
        # inspect.getsource too, which parses the module to find a class. A fresh
        # thread reads the same source fine.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(read).result()


def recorded_event_types(model: type[Aggregate]) -> set[str] | None:
    """Event types the class's source passes to ``self.record(...)`` as literals.

    None when the source cannot be read (then the check stays silent).
    """
    found: set[str] = set()
    for klass in model.__mro__:
        if klass is Aggregate or not issubclass(klass, Aggregate):
            continue
        try:
            tree = _class_tree(klass)
        except (OSError, TypeError, SyntaxError):
            return None
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "record"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.add(node.args[0].value)
    return found
