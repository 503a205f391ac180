"""Deadlines and retries: every store operation gets ``config.timeout`` seconds in all.

Within that deadline each attempt waits at most ``ATTEMPT_TIMEOUT``; a transient
failure (a timeout, a dropped or reconnecting connection, JetStream's 503) is
retried after a short exponential back-off, and once the deadline has passed the
operation raises ``StoreUnavailableError``. Only requests that are safe to repeat
go through here: writes resolve their own repetitions (see ``writes``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from ...errors import StoreUnavailableError
from ..base import Runtime, StoreConfig
from .common import NoStream

__all__ = ["ATTEMPT_TIMEOUT", "TRANSIENT", "Retrier"]

T = TypeVar("T")

#: Longest a single attempt waits before it is retried within the operation's deadline.
ATTEMPT_TIMEOUT = 1.0

#: Errors after which the same request may simply be sent again.
TRANSIENT = (
    nats.errors.TimeoutError,
    asyncio.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.js.errors.ServiceUnavailableError,
    OSError,
)


class Retrier:
    """Deadlines, back-off and retried requests on the runtime's connection."""

    def __init__(
        self, runtime: Runtime, config: StoreConfig, namespace: str, *, where: str = ""
    ) -> None:
        self.runtime = runtime
        self.config = config
        self.namespace = namespace
        #: What the error names when the deadline passes (the namespace by default).
        self.where = where or f"namespace {namespace!r}"

    def deadline(self) -> float:
        """When an operation starting now must have finished (loop time)."""
        return asyncio.get_running_loop().time() + self.config.timeout

    @staticmethod
    def remaining(deadline: float) -> float:
        return deadline - asyncio.get_running_loop().time()

    async def pause(self, deadline: float, attempt: int, what: str) -> None:
        """Back off before another attempt, or give up when the deadline has passed."""
        remaining = self.remaining(deadline)
        if remaining <= 0:
            raise StoreUnavailableError(
                f"NATS did not answer within {self.config.timeout}s ({what}, {self.where})"
            )
        await asyncio.sleep(min(0.02 * (2**attempt), 0.5, remaining))

    async def request(
        self,
        subject: str,
        payload: bytes,
        deadline: float,
        headers: dict[str, str] | None = None,
    ) -> Msg:
        """One request/reply; raise StoreUnavailableError once the deadline passes.

        Transient failures are retried, so only use this for requests that are
        safe to repeat (reads, and writes whose repetition the caller resolves).
        """

        async def once(nc: Any, wait: float) -> Msg:
            try:
                reply: Msg = await nc.request(subject, payload, timeout=wait, headers=headers)
            except nats.errors.NoRespondersError:
                raise NoStream from None
            return reply

        result: Msg = await self.retrying(deadline, f"request to {subject}", once)
        return result

    async def js_call(self, deadline: float, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a JetStream management method, retrying transient failures."""

        async def once(nc: Any, wait: float) -> Any:
            return await getattr(nc.jetstream(timeout=wait), method)(*args, **kwargs)

        return await self.retrying(deadline, method, once)

    async def retrying(
        self,
        deadline: float,
        what: str,
        once: Callable[[Any, float], Awaitable[T]],
        transient: tuple[type[BaseException], ...] = TRANSIENT,
    ) -> T:
        """Run ``once(connection, attempt_timeout)`` until it succeeds or the deadline
        passes; only the ``transient`` failures are retried."""
        attempt = 0
        while True:
            timeout = min(self.remaining(deadline), ATTEMPT_TIMEOUT)
            try:
                if timeout <= 0:
                    raise nats.errors.TimeoutError
                return await once(await self.runtime.connection(), timeout)
            except transient:
                await self.pause(deadline, attempt, what)
                attempt += 1
