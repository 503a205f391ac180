"""Where a projection's worker takes its batches from: the store's reads, then the bus.

A worker catches up through :class:`StoreBatches` (the event store's batched reads of
the namespace in stream order, the next chunk read while the database applies the
current one) until a read finds nothing after its position, the stream's head; then
it follows the bus through :class:`BusBatches`, subscribed from right after that
position. Both hand out lists of *items*: stored events, and a ReplayError for a
stored message that does not decode, in stream order, so the worker stops at such a
message as at a failing handler instead of passing over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from ..bus.local import Delivery, Subscription
from ..errors import AetherError, ReplayError
from ..events import Event
from ..store import EventStore

__all__ = [
    "CATCH_UP_BYTES",
    "CATCH_UP_CHUNK",
    "GATHER_WAIT",
    "IDLE_WAIT",
    "BatchSource",
    "BusBatches",
    "Item",
    "StoreBatches",
    "sequence_of",
]

logger = logging.getLogger("aether_django.projections.runner")

#: A stored event, or a stored message that does not decode (where the worker stops).
Item = Event | ReplayError

#: Events per read of the store during catch-up (one or two batched direct gets).
CATCH_UP_CHUNK = 2048
#: Encoded bytes per read of the store during catch-up, whatever the events' size.
CATCH_UP_BYTES = 8 * 1024 * 1024
#: Seconds a worker waits for the first live event of a batch before it looks at its
#: checkpoint's state again (a pause) and at the stop flag.
IDLE_WAIT = 0.25
#: Seconds a worker gathers more live events once a batch has its first one.
GATHER_WAIT = 0.005


def sequence_of(item: Item) -> int:
    """The stream sequence of an item (0 for an event that was never stored)."""
    return item.sequence or 0


class BatchSource(Protocol):
    async def take(self) -> list[Item] | None:
        """The next batch (empty: nothing came for a while), or None once the source
        has ended."""

    def close(self) -> None:
        """Stop any read in flight."""


class StoreBatches:
    """The namespace's stored events after ``after``, in batches of ``batch_size``.

    Reads chunks of :data:`CATCH_UP_CHUNK` events and starts the read of the next
    chunk as soon as one arrives, so the store is read while the database applies the
    batches before. Ends (None) at the first read that finds nothing: the head.
    """

    def __init__(
        self, store: EventStore, after: int, batch_size: int, *, chunk: int | None = None
    ) -> None:
        self.store = store
        self.after = after
        self.batch_size = batch_size
        self.chunk_size = max(chunk or CATCH_UP_CHUNK, batch_size)
        self.chunk: list[Item] = []
        self.index = 0
        self.ahead: asyncio.Task[list[Item]] | None = None
        self.ended = False

    async def _read(self, after: int) -> list[Item]:
        try:
            return list(
                await self.store.aget_stream_events(
                    after, limit=self.chunk_size, max_bytes=CATCH_UP_BYTES
                )
            )
        except ReplayError as exc:
            return [exc]

    async def take(self) -> list[Item] | None:
        if self.index >= len(self.chunk):
            if self.ended:
                return None
            if self.ahead is None:
                self.ahead = asyncio.ensure_future(self._read(self.after))
            ahead, self.ahead = self.ahead, None
            chunk = await ahead
            if not chunk:
                self.ended = True
                return None
            self.chunk, self.index = chunk, 0
            last = chunk[-1]
            if isinstance(last, ReplayError):
                # The worker stops at it: nothing after it is read.
                self.ended = True
            else:
                self.after = sequence_of(last)
                self.ahead = asyncio.ensure_future(self._read(self.after))
        batch = self.chunk[self.index : self.index + self.batch_size]
        self.index += len(batch)
        return batch

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead.cancel()
            # A read cancelled (or failed) after its worker left has nobody to tell.
            with contextlib.suppress(BaseException):
                self.ahead.exception()
            self.ahead = None


class BusBatches:
    """Live events from a bus subscription, in batches of at most ``batch_size``.

    Waits for one delivery, then takes what follows at once. Keeps the sequence it
    expects next: a delivery beyond it means the bus passed over stored messages (a
    message it could not decode, which it only logs, or a removed one), and the store
    is asked for that range, so an undecodable message reaches the worker as an item.
    Ends (None) when the subscription ends (the bus was closed or reset, or the
    subscriber fell behind); the worker then reads the store again.
    """

    def __init__(
        self, subscription: Subscription, store: EventStore, after: int, batch_size: int
    ) -> None:
        self.subscription = subscription
        self.store = store
        self.expected = after + 1
        self.batch_size = batch_size
        self.ended = False

    async def take(self) -> list[Item] | None:
        if self.ended:
            return None
        deliveries: list[Delivery] = []
        try:
            deliveries.append(await self.subscription.next(IDLE_WAIT))
            # What follows within GATHER_WAIT of the first joins its batch: at most
            # that long added to the first's lag, however steadily events arrive.
            loop = asyncio.get_running_loop()
            until = loop.time() + GATHER_WAIT
            while len(deliveries) < self.batch_size:
                left = until - loop.time()
                if left <= 0:
                    break
                deliveries.append(await self.subscription.next(left))
        except TimeoutError:
            pass
        except (StopAsyncIteration, AetherError) as exc:
            logger.info(
                "the subscription to %s ended (%r): reading the store again",
                self.subscription.pattern,
                exc,
            )
            self.ended = True
        items = await self._in_order(deliveries)
        # What it delivered before ending is still good; the next take ends.
        return None if self.ended and not items else items

    async def _in_order(self, deliveries: list[Delivery]) -> list[Item]:
        items: list[Item] = []
        for delivery in deliveries:
            sequence = delivery.sequence
            if sequence is None or sequence < self.expected:
                continue  # a transient event, or one delivered again
            if sequence > self.expected:
                items.extend(await self._fill(self.expected, sequence))
            items.append(delivery.event)
            self.expected = sequence + 1
        return items

    async def _fill(self, first: int, before: int) -> list[Item]:
        """The stored messages from ``first`` up to (not including) ``before``."""
        found: list[Item] = []
        after = first - 1
        while after < before - 1:
            try:
                events = await self.store.aget_stream_events(after, limit=before - 1 - after)
            except ReplayError as exc:
                if exc.sequence >= before:
                    break
                found.append(exc)
                after = exc.sequence
                continue
            inside = [e for e in events if sequence_of(e) < before]
            found.extend(inside)
            if not inside or len(inside) < len(events):
                break
            after = sequence_of(inside[-1])
        if found:
            logger.warning(
                "the bus passed over %d stored message(s) of %s between %d and %d: "
                "read from the store",
                len(found),
                self.store.namespace,
                first,
                before,
            )
        return found

    def close(self) -> None:
        """The subscription is the worker's to close."""
