"""Event buses. ``get_event_bus()`` returns the process's configured bus.

``bus.base.BaseEventBus`` declares what every bus offers. ``bus.local.LocalEventBus``
delivers within one process; ``bus.nats.NATSEventBus`` (the default) delivers every
saved event to subscribers in every process, through JetStream. The submodules are
primitives that never read settings; ``get_event_bus`` is the facade that builds
the bus of ``AETHER["BACKEND"]`` from them. ``EventBus`` is the deprecated name of
``LocalEventBus``.
"""

from __future__ import annotations

import threading
from typing import Any

from .base import BaseEventBus, Feature, UnsupportedSubscriptionError
from .local import (
    Delivery,
    LocalEventBus,
    Subscription,
    SubscriptionClosedError,
    SubscriptionHandlerError,
    SubscriptionOverflowError,
    deprecated_event_bus,
)

__all__ = [
    "BaseEventBus",
    "Delivery",
    "Feature",
    "LocalEventBus",
    "Subscription",
    "SubscriptionClosedError",
    "SubscriptionHandlerError",
    "SubscriptionOverflowError",
    "UnsupportedSubscriptionError",
    "get_event_bus",
    "reset_event_bus",
]

_bus: BaseEventBus | None = None
_lock = threading.Lock()


def get_event_bus() -> BaseEventBus:
    """The process's event bus (built on first use from ``settings.AETHER``)."""
    global _bus
    bus = _bus
    if bus is not None:
        return bus
    from ..conf import aether_settings, backend
    from ..runtime import get_runtime, node_id

    with _lock:
        if _bus is None:
            s = aether_settings
            bus_class = backend().bus_class
            assert not isinstance(bus_class, str)  # conf.backend() imported it
            _bus = bus_class(
                runtime=get_runtime(),
                subject_prefix=str(s.SUBJECT_PREFIX),
                node_id=node_id(),
                buffer_size=int(s.BUS_BUFFER_SIZE),
                buffer_bytes=int(s.BUS_BUFFER_BYTES),
                replicas=int(s.REPLICAS),
                timeout=float(s.TIMEOUT),
                handler_retries=int(s.BUS_HANDLER_RETRIES),
                handler_backoff=float(s.BUS_HANDLER_BACKOFF),
            )
        return _bus


def reset_event_bus() -> None:
    """Close every subscription and forget the bus; the next get_event_bus() builds anew."""
    global _bus
    with _lock:
        bus, _bus = _bus, None
    if bus is not None:
        bus.close()


def subscription_count() -> float:
    """Live subscriptions of the process's bus (0 before it is built), for the metrics."""
    bus = _bus
    return float(bus.metrics["subscriptions"]) if bus is not None else 0.0


def forget_event_bus() -> None:
    """Forget the bus without closing it: in a child after ``fork()``, whose parent's
    subscriptions live on the parent's loops, so the child starts clean."""
    global _bus
    _bus = None


def __getattr__(name: str) -> Any:
    if name == "EventBus":
        return deprecated_event_bus()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
