"""The error tree: where each public error sits, and that errors survive pickling."""

from __future__ import annotations

import inspect
import pickle

import pytest

from aether_django import errors
from aether_django.errors import (
    AetherError,
    AggregateError,
    AggregateReplayError,
    EventStoreError,
    InvalidActorIdError,
    InvalidEventError,
    InvalidNameError,
    InvalidNamespaceError,
    NamespaceCollisionError,
    PayloadTooLargeError,
    ProjectionError,
    ProjectionTimeoutError,
    ReplayError,
    SaveOutcomeUnknownError,
    StoreConfigurationError,
    StoreUnavailableError,
    SyncCallInAsyncContextError,
    UndecodableEventError,
    VersionConflictError,
)

PUBLIC_ERRORS = sorted(
    (
        obj
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, Exception) and not name.startswith("_")
    ),
    key=lambda cls: cls.__name__,
)

#: Each error and the classes a caller may catch it as (besides AetherError).
PARENTS: dict[type[Exception], tuple[type[Exception], ...]] = {
    AetherError: (Exception,),
    VersionConflictError: (),
    InvalidNameError: (ValueError,),
    InvalidNamespaceError: (InvalidNameError, ValueError),
    InvalidActorIdError: (InvalidNameError, ValueError),
    InvalidEventError: (ValueError,),
    PayloadTooLargeError: (InvalidEventError, ValueError),
    EventStoreError: (),
    StoreUnavailableError: (EventStoreError,),
    SaveOutcomeUnknownError: (StoreUnavailableError, EventStoreError),
    NamespaceCollisionError: (EventStoreError,),
    StoreConfigurationError: (EventStoreError,),
    ReplayError: (),
    SyncCallInAsyncContextError: (RuntimeError,),
    AggregateError: (),
    AggregateReplayError: (AggregateError,),
    UndecodableEventError: (AggregateReplayError, AggregateError, ReplayError),
    ProjectionError: (),
    ProjectionTimeoutError: (ProjectionError, TimeoutError),
}

#: An instance of each error as the code raises it.
EXAMPLES: dict[type[Exception], Exception] = {
    AetherError: AetherError("boom"),
    VersionConflictError: VersionConflictError("order-1", 3, 5),
    InvalidNameError: InvalidNameError("bad name"),
    InvalidNamespaceError: InvalidNamespaceError("bad namespace"),
    InvalidActorIdError: InvalidActorIdError("bad actor id"),
    InvalidEventError: InvalidEventError("bad event"),
    PayloadTooLargeError: PayloadTooLargeError(2_000_000, 1_048_576, "snapshot"),
    EventStoreError: EventStoreError("store failed"),
    StoreUnavailableError: StoreUnavailableError("no answer"),
    SaveOutcomeUnknownError: SaveOutcomeUnknownError("maybe stored"),
    NamespaceCollisionError: NamespaceCollisionError("collision"),
    StoreConfigurationError: StoreConfigurationError("refused"),
    ReplayError: ReplayError(7, b"\xff", "not JSON", "order-1"),
    SyncCallInAsyncContextError: SyncCallInAsyncContextError("use asave_event"),
    AggregateError: AggregateError("no such command"),
    AggregateReplayError: AggregateReplayError(
        "order-1", 3, KeyError("total"), aggregate="Order", event_type="OrderPlaced", sequence=9
    ),
    UndecodableEventError: UndecodableEventError(
        "order-1", 4, ReplayError(11, b"\xff", "not JSON", "order-1"), aggregate="Order"
    ),
    ProjectionError: ProjectionError("no projection called 'x'"),
    ProjectionTimeoutError: ProjectionTimeoutError("order-summary", "orders", 9, 7, "failed", 2.0),
}


def test_every_public_error_is_listed_here():
    assert set(PUBLIC_ERRORS) == set(PARENTS) == set(EXAMPLES)


@pytest.mark.parametrize("error", PUBLIC_ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_derives_from_aether_error_and_its_documented_parents(error):
    assert issubclass(error, AetherError)
    for parent in PARENTS[error]:
        assert issubclass(error, parent), f"{error.__name__} is not a {parent.__name__}"


def test_name_errors_are_value_errors_and_store_errors_are_not():
    assert issubclass(InvalidNameError, ValueError)
    assert issubclass(InvalidEventError, ValueError)
    assert not issubclass(EventStoreError, ValueError)
    assert not issubclass(VersionConflictError, EventStoreError)


@pytest.mark.parametrize("error", PUBLIC_ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_survives_pickling_with_its_fields(error):
    """Errors cross process boundaries (Celery results, multiprocessing pools) intact."""
    original = EXAMPLES[error]
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is error
    assert str(copy) == str(original)
    assert comparable(vars(copy)) == comparable(vars(original))


def comparable(fields: dict[str, object]) -> dict[str, object]:
    """Exceptions compare by identity: a wrapped cause is compared by type and args."""
    return {
        name: (type(value), value.args) if isinstance(value, BaseException) else value
        for name, value in fields.items()
    }


def test_a_pickled_version_conflict_keeps_its_three_fields():
    copy = pickle.loads(pickle.dumps(VersionConflictError("order-1", 3, 5)))
    assert (copy.actor_id, copy.attempted_version, copy.current_version) == ("order-1", 3, 5)
