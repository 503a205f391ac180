"""Fixtures of the projection tests: fresh namespaces, a clean registry, runners that stop,
and the database the projections of a test run on (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from aether_django.events import Event
from aether_django.projections import base
from aether_django.projections.runner import ProjectionRunner
from aether_django.store import get_event_store

from .app import projections as app_projections

#: The databases every guarantee is shown on: the SQLite file "default", and the
#: suite's real PostgreSQL "pg" (tests/conftest.py starts it only when a collected test
#: asks for it, which this mark does).
ON_BOTH_DATABASES = [
    pytest.param("default", id="sqlite"),
    pytest.param(
        "pg",
        id="pg",
        marks=pytest.mark.django_db(databases=["default", "pg"], transaction=True),
    ),
]


@pytest.fixture(params=ON_BOTH_DATABASES)
def db_alias(request: pytest.FixtureRequest) -> str:
    """The alias a test's projections, checkpoints and read models use (``Meta.database``)."""
    return request.param


@pytest.fixture
def scratch_projections() -> Iterator[None]:
    """Forget the projection classes a test declares; forget its poison too."""
    saved = dict(base._registry)
    yield
    base._registry.clear()
    base._registry.update(saved)
    app_projections.POISON.clear()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """A namespace-safe name no other test (or earlier session) uses."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def runners() -> Iterator[Callable[..., ProjectionRunner]]:
    """Start ProjectionRunners in background threads; all are stopped after the test."""
    started: list[ProjectionRunner] = []

    def start(*projections, interval: float = 0.1) -> ProjectionRunner:
        runner = ProjectionRunner(projections, interval=interval)
        runner.start()
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.stop()


def save_ticks(namespace: str, count: int, *, actor: str = "a", first_version: int = 1, **data):
    """Save ``count`` Tick events of one actor; returns them as stored (with sequences)."""
    store = get_event_store(namespace)
    return [
        store.save_event(
            Event(
                event_type="Tick", actor_id=actor, version=first_version + i, data={"i": i, **data}
            )
        )
        for i in range(count)
    ]


@contextmanager
def continuous_writes(namespace: str, most: int, *, actors: int = 1) -> Iterator[list[Event]]:
    """Save Tick events one at a time in a thread, without pause, until the block ends
    (or ``most`` are saved); yields the list of those saved so far. With ``actors`` > 1
    they go round that many actors ("live-0", "live-1", ...), else to "live"."""
    stop = threading.Event()
    saved: list[Event] = []

    def writer() -> None:
        version = 1
        while not stop.is_set() and version <= most:
            actor = f"live-{version % actors}" if actors > 1 else "live"
            saved.extend(save_ticks(namespace, 1, actor=actor, first_version=version))
            version += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        yield saved
    finally:
        stop.set()
        thread.join()


def eventually(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Wait until ``check()`` is true."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
