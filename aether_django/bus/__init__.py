"""Event buses. ``get_event_bus()`` returns the process's configured bus.

``bus.local.EventBus`` delivers within one process; ``bus.nats.NATSEventBus``
(the default) delivers every saved event to subscribers in every process,
through JetStream. The submodules are primitives that never read settings;
``get_event_bus`` is the facade that builds ``AETHER["BUS_CLASS"]`` from them.
"""

from __future__ import annotations

import os
import threading

from .. import metrics
from .local import (
    Delivery,
    EventBus,
    Subscription,
    SubscriptionClosedError,
    SubscriptionHandlerError,
    SubscriptionOverflowError,
)

__all__ = [
    "Delivery",
    "EventBus",
    "Subscription",
    "SubscriptionClosedError",
    "SubscriptionHandlerError",
    "SubscriptionOverflowError",
    "get_event_bus",
    "reset_event_bus",
]

_bus: EventBus | None = None
_lock = threading.Lock()


def get_event_bus() -> EventBus:
    """The process's event bus (built on first use from ``settings.AETHER``)."""
    global _bus
    bus = _bus
    if bus is not None:
        return bus
    from ..conf import aether_settings
    from ..runtime import get_runtime, node_id

    with _lock:
        if _bus is None:
            s = aether_settings
            _bus = s.BUS_CLASS(
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


def _subscriptions() -> float:
    bus = _bus
    return float(bus.metrics["subscriptions"]) if bus is not None else 0.0


metrics.BUS_SUBSCRIPTIONS.read = _subscriptions


def reset_event_bus() -> None:
    """Close every subscription and forget the bus; the next get_event_bus() builds anew."""
    global _bus
    with _lock:
        bus, _bus = _bus, None
    if bus is not None:
        bus.close()


def _forget_after_fork() -> None:
    # The parent's subscriptions live on the parent's loops; the child starts clean.
    global _bus
    _bus = None


def _connect_reload_hook() -> None:
    from ..conf import on_reload

    on_reload(reset_event_bus)


os.register_at_fork(after_in_child=_forget_after_fork)
_connect_reload_hook()
