"""Child-process code for the aggregate tests (importable under spawn)."""

from __future__ import annotations

import os
from typing import Any


def update_many(actor_id: str, times: int, barrier: Any = None) -> int:
    """Add ``times`` lines to an order through Order.objects.update; return conflicts seen.

    Each line's SKU names this process and the command, so the parent can tell
    that every command landed exactly once. With ``barrier`` (a multiprocessing
    barrier) every process has set Django up before any of them writes, so they
    really race instead of a fast one finishing while the others still spawn.
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from .domain import Order

    # Connect before the start line: the first store call opens the connection.
    Order.objects.exists(actor_id)
    if barrier is not None:
        barrier.wait(120)

    attempts = 0

    def add_line_as(sku: str):
        def add_line(order: Order) -> None:
            nonlocal attempts
            attempts += 1
            order.add_line(sku, quantity=1, price_cents=1)

        return add_line

    for done in range(times):
        Order.objects.update(actor_id, add_line_as(f"{os.getpid()}-{done}"), retries=200)
    # A command runs once per attempt: every run beyond the first of each command
    # followed a version conflict (or a stale cached copy, which is one too).
    return attempts - times
