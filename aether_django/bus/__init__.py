"""Event buses. ``get_event_bus()`` returns the process's configured bus.

``bus.local.EventBus`` delivers within one process; ``bus.nats.NATSEventBus``
(the default) delivers every saved event to subscribers in every process,
through JetStream.
"""

from __future__ import annotations

from .local import (
    Delivery,
    EventBus,
    Subscription,
    SubscriptionClosedError,
    SubscriptionOverflowError,
)

__all__ = [
    "Delivery",
    "EventBus",
    "Subscription",
    "SubscriptionClosedError",
    "SubscriptionOverflowError",
]
