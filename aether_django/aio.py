"""Asyncio helpers and the runtime protocol that every layer uses; imports nothing of the package.

``Runtime`` is what the primitives (store, bus, cluster) and the sharding layer need
from the process runtime (``aether_django.runtime.Runtime`` satisfies it). It lives
here, below all of them, so that none of them imports another, or the runtime,
for a type.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

__all__ = ["Runtime", "running_loop"]

T = TypeVar("T")


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None outside one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Runtime(Protocol):
    """What a NATS-backed store, bus or cluster component needs from the process runtime."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The runtime's own event loop, running in a thread of its own (started on first use).

        Long-lived work (subscriptions with sync callbacks, shard hosting) runs here.
        """
        ...

    def run(self, coro: Awaitable[T]) -> T:
        """Run a coroutine to completion from sync code and return its result."""
        ...

    async def connection(self) -> Any:
        """The NATS connection to use from the running event loop."""
        ...
