"""The JetStream consumers of a feed: one ordered consumer per stream, replaced when needed.

Where a consumer starts is :func:`consumer_config`: a durable subscription's saved
position, else the subscription's ``start``; a stream created after the
subscription started is read whole. :func:`start_floor` is the sequence just
before the first event so read, when it is known (a resume point for a namespace
that delivered nothing).

A consumer of a feed with one subscription has a byte budget: the NATS client may
queue that subscription's ``buffer_bytes`` for it (and more than one message of the
stream's largest size). nats-server pushes up to its flow-control window (32 MiB)
to a consumer whose subscriber does not read, so the client drops what is over the
budget; :class:`StreamConsumers` then replaces the consumer by one that reads on
from after the last event offered to the subscription, once the subscriber has read
half its buffer. Nothing is skipped or repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from ..nats.client import handle_dropped_messages
from .base import Start

# The NATS bus logs under one documented name (docs/operations.md), whichever part logs.
logger = logging.getLogger("aether_django.bus.nats")

#: Attempts (a second apart) to replace a consumer whose messages the client dropped
#: before its subscription ends with the error.
RESTART_ATTEMPTS = 5

#: Called for each message with (namespace, stream, consumer generation, message).
OnMessage = Callable[[str, str, int, Msg], Awaitable[None]]


def consumer_config(
    start: Start,
    namespace: str,
    *,
    created_later: bool,
    position: int | None,
    since: datetime | None,
) -> ConsumerConfig:
    """Where the first consumer of ``namespace``'s stream starts reading.

    ``position``: a durable subscription's saved one; ``since``: when that
    subscription first started (None on its first start).
    """
    if position is not None:
        return _after(position)
    if since is not None and start != "all" and not isinstance(start, Mapping):
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since)
    if created_later:
        # Everything in a stream created after the subscription started is new.
        return ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    if start == "new":
        return ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    if start == "all":
        return ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    if isinstance(start, datetime):
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)
    if isinstance(start, Mapping):
        seq = start.get(namespace)
        if seq is None:
            return ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seq)
    assert isinstance(start, int)
    return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)


def start_floor(
    start: Start,
    namespace: str,
    *,
    created_later: bool,
    position: int | None,
    since: datetime | None,
    last_seq: int | None,
) -> int | None:
    """The sequence before the first event read in ``namespace``, if it is known."""
    if position is not None:
        return position
    if created_later or start == "all":
        return 0
    if since is not None and not isinstance(start, Mapping):
        return None  # from a time: which sequence that is, is not known here
    if start == "new":
        return last_seq  # listed just before the consumer was made
    if isinstance(start, Mapping):
        return max(0, start.get(namespace, 1) - 1)
    if isinstance(start, int):
        return start - 1
    return None


def _after(sequence: int) -> ConsumerConfig:
    return ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=sequence + 1
    )


class StreamConsumers:
    """The ordered consumer of each stream a feed reads, and its replacement after drops.

    ``budget``: bytes the client may queue per consumer (None: no limit, for a shared
    feed, whose subscriptions end on overflow instead). On a drop, ``on_drop`` is
    told, ``room()`` is awaited, and the new consumer reads from after
    ``resume_after(namespace)`` (from where the first one started when that is None);
    ``on_failure`` gets the error when it cannot be made.
    """

    def __init__(
        self,
        *,
        subject_prefix: str,
        timeout: float,
        on_message: OnMessage,
        budget: int | None,
        largest: Mapping[str, int],
        resume_after: Callable[[str], int | None],
        room: Callable[[], Awaitable[None]],
        on_drop: Callable[[], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self.subject_prefix = subject_prefix
        self.timeout = timeout
        self._on_message = on_message
        self._budget = budget
        self._largest = largest  # stream -> its max_msg_size, when it has one
        self._resume_after = resume_after
        self._room = room
        self._on_drop = on_drop
        self._on_failure = on_failure
        #: Stream -> its consumer (None while it is being made).
        self.consumers: dict[str, Any] = {}
        # Stream -> the generation of its consumer (what a replaced one still hands
        # over is ignored), and the config its first consumer was made with.
        self._generation: dict[str, int] = {}
        self._first: dict[str, ConsumerConfig] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._nc: Any = None
        self._stopped = False

    def __contains__(self, stream: str) -> bool:
        return stream in self.consumers

    def claim(self, stream: str) -> None:
        """Note that a consumer of ``stream`` is on its way; a concurrent discovery skips it."""
        self.consumers[stream] = None

    def current(self, stream: str, generation: int) -> bool:
        """Whether a message from the consumer of this generation is to be handed over."""
        return generation == self._generation.get(stream, 0)

    async def consume(self, nc: Any, stream: str, namespace: str, config: ConsumerConfig) -> None:
        """Make the first consumer of ``stream``, starting as ``config`` says."""
        self._nc = nc
        self._first[stream] = config
        await self._subscribe(stream, namespace, config)

    async def _subscribe(self, stream: str, namespace: str, config: ConsumerConfig) -> None:
        """Make the ordered consumer of ``stream`` (its first, or a replacement)."""
        generation = self._generation.get(stream, 0)
        # nats-py awaits cb(msg): a partial saves a coroutine per message.
        callback = functools.partial(self._on_message, namespace, stream, generation)
        limit = -1
        if self._budget is not None:
            # More than one message of the largest size the stream takes, or such a
            # message would be dropped each time it is read.
            largest = self._largest.get(stream) or self._nc.max_payload
            limit = max(self._budget, largest + 1)
            handle_dropped_messages(
                callback, functools.partial(self._dropped, stream, namespace, generation)
            )
        js = self._nc.jetstream(timeout=self.timeout)
        consumer = await js.subscribe(
            f"{self.subject_prefix}.{namespace}.*",
            stream=stream,
            ordered_consumer=True,
            config=config,
            cb=callback,
            idle_heartbeat=2.0,
            pending_msgs_limit=-1,
            pending_bytes_limit=limit,
        )
        if self._stopped or self._generation.get(stream, 0) != generation:
            # Stopped while it was made, or it dropped messages already (a replacement
            # is on its way): it must not stay behind, unreferenced.
            await _discard(consumer)
            return
        self.consumers[stream] = consumer

    def _dropped(self, stream: str, namespace: str, generation: int) -> None:
        """The NATS client dropped a message of ``stream``'s consumer (its queue reached
        the budget, as when the subscriber does not read): replace the consumer.

        nats-py's ordered consumer cannot be trusted to notice (it counts the dropped
        message as delivered), so everything it hands over from now on is ignored
        and a new consumer reads on from the last event offered to the subscription.
        """
        if self._stopped or self._generation.get(stream, 0) != generation:
            return  # stopping, or replaced already
        self._generation[stream] = generation + 1
        self._on_drop()
        task = asyncio.get_running_loop().create_task(self._restart(stream, namespace))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restart(self, stream: str, namespace: str) -> None:
        old = self.consumers.get(stream)
        if old is not None:
            await _discard(old)
        # Start again once the subscriber has made room, not for each event it takes.
        await self._room()
        if self._stopped:
            return
        after = self._resume_after(namespace)
        # Nothing offered yet, from a start without a known sequence: as before.
        config = _after(after) if after is not None else self._first[stream]
        for attempt in range(RESTART_ATTEMPTS):
            try:
                await self._subscribe(stream, namespace, config)
                return
            except Exception as exc:
                if attempt + 1 < RESTART_ATTEMPTS and not self._stopped:
                    await asyncio.sleep(1.0)
                    continue
                # Without its consumer the subscription would silently stop receiving.
                logger.error("could not read %s again: %r", stream, exc)
                self._on_failure(exc)

    async def stop(self) -> None:
        """Unsubscribe every consumer; replacements on their way are dropped."""
        self._stopped = True
        tasks = tuple(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for consumer in self.consumers.values():
            if consumer is not None:
                with contextlib.suppress(Exception):
                    await consumer.unsubscribe()
        # Their callbacks key the drop handlers, which refer to the feed: let both go.
        self.consumers = dict.fromkeys(self.consumers)


async def _discard(consumer: Any) -> None:
    """Unsubscribe a consumer replaced after the client dropped some of its messages.

    This also cancels a delivery it holds waiting for room in the buffer, and frees
    what nats-py had queued for it (kept until its subscription, which refers to
    itself, is collected): all of it is read again by the replacement.
    """
    with contextlib.suppress(Exception):  # unsubscribed already, or the connection is gone
        await consumer.unsubscribe()
    queue = consumer._pending_queue
    while not queue.empty():
        queue.get_nowait()
    consumer._pending_size = 0
