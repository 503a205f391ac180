"""Loading an aggregate raises one error type for anything its history does to its code."""

from __future__ import annotations

import asyncio
import pickle
import uuid
from collections.abc import Iterator

import nats
import pytest

from aether_django import aggregates
from aether_django.errors import (
    AetherError,
    AggregateError,
    AggregateReplayError,
    ReplayError,
    UndecodableEventError,
)
from aether_django.events import Event
from aether_django.store import get_event_store


@pytest.fixture
def till() -> Iterator[type[aggregates.Aggregate]]:
    """An aggregate whose handler reads a field, in a namespace of its own."""

    class Till(aggregates.Aggregate):
        cents: int = 0

        class Meta:
            namespace = f"replay-{uuid.uuid4().hex[:8]}"

        @aggregates.apply("Paid")
        def _paid(self, event: Event) -> None:
            self.cents += event.data["cents"]  # KeyError on data without "cents"

    try:
        yield Till
    finally:
        aggregates._registry.pop(Till._meta.label, None)


def store_events(model: type[aggregates.Aggregate], actor_id: str, *events: Event) -> None:
    model.get_store().save_events(list(events))


def test_a_handler_that_raises_on_stored_data_is_an_aggregate_replay_error(till):
    store_events(
        till,
        "t-1",
        Event(event_type="Paid", actor_id="t-1", version=1, data={"cents": 5}),
        Event(event_type="Paid", actor_id="t-1", version=2, data={}),
    )
    with pytest.raises(AggregateReplayError) as caught:
        till.objects.get("t-1")
    error = caught.value
    assert (error.actor_id, error.version, error.event_type) == ("t-1", 2, "Paid")
    assert error.sequence > 0 and error.aggregate == "Till"
    assert isinstance(error.cause, KeyError) and error.__cause__ is error.cause
    assert error.reason == "its code raised KeyError"
    assert str(error) == (
        "Till cannot replay actor 't-1' at version 2 (event 'Paid'): its code raised KeyError"
    )
    # It is an AetherError, and an AggregateError as a missing handler always was.
    assert isinstance(error, AggregateError) and isinstance(error, AetherError)
    # The state before the bad event still loads.
    assert till.objects.get("t-1", at_version=1).cents == 5


async def test_the_async_load_raises_the_same(till):
    await till.get_store().asave_event(Event(event_type="Paid", actor_id="t-2", version=1, data={}))
    with pytest.raises(AggregateReplayError) as caught:
        await till.objects.aget("t-2")
    assert isinstance(caught.value.cause, KeyError)


def test_update_raises_it_too(till):
    store_events(till, "t-3", Event(event_type="Paid", actor_id="t-3", version=1, data={}))
    with pytest.raises(AggregateReplayError):
        till.objects.update("t-3", lambda t: None)


def test_an_event_type_without_a_handler_wraps_the_aggregate_error(till):
    store_events(till, "t-4", Event(event_type="Teleported", actor_id="t-4", version=1))
    with pytest.raises(AggregateReplayError) as caught:
        till.objects.get("t-4")
    assert type(caught.value.cause) is AggregateError
    assert "no handler and no upcaster" in caught.value.reason


def test_an_undecodable_message_is_both_replay_errors(till, aether_nats_url):
    store = till.get_store()
    store_events(
        till, "t-5", Event(event_type="Paid", actor_id="t-5", version=1, data={"cents": 1})
    )

    async def corrupt() -> None:
        # A message in the actor's subject that is not an event (a foreign writer's).
        nc = await nats.connect(aether_nats_url)
        await nc.jetstream().publish(store.subject_for("t-5"), b"not json")
        await nc.close()

    asyncio.run(corrupt())
    with pytest.raises(AggregateReplayError) as caught:
        till.objects.get("t-5")
    error = caught.value
    assert isinstance(error, UndecodableEventError) and isinstance(error, ReplayError)
    assert isinstance(error.cause, ReplayError)
    assert (error.sequence, error.raw, error.reason) == (
        error.cause.sequence,
        b"not json",
        error.cause.reason,
    )


def test_the_error_survives_pickling(till):
    error = AggregateReplayError("t-6", 3, KeyError("cents"), aggregate="Till", event_type="Paid")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is AggregateReplayError
    assert (copy.actor_id, copy.version, copy.aggregate, copy.event_type, copy.reason) == (
        "t-6",
        3,
        "Till",
        "Paid",
        "its code raised KeyError",
    )
    undecodable = UndecodableEventError("t-6", 0, ReplayError(7, b"x", "bad json", "t-6"))
    copy2 = pickle.loads(pickle.dumps(undecodable))
    assert type(copy2) is UndecodableEventError and (copy2.sequence, copy2.raw) == (7, b"x")


def test_the_error_is_importable_from_aggregates():
    assert aggregates.AggregateReplayError is AggregateReplayError
    assert aggregates.AggregateError is AggregateError


def test_namespace_of_the_store_is_untouched_by_a_failed_load(till):
    # A failed load stores nothing and leaves no cached copy behind.
    store_events(till, "t-7", Event(event_type="Paid", actor_id="t-7", version=1, data={}))
    with pytest.raises(AggregateReplayError):
        till.objects.get("t-7")
    assert get_event_store(till._meta.namespace).get_latest_version("t-7") == 1
