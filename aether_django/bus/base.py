"""The event bus contract: what every bus offers, and how it says what it does not.

:class:`BaseEventBus` declares the whole interface that code using
``get_event_bus()`` may rely on. Two buses implement it:

* ``bus.local.LocalEventBus`` delivers within one process what is published to
  it (and, in the ``"memory"`` backend, what the in-memory store saves);
* ``bus.nats.NATSEventBus`` delivers every event saved in JetStream to
  subscribers in every process, from any start position, durably if asked.

Not every bus can do everything: an in-process bus keeps no history, so it
cannot start a subscription at ``"all"`` or resume a durable one. Each bus
lists what it supports in :attr:`BaseEventBus.features`, and asking for
anything else raises :class:`UnsupportedSubscriptionError` when subscribing,
never a subscription that silently delivers less. The shared test suite
``aether_django.testing.contract.EventBusContract`` holds every bus to this.

Names follow Django: the plain name is sync, the ``a``-prefixed twin async.
This module imports neither Django nor nats.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import AetherError, InvalidNameError
from ..patterns import SubscriptionFilter, is_exact, validate_pattern

if TYPE_CHECKING:
    from ..events import Event
    from .local import Callback, ErrorCallback, Subscription

__all__ = [
    "BaseEventBus",
    "Feature",
    "Start",
    "UnsupportedSubscriptionError",
    "check_durable",
    "check_start",
]

#: Where a subscription starts: ``"new"`` (events after it is ready), ``"all"``
#: (every stored event), a stream sequence (one namespace), a mapping namespace ->
#: sequence, or a ``datetime`` (events stored at or after it).
Start = str | int | datetime | Mapping[str, int]


class Feature(enum.StrEnum):
    """Parts of the contract a bus may lack; ``features`` lists those it has."""

    #: ``start="all"``: every stored event first.
    START_ALL = "start-all"
    #: ``start=`` a stream sequence or a mapping namespace -> sequence.
    START_SEQUENCE = "start-sequence"
    #: ``start=`` a datetime.
    START_TIME = "start-time"
    #: ``durable=`` a name: positions are kept and a subscription resumes after them.
    DURABLE = "durable"
    #: ``overflow="wait"``: a full buffer holds the source back instead of ending.
    OVERFLOW_WAIT = "overflow-wait"
    #: ``readable=``: only namespaces matching one of these patterns are read.
    READABLE = "readable"
    #: Saved events reach subscribers in other processes.
    CROSS_PROCESS = "cross-process"


class UnsupportedSubscriptionError(AetherError, NotImplementedError):
    """The bus cannot do what the subscription asks (see ``BaseEventBus.features``)."""

    def __init__(self, bus: BaseEventBus, feature: Feature, detail: str) -> None:
        self.feature = feature
        super().__init__(
            f"{type(bus).__name__} does not support {detail} ({feature.value}); "
            'use AETHER["BACKEND"] = "nats" for it'
        )


def check_durable(name: str | None) -> None:
    """Reject a durable name that cannot be a key (letters, digits, '-' and '_')."""
    if name is None:
        return
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise InvalidNameError(
            f"durable subscription name {name!r} must be letters, digits, '-' and '_'"
        )


def check_start(start: Start, namespace_pattern: str | None = None) -> None:
    """Reject a start position that is no :data:`Start`, or a single sequence for a
    pattern that can match several namespaces."""
    if start in ("new", "all") or isinstance(start, datetime):
        return
    if isinstance(start, int) and not isinstance(start, bool) and start >= 1:
        if namespace_pattern is not None and not is_exact(validate_pattern(namespace_pattern)):
            raise ValueError(
                f"start={start} is one stream's sequence and {namespace_pattern!r} can match "
                "several namespaces; pass a dict of namespace to sequence instead"
            )
        return
    if isinstance(start, Mapping) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in start.values()
    ):
        return
    raise ValueError(
        "start must be 'new', 'all', a stream sequence >= 1, a dict of namespace to "
        f"sequence, or a datetime; got {start!r}"
    )


def _start_feature(start: Start) -> Feature | None:
    if start == "all":
        return Feature.START_ALL
    if isinstance(start, datetime):
        return Feature.START_TIME
    if start == "new":
        return None
    return Feature.START_SEQUENCE


class BaseEventBus(ABC):
    """The interface of every event bus.

    Subscribing:
        :meth:`subscribe` / :meth:`asubscribe` with a namespace pattern, a filter
        (event types, actor pattern), a start position, an optional durable name,
        a bounded buffer (``buffer_size`` deliveries, ``buffer_bytes`` bytes of
        stored events) and what a full buffer does (``overflow``: ``"end"``
        raises SubscriptionOverflowError with a resume point to the subscriber;
        ``"wait"`` holds the source back). ``readable`` narrows a pattern to the
        namespaces matching one of the given patterns. Without ``callback`` the
        subscription is an async iterator; with one, the callback receives each
        delivery and ``on_error`` the error that ends the subscription.

    Handler errors:
        a callback that raises (or an iterating subscriber that calls ``nack()``)
        gets the delivery again, ``handler_retries`` times after ``handler_backoff``
        seconds doubling; then the subscription ends with SubscriptionHandlerError
        naming the event, never going past it silently.

    Publishing and closing:
        :meth:`publish` delivers a transient event (not stored) at most once;
        :meth:`unsubscribe` ends one subscription, :meth:`close` all of them.
        :attr:`metrics` counts published, delivered, filtered and overflowed
        deliveries and the live subscriptions.

    A bus that lacks a part of this lists only what it has in :attr:`features`
    and raises :class:`UnsupportedSubscriptionError` for the rest.
    """

    #: The optional parts of the contract this bus supports.
    features: ClassVar[frozenset[Feature]] = frozenset()

    def __init__(self, **options: Any) -> None:
        """Buses are built with keyword arguments only. ``get_event_bus()`` passes
        ``runtime``, ``subject_prefix``, ``node_id``, ``buffer_size``,
        ``buffer_bytes``, ``replicas``, ``timeout``, ``handler_retries`` and
        ``handler_backoff``; a bus takes those it needs and ignores the rest."""
        super().__init__()

    @property
    @abstractmethod
    def metrics(self) -> dict[str, int]:
        """Counters: published, delivered, filtered, overflowed, subscriptions."""

    @abstractmethod
    def subscribe(
        self,
        namespace_pattern: str,
        filter: SubscriptionFilter | None = None,
        *,
        buffer_size: int | None = None,
        callback: Callback | None = None,
        start: Start = "new",
        durable: str | None = None,
        overflow: str = "end",
        on_error: ErrorCallback | None = None,
        readable: Collection[str] | None = None,
        buffer_bytes: int | None = None,
    ) -> Subscription:
        """Subscribe to the events of the namespaces matching ``namespace_pattern``.

        Without ``callback`` this must run on the event loop that iterates the
        subscription. A bus may still be setting the subscription up when this
        returns in async code; :meth:`asubscribe` waits until it is ready.
        """

    async def asubscribe(
        self,
        namespace_pattern: str,
        filter: SubscriptionFilter | None = None,
        *,
        buffer_size: int | None = None,
        callback: Callback | None = None,
        start: Start = "new",
        durable: str | None = None,
        overflow: str = "end",
        on_error: ErrorCallback | None = None,
        readable: Collection[str] | None = None,
        buffer_bytes: int | None = None,
    ) -> Subscription:
        """Async twin of :meth:`subscribe` that returns once the subscription is
        ready, so that ``start="new"`` is exact: every event saved after this
        returns is delivered.

        This default suits a bus whose :meth:`subscribe` is ready at once.
        """
        return self.subscribe(
            namespace_pattern,
            filter,
            buffer_size=buffer_size,
            callback=callback,
            start=start,
            durable=durable,
            overflow=overflow,
            on_error=on_error,
            readable=readable,
            buffer_bytes=buffer_bytes,
        )

    def unsubscribe(self, subscription: Subscription) -> None:
        """End one subscription (the same as ``subscription.close()``)."""
        subscription.close()

    @abstractmethod
    def publish(self, namespace: str, event: Event) -> int:
        """Deliver a transient event (not stored) at most once; how many local
        subscriptions it was offered to."""

    @abstractmethod
    def close(self) -> None:
        """Close every subscription of this bus."""

    # --- for implementations ------------------------------------------------------------
    def check_subscription(
        self,
        namespace_pattern: str,
        *,
        start: Start,
        durable: str | None,
        overflow: str,
        readable: Collection[str] | None,
    ) -> frozenset[str] | None:
        """Validate a subscription's options against the contract and :attr:`features`.

        Raises ValueError (or InvalidNameError) for values no bus accepts and
        UnsupportedSubscriptionError for what this bus lacks; returns ``readable``
        as validated patterns.
        """
        validate_pattern(namespace_pattern)
        check_start(start, namespace_pattern)
        check_durable(durable)
        if overflow not in ("end", "wait"):
            raise ValueError('overflow must be "end" or "wait"')
        wanted = _start_feature(start)
        if wanted is not None and wanted not in self.features:
            raise UnsupportedSubscriptionError(self, wanted, f"start={start!r}")
        if durable is not None and Feature.DURABLE not in self.features:
            raise UnsupportedSubscriptionError(
                self, Feature.DURABLE, f"durable subscriptions (durable={durable!r})"
            )
        if overflow == "wait" and Feature.OVERFLOW_WAIT not in self.features:
            raise UnsupportedSubscriptionError(self, Feature.OVERFLOW_WAIT, 'overflow="wait"')
        if readable is None:
            return None
        if isinstance(readable, str):
            raise TypeError("readable must be a collection of patterns, not one string")
        if Feature.READABLE not in self.features:
            raise UnsupportedSubscriptionError(self, Feature.READABLE, "readable=")
        return frozenset(validate_pattern(p) for p in readable)
