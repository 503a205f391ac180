"""Code that runs in child processes of the multi-process tests (importable under spawn)."""

from __future__ import annotations

import os
from typing import Any


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()


def race_append(namespace: str, actor_id: str, target: int, barrier: Any = None) -> dict:
    """Append to one actor, retrying on conflict, until ``target`` versions exist.

    With ``barrier`` (a multiprocessing barrier) every process connects first and all
    start appending together, so they race even when starting processes is slow.
    Returns this process's successes and, for each conflict, what it attempted
    and the current version the store reported; ``log`` holds both in the order
    they happened, as ``("won", version, version)`` and
    ``("conflict", attempted, current)``.
    """
    setup_django()
    from aether_django.errors import VersionConflictError
    from aether_django.events import Event
    from aether_django.store import get_event_store

    store = get_event_store(namespace)
    won: list[int] = []
    conflicts: list[tuple[int, int]] = []
    log: list[tuple[str, int, int]] = []
    version = store.get_latest_version(actor_id)
    if barrier is not None:
        barrier.wait(120)
    while version < target:
        attempt = version + 1
        try:
            store.save_event(
                Event(
                    event_type="Raced",
                    actor_id=actor_id,
                    version=attempt,
                    data={"pid": os.getpid()},
                )
            )
        except VersionConflictError as exc:
            assert exc.attempted_version == attempt
            conflicts.append((attempt, exc.current_version))
            log.append(("conflict", attempt, exc.current_version))
            version = exc.current_version
            continue
        won.append(attempt)
        log.append(("won", attempt, attempt))
        version = attempt
    return {"pid": os.getpid(), "won": won, "conflicts": conflicts, "log": log}


def save_one(namespace: str, actor_id: str, version: int) -> int:
    """Save one event from a fresh process; return its stream sequence."""
    setup_django()
    from aether_django.events import Event
    from aether_django.store import get_event_store

    stored = get_event_store(namespace).save_event(
        Event(event_type="FromChild", actor_id=actor_id, version=version)
    )
    assert stored.sequence is not None
    return stored.sequence
