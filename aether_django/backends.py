"""Backends: an event store and an event bus that work together, chosen as one.

``AETHER["BACKEND"]`` names one of :data:`BACKENDS` (``"nats"``, the default, or
``"memory"``) or, by dotted path, an object with the same attributes as
:class:`Backend`. A store and a bus only make sense in pairs: the NATS bus reads
what the JetStream store wrote, and the in-process bus hears of saves only when
the in-memory store tells it. So the pair is one setting, not two.

This module names classes by dotted path and imports nothing heavy itself, so
that choosing ``"memory"`` never imports nats-py's JetStream store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bus.base import BaseEventBus
    from .events import Event
    from .store.base import EventStore

__all__ = ["BACKENDS", "MEMORY", "NATS", "Backend"]


@dataclass(frozen=True)
class Backend:
    """A store class and a bus class (each a class or its dotted path).

    ``store_publishes``: the store hands each saved event to the process's bus
    itself, because the bus cannot see saves otherwise (the in-memory pair). The
    store facade then builds the store with ``publish=``:meth:`publish_saved`.
    """

    store_class: type[EventStore] | str
    bus_class: type[BaseEventBus] | str
    store_publishes: bool = False

    @staticmethod
    def publish_saved(namespace: str, events: Sequence[Event]) -> None:
        """Hand saved events to the process's bus, in order.

        The bus is looked up on each save: ``reset_event_bus()`` (a settings change)
        may have replaced it since the store was built. Kept here rather than in the
        store facade so that the store and bus packages never import each other.
        """
        from .bus import get_event_bus

        bus = get_event_bus()
        for event in events:
            bus.publish(namespace, event)

    @classmethod
    def of(cls, value: Any) -> Backend:
        """``value`` as a Backend: itself, or an object with the same attributes."""
        if isinstance(value, Backend):
            return value
        try:
            return cls(
                store_class=value.store_class,
                bus_class=value.bus_class,
                store_publishes=bool(getattr(value, "store_publishes", False)),
            )
        except AttributeError as exc:
            raise TypeError(
                f"a backend needs store_class and bus_class attributes; {value!r} has not: {exc}"
            ) from exc


#: JetStream keeps the events and is the bus: every saved event reaches subscribers
#: in every process, from any start position (the default).
NATS = Backend(
    store_class="aether_django.store.jetstream.JetStreamEventStore",
    bus_class="aether_django.bus.nats.NATSEventBus",
)

#: Everything in this process's memory, for tests and demos without a nats-server:
#: the store publishes each saved event to the in-process bus.
MEMORY = Backend(
    store_class="aether_django.store.memory.InMemoryEventStore",
    bus_class="aether_django.bus.local.LocalEventBus",
    store_publishes=True,
)

#: The names ``AETHER["BACKEND"]`` accepts besides a dotted path.
BACKENDS: dict[str, Backend] = {"nats": NATS, "memory": MEMORY}
