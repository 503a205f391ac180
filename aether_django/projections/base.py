"""Declaring projections: the ``Projection`` base class, ``@on`` handlers, ``Meta``, the registry.

A projection turns the events of a namespace (or of every namespace a pattern
matches) into rows of ordinary Django models. Its class says where the events come
from and which models it owns; its ``@on("EventType")`` methods write the rows. The
runner (:mod:`aether_django.projections.runner`) applies them, a batch of events and
the advance of the checkpoint in one database transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from django.db import DEFAULT_DB_ALIAS, OperationalError, models

from ..errors import InvalidNameError, ProjectionError, ProjectionTimeoutError
from ..events import Event
from ..patterns import is_exact, matches, validate_pattern

if TYPE_CHECKING:
    from ..aggregates import Aggregate

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_ON_ERROR",
    "ForgetContext",
    "Projection",
    "ProjectionContext",
    "all_projections",
    "get_projection",
    "on",
]

#: Events applied in one transaction unless ``Meta.batch_size`` says otherwise.
DEFAULT_BATCH_SIZE = 100
#: What a handler that raises gets unless ``Meta.on_error`` says otherwise: its batch
#: is rolled back and tried again ``retries`` times, after ``backoff`` seconds
#: doubling up to ``max_backoff``; then the projection stops at that event (failed).
DEFAULT_ON_ERROR: Mapping[str, float] = {"retries": 3, "backoff": 0.5, "max_backoff": 30.0}

META_OPTIONS = frozenset(
    {
        "abstract",
        "source",
        "models",
        "name",
        "batch_size",
        "database",
        "on_error",
        "subject_fields",
    }
)

H = TypeVar("H", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class ProjectionContext:
    """What a handler knows about the event besides the event itself."""

    #: The namespace the event was saved in.
    namespace: str
    #: The event's position in that namespace's stream.
    sequence: int
    #: The projection's name (its checkpoints' key).
    projection: str
    #: The database alias the handler's writes must go to (``Meta.database``).
    database: str
    #: The cluster node running the projection (docs/projections.md#placement), or None
    #: when it runs outside a node (``aether_projections run``, a rebuild).
    node: str | None = None
    #: The event's correlation id (``event.metadata["correlationId"]``): the same for
    #: everything one request or command started. None for an event stored without one
    #: (before correlation ids existed, or appended raw without it).
    correlation_id: str | None = None
    #: The event's causation id (``event.metadata["causationId"]``): what directly
    #: caused it (a request, a command, another event). None when it has none.
    causation_id: str | None = None


@dataclass(frozen=True, slots=True)
class ForgetContext:
    """What :meth:`Projection.on_forget` knows besides the subject id."""

    #: The projection's name.
    projection: str
    #: The database alias its writes must go to (``Meta.database``): the hook runs in
    #: the transaction that deleted the subject's rows there.
    database: str
    #: Rows of ``Meta.subject_fields`` deleted just before, per model label.
    deleted: Mapping[str, int]


def on(event_type: str) -> Callable[[H], H]:
    """Mark a method as the handler of ``event_type``: ``handler(self, event, context)``."""
    if not isinstance(event_type, str) or not event_type:
        raise ProjectionError("@on() takes an event type, a non-empty string")

    def mark(fn: H) -> H:
        fn._aether_projects = event_type  # type: ignore[attr-defined]
        return fn

    return mark


class Options:
    """A projection class's ``Meta``, checked; problems are kept for the system checks
    (``aether_django.E501``), and a projection with any is never run."""

    def __init__(self, projection: type[Projection], meta: type | None) -> None:
        raw = {k: v for k, v in vars(meta).items() if not k.startswith("_")} if meta else {}
        raw.pop("abstract", None)
        self.label = f"{projection.__module__}.{projection.__qualname__}"
        self.problems: list[str] = [
            f"unknown Meta option {unknown!r}" for unknown in sorted(set(raw) - META_OPTIONS)
        ]
        # An invalid source covers no namespace: "" matches none.
        self.source: str = ""
        try:
            self.source = validate_pattern(raw.get("source"), what="Meta.source")
        except InvalidNameError as exc:
            self.problems.append(str(exc))
        owned = raw.get("models", ())
        if isinstance(owned, type | str) or not all(
            isinstance(m, type) and issubclass(m, models.Model) for m in owned
        ):
            self.problems.append("Meta.models must be a list of Django model classes")
            owned = ()
        self.models: tuple[type[models.Model], ...] = tuple(owned)
        self.name: str = raw.get("name") or self.label
        if not isinstance(self.name, str) or len(self.name) > 200:
            self.problems.append("Meta.name must be a string of at most 200 characters")
            self.name = self.label
        self.batch_size: int = raw.get("batch_size", DEFAULT_BATCH_SIZE)
        if (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, int)
            or (self.batch_size < 1)
        ):
            self.problems.append("Meta.batch_size must be a positive integer")
            self.batch_size = DEFAULT_BATCH_SIZE
        self.database: str = raw.get("database", DEFAULT_DB_ALIAS)
        if not isinstance(self.database, str):
            self.problems.append("Meta.database must be a database alias")
            self.database = DEFAULT_DB_ALIAS
        given = raw.get("on_error", {})
        on_error = {**DEFAULT_ON_ERROR, **(given if isinstance(given, Mapping) else {})}
        if (
            not isinstance(given, Mapping)
            or set(on_error) != set(DEFAULT_ON_ERROR)
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
                for v in on_error.values()
            )
        ):
            self.problems.append(
                "Meta.on_error takes retries, backoff and max_backoff, numbers >= 0"
            )
            on_error = dict(DEFAULT_ON_ERROR)
        self.subject_fields: dict[type[models.Model], str] = {}
        given_fields = raw.get("subject_fields", {})
        if not isinstance(given_fields, Mapping) or not all(
            isinstance(m, type) and issubclass(m, models.Model) and isinstance(f, str) and f
            for m, f in given_fields.items()
        ):
            self.problems.append(
                "Meta.subject_fields must map Django model classes to the name of the field "
                "holding a row's data subject id"
            )
        else:
            self.subject_fields = dict(given_fields)
            for model in self.subject_fields:
                if model not in self.models:
                    # Only rows the projection owns (and would clear on a rebuild) are
                    # its to delete.
                    self.problems.append(
                        f"Meta.subject_fields names {model._meta.label}, which is not in "
                        "Meta.models"
                    )
        self.retries = int(on_error["retries"])
        self.backoff = float(on_error["backoff"])
        self.max_backoff = float(on_error["max_backoff"])

    def covers(self, namespace: str) -> bool:
        """Whether ``namespace`` is one of the source's namespaces."""
        return bool(self.source) and matches(self.source, namespace)

    @property
    def exact(self) -> bool:
        """Whether the source is one namespace rather than a pattern."""
        return bool(self.source) and is_exact(self.source)


