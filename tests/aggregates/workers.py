"""Child-process code for the aggregate tests (importable under spawn)."""

from __future__ import annotations

import os
from collections.abc import Callable
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


def send_commands(
    mode: str, actor_ids: list[str], command_ids: list[str], barrier: Any
) -> int | None:
    """Send each of ``command_ids`` to a Counter (``actor_ids``, round robin), as ``mode``
    says: ``update``, ``aupdate`` or ``routed`` (send_command, to a node's shard host).

    Every process of the test sends the same ids, in an order of its own, at once.
    Return how many this process found already applied (``command_replayed``); None
    for routed sends, whose answer does not say.
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import asyncio
    import random

    import django

    django.setup()
    from aether_django.sharding import send_command

    from .domain import Counter

    order = list(enumerate(command_ids))
    random.shuffle(order)
    Counter.objects.exists(actor_ids[0])  # connect before the start line
    barrier.wait(120)

    def actor_of(index: int) -> str:
        return actor_ids[index % len(actor_ids)]

    def increment_by(by: str) -> Callable[[Counter], None]:
        return lambda counter: counter.increment(by)

    if mode == "update":
        return sum(
            Counter.objects.update(
                actor_of(index), increment_by(command_id), create=True,
                command_id=command_id, retries=1000,
            ).command_replayed
            for index, command_id in order
        )  # fmt: skip
    if mode == "aupdate":

        async def send_all() -> int:
            replayed = 0
            for index, command_id in order:

                async def increment(counter: Counter, by: str = command_id) -> None:
                    await asyncio.sleep(0)  # a coroutine command, as aupdate allows
                    counter.increment(by)

                done = await Counter.objects.aupdate(
                    actor_of(index), increment, create=True, command_id=command_id, retries=1000
                )
                replayed += done.command_replayed
            return replayed

        return asyncio.run(send_all())
    for index, command_id in order:
        send_command(
            "test-counters", actor_of(index), "increment", command_id=command_id, by=command_id
        )
    return None
