"""Child-process code for the aggregate tests (importable under spawn)."""

from __future__ import annotations

import os


def update_many(actor_id: str, times: int) -> int:
    """Run ``times`` increment commands through Counter.objects.update; return conflicts seen."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from .domain import Counter

    attempts = 0

    def increment_as(label: str):
        def increment(counter: Counter) -> None:
            nonlocal attempts
            attempts += 1
            counter.increment(by=label)

        return increment

    for done in range(times):
        Counter.objects.update(
            actor_id, increment_as(f"{os.getpid()}-{done}"), retries=200, create=True
        )
    return attempts - times