_registry: dict[str, type[Projection]] = {}


def all_projections() -> list[type[Projection]]:
    """Every projection class declared so far, by name."""
    return sorted(_registry.values(), key=lambda p: (p._meta.name, p._meta.label))


def get_projection(name: str) -> type[Projection]:
    """The projection class called ``name`` (its ``Meta.name``, by default its dotted
    path); a short class name works too when only one projection has it."""
    by_name = [p for p in _registry.values() if p._meta.name == name]
    if len(by_name) == 1:
        return by_name[0]
    by_class = [p for p in _registry.values() if p.__name__ == name]
    if not by_name and len(by_class) == 1:
        return by_class[0]
    raise ProjectionError(
        f"no projection called {name!r}"
        if not (by_name or by_class)
        else f"several projections are called {name!r} (give each its own Meta.name)"
    )


class Projection:
    """Base class of projections; see the module docstring.

    Concrete subclasses declare ``Meta.source`` (a namespace or a pattern) and
    ``Meta.models`` (the models they own, cleared on a rebuild), and optionally:

    * ``Meta.name``: the checkpoints' key (default: the class's dotted path);
    * ``Meta.batch_size``: events per transaction (default 100);
    * ``Meta.database``: the alias of the checkpoint and the handlers' writes
      (default ``"default"``);
    * ``Meta.on_error``: ``retries``, ``backoff`` and ``max_backoff`` of a failing
      batch (default 3, 0.5 s and 30 s) before the projection stops at the event;
    * ``Meta.subject_fields``: ``{Model: "field"}``, the read-model rows that belong to
      a data subject (the field holds its id): ``aether_django.privacy.forget()``
      deletes them (docs/privacy.md#read-models).

    Override :meth:`on_forget` to erase what else a projection keeps of a data subject.

    A class with no ``Meta`` of its own, or with ``Meta.abstract = True``, is a base
    for others: not registered, never run.
    """

    _meta: ClassVar[Options]
    _handlers: ClassVar[dict[str, str]]
    #: Whether handling an event has effects outside the database (a process manager's
    #: commands), so that replaying the history is not harmless (operations.reset).
    issues_commands: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        meta = cls.__dict__.get("Meta")
        handlers: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                event_type = getattr(value, "_aether_projects", None)
                if event_type is not None:
                    handlers[event_type] = attr
        cls._handlers = handlers
        # Like Django's abstract models: a base of projections (Meta.abstract, or no
        # Meta of its own) has handlers to inherit but no source, and is not registered.
        if meta is None or getattr(meta, "abstract", False):
            return
        cls._meta = Options(cls, meta)
        # Keyed by the dotted path, so a module reloaded in development replaces its
        # classes instead of adding duplicates.
        _registry[cls._meta.label] = cls

    # --- applying ------------------------------------------------------------------------
    @classmethod
    def upcaster_for(cls, namespace: str) -> Callable[[Event], Event] | None:
        """The namespace's aggregate class's upcasting chain, when one is registered."""
        from ..aggregates import get_aggregate_class

        model: type[Aggregate] | None = get_aggregate_class(namespace)
        return model.upcast if model is not None else None

    def handle(self, event: Event, context: ProjectionContext) -> None:
        """Call the handler of ``event``'s type; events without one are passed over."""
        name = self._handlers.get(event.event_type)
        if name is not None:
            getattr(self, name)(event, context)

    # --- forgetting a data subject (docs/privacy.md#read-models) -----------------------------
    def on_forget(self, subject_id: str, context: ForgetContext) -> None:
        """Erase what this projection keeps of ``subject_id`` beyond its
        ``Meta.subject_fields`` rows (already deleted). Called by
        ``aether_django.privacy.forget()`` in the calling process, inside a transaction
        on ``context.database``; it may run again for the same subject (a forget run
        again to finish), so it must be idempotent. By default it does nothing."""

    @classmethod
    def forgets(cls) -> bool:
        """Whether forgetting a data subject concerns this projection: it declares
        ``Meta.subject_fields`` or overrides :meth:`on_forget`."""
        return bool(cls._meta.subject_fields) or cls.on_forget is not Projection.on_forget

    # --- reading your own writes -----------------------------------------------------------
    @classmethod
    def _target(
        cls, event_or_sequence: Aggregate | Event | int, namespace: str | None
    ) -> tuple[str, int]:
        from ..aggregates import Aggregate

        sequence: int | None
        if isinstance(event_or_sequence, Aggregate):
            namespace = namespace or event_or_sequence._meta.namespace
            sequence = event_or_sequence._last_sequence
        elif isinstance(event_or_sequence, Event):
            sequence = event_or_sequence.sequence
        elif isinstance(event_or_sequence, int) and not isinstance(event_or_sequence, bool):
            sequence = event_or_sequence
        else:
            raise TypeError("wait_for() takes a saved aggregate, a saved Event or a sequence")
        if not sequence:
            raise ProjectionError(
                "wait_for() needs a stored position: an Event returned by a save (it carries "
                "its sequence), an aggregate after save(), or a stream sequence"
            )
        if namespace is None:
            if not cls._meta.exact:
                raise ProjectionError(
                    f"{cls.__name__} reads the pattern {cls._meta.source!r}: "
                    "pass namespace= to wait_for()"
                )
            namespace = cls._meta.source
        return namespace, sequence

    @classmethod
    def _position(cls, namespace: str) -> tuple[int, str | None] | None:
        """The checkpoint's sequence and state; None when the database is locked."""
        from ..models import ProjectionCheckpoint

        try:
            row = (
                ProjectionCheckpoint.objects.using(cls._meta.database)
                .filter(projection=cls._meta.name, namespace=namespace)
                .values_list("sequence", "state")
                .first()
            )
        except OperationalError:
            # SQLite refuses a read while a runner's transaction holds the table (a
            # shared-cache database, or no WAL mode): the next poll reads it.
            return None
        return (row[0], row[1]) if row else (0, None)

    @classmethod
    def wait_for(
        cls,
        event_or_sequence: Aggregate | Event | int,
        *,
        namespace: str | None = None,
        timeout: float = 10.0,
        interval: float = 0.02,
    ) -> None:
        """Return once this projection has applied the given event (read your own writes).

        ``event_or_sequence`` is an Event as a save returned it (it carries its stream
        sequence), an aggregate after ``save()`` (its last saved event), or a stream
        sequence. ``namespace`` is needed with a sequence or an Event when the source is
        a pattern. Raises ProjectionTimeoutError when the projection's checkpoint has not
        reached it within ``timeout`` seconds.
        """
        wait = _Wait(cls, *cls._target(event_or_sequence, namespace), timeout)
        while not wait.done(cls._position(wait.namespace)):
            time.sleep(interval)

    @classmethod
    async def await_for(
        cls,
        event_or_sequence: Aggregate | Event | int,
        *,
        namespace: str | None = None,
        timeout: float = 10.0,
        interval: float = 0.02,
    ) -> None:
        """Async twin of :meth:`wait_for`."""
        from asgiref.sync import sync_to_async

        wait = _Wait(cls, *cls._target(event_or_sequence, namespace), timeout)
        position = sync_to_async(cls._position)
        # A poll of the database, not of something in this process an Event could signal.
        while True:
            if wait.done(await position(wait.namespace)):
                return
            await asyncio.sleep(interval)


class _Wait:
    """One wait of :meth:`Projection.wait_for` / ``await_for``: the verdict of each poll
    of the checkpoint, and the last position read for the timeout's message."""

    def __init__(
        self, projection: type[Projection], namespace: str, sequence: int, timeout: float
    ) -> None:
        self.projection = projection
        self.namespace = namespace
        self.sequence = sequence
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.position = 0
        self.state: str | None = None

    def done(self, read: tuple[int, str | None] | None) -> bool:
        """Whether ``read`` (None: the database was locked) reached the event; raises
        ProjectionTimeoutError once the deadline has passed without it."""
        if read is not None:
            self.position, self.state = read
            if self.position >= self.sequence:
                return True
        if time.monotonic() >= self.deadline:
            raise ProjectionTimeoutError(
                self.projection._meta.name,
                self.namespace,
                self.sequence,
                self.position,
                self.state,
                self.timeout,
            )
        return False
