"""The "memory" backend: the in-memory store publishes its saves to the in-process bus,
so code that saves aggregates and code that subscribes to them are tested without NATS.

Every test here points AETHER_NATS_URL at a port nothing listens on: any use of NATS
would fail (or hang until the timeout) instead of passing quietly."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

from aether_django.bus import LocalEventBus, UnsupportedSubscriptionError, get_event_bus
from aether_django.patterns import SubscriptionFilter
from aether_django.runtime import get_runtime
from aether_django.store import InMemoryEventStore, get_event_store
from aether_django.testing.contract import ev, unique_namespace
from tests.aggregates.domain import Counter

#: Nothing listens on port 1; a connection attempt there fails at once.
NO_NATS = "nats://127.0.0.1:1"


@pytest.fixture
def memory_backend(monkeypatch):
    monkeypatch.setenv("AETHER_NATS_URL", NO_NATS)
    with override_settings(AETHER={"BACKEND": "memory", "TIMEOUT": 1.0}):
        assert get_runtime().url == NO_NATS
        yield
    InMemoryEventStore._instances.clear()


def test_an_aggregate_save_reaches_a_bus_subscription(memory_backend):
    bus = get_event_bus()
    assert type(bus) is LocalEventBus
    received = []
    subscription = bus.subscribe(
        str(Counter._meta.namespace),
        SubscriptionFilter(event_types=["Incremented"]),
        callback=received.append,
    )
    actor = unique_namespace("counter")
    counter = Counter.objects.create(actor)
    counter.increment(by="a")
    counter.increment(by="b")
    assert received == []  # nothing is published before it is saved
    counter.save()
    assert [d.event.data["by"] for d in received] == ["a", "b"]
    assert [d.event for d in received] == Counter.get_store().get_events(actor)
    assert all(d.namespace == Counter._meta.namespace for d in received)
    subscription.close()


async def test_an_async_subscriber_receives_async_saves_in_order(memory_backend):
    ns = unique_namespace("mem")
    subscription = await get_event_bus().asubscribe(ns)
    store = get_event_store(ns)
    saved = await store.asave_events([ev("a", 1), ev("a", 2)])
    saved.append(await store.asave_event(ev("b", 1)))
    got = [await subscription.next(1.0) for _ in saved]
    assert [d.event for d in got] == saved
    assert [d.sequence for d in got] == [1, 2, 3]
    await subscription.aclose()


def test_a_callback_that_saves_again_is_not_a_deadlock(memory_backend):
    ns = unique_namespace("mem")
    store = get_event_store(ns)
    seen = []

    def react(delivery):
        seen.append(delivery.event.actor_id)
        if delivery.event.actor_id == "order":
            # A reaction saved while the first save is being published: queued and
            # published after this callback returns, in sequence order.
            store.save_event(ev("invoice", 1))

    get_event_bus().subscribe(ns, callback=react)
    store.save_event(ev("order", 1))
    assert seen == ["order", "invoice"]


async def test_what_the_memory_bus_cannot_do_is_refused_not_ignored(memory_backend):
    ns = unique_namespace("mem")
    cases: list[dict[str, Any]] = [{"start": "all"}, {"durable": "projector"}, {"overflow": "wait"}]
    for options in cases:
        with pytest.raises(UnsupportedSubscriptionError, match="BACKEND"):
            await get_event_bus().asubscribe(ns, **options)
