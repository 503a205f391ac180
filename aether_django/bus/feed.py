"""A feed: what the NATS bus reads for one subscription, or for the shared "new" ones of a pattern.

A :class:`Feed` hands what its consumers read to its subscriptions, on their loop.
It is put together from parts with one job each:

* :class:`~aether_django.bus.watcher.StreamWatcher` finds the streams the pattern
  and ``readable`` cover (first listing, creation advisories, rescans);
* :class:`~aether_django.bus.consumers.StreamConsumers` keeps one ordered consumer
  per stream, and replaces one whose messages the NATS client dropped;
* :class:`~aether_django.bus.positions.DurablePositions` (durable subscriptions
  only) loads and saves positions and recently handled ids in the KV bucket;

and itself does the fan-out: the hand-over of each decoded event to the
subscriptions, the floors of subscriptions that join a running shared feed, and
the resume points of namespaces that delivered nothing before an overflow.

A subscription sees its feed through a :class:`FeedLink`, the
:class:`~aether_django.bus.local.SubscriptionSource` the bus gives it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from .. import metrics, tracing
from ..aio import running_loop
from ..errors import ReplayError
from ..events import decode_event
from ..nats.api import delivery_stream_sequence
from ..nats.headers import MSG_ID
from .base import Start
from .consumers import StreamConsumers, consumer_config, start_floor
from .local import Delivery, Subscription
from .positions import DurablePositions
from .watcher import StreamWatcher

if TYPE_CHECKING:
    from .nats import NATSEventBus

# The NATS bus logs under one documented name (docs/operations.md), whichever part logs.
logger = logging.getLogger("aether_django.bus.nats")

#: One delivery in this many is timed for the bus-lag histogram.
_LAG_SAMPLE = 16


class Feed:
    """The JetStream consumers behind one subscription, or behind the shared "new"
    subscriptions of one pattern, handing what they read to those subscriptions.

    ``budget``: the byte budget of each consumer of a feed of one subscription (its
    ``buffer_bytes``); None for a shared feed, whose consumers never wait for one of
    its subscriptions (they end on overflow instead).
    """

    def __init__(
        self,
        bus: NATSEventBus,
        pattern: str,
        start: Start,
        durable: str | None,
        *,
        on_empty: Callable[[Feed], None] | None = None,
        readable: frozenset[str] | None = None,
        budget: int | None = None,
    ) -> None:
        self.bus = bus
        self.pattern = pattern
        self.start_at = start
        self.subs: list[Subscription] = []
        # Per joining subscription: namespace -> last stream sequence before it joined,
        # and what arrived for it while that was being asked.
        self.floors: dict[Subscription, dict[str, int]] = {}
        self.held: dict[Subscription, list[Delivery]] = {}
        self._on_empty = on_empty
        self.task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._stopped = False
        self.watcher = StreamWatcher(
            subject_prefix=bus.subject_prefix,
            timeout=bus.timeout,
            pattern=pattern,
            readable=readable,
            on_stream=self._consume,
            known=self._known,
        )
        self.consumers = StreamConsumers(
            subject_prefix=bus.subject_prefix,
            timeout=bus.timeout,
            # Chosen once per feed: with tracing off, a message costs no span check.
            on_message=self._on_traced_msg if tracing.enabled else self._on_msg,
            budget=budget,
            largest=self.watcher.largest,
            resume_after=self._resume_after,
            room=self._room,
            on_drop=functools.partial(bus._count, "restarts"),
            on_failure=self._fail,
        )
        self.positions = (
            DurablePositions(durable, start=start, replicas=bus.replicas, timeout=bus.timeout)
            if durable
            else None
        )
        self._streams: dict[str, str] = {}  # namespace -> stream
        # Namespace -> the sequence before the first event this feed reads there,
        # and the last sequence it has offered to its subscriptions: together the
        # resume point of a namespace that delivered nothing before an overflow.
        self._floor: dict[str, int] = {}
        self._offered: dict[str, int] = {}
        # Deliveries not yet added to the counters: they are counted once per burst.
        self._uncounted = 0
        self._seen = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: Any = None

    @property
    def stopped(self) -> bool:
        return self._stopped or self._stopping is not None

    # --- subscriptions ------------------------------------------------------------------
    def add(self, subscription: Subscription) -> None:
        self.subs.append(subscription)

    def reached(self, subscription: Subscription) -> dict[str, int]:
        """Namespace -> the sequence this feed has offered ``subscription`` everything up to."""
        point = {**self._floor, **self._offered}
        for namespace, floor in self.floors.get(subscription, {}).items():
            # It joined a running feed: older events were never meant for it.
            point[namespace] = max(point.get(namespace, 0), floor)
        return point

    def took(self, delivery: Delivery) -> None:
        """The subscriber has handled ``delivery``: a durable feed saves its position."""
        positions = self.positions
        sequence = delivery.sequence
        if positions is None or sequence is None:
            return  # not durable, or a transient event (it has no position)
        stream = self._streams.get(delivery.namespace)
        if stream is not None:
            positions.took(stream, sequence, delivery.event.id)

    def release(self, subscription: Subscription) -> asyncio.Task[None] | None:
        """Detach ``subscription``; stop the consumers (returned) when none is left."""
        if subscription in self.subs:
            self.subs.remove(subscription)
        self.floors.pop(subscription, None)
        self.held.pop(subscription, None)
        if self.subs:
            return None
        if self._on_empty is not None:
            self._on_empty(self)
        return self.stop()

    async def arelease(self, subscription: Subscription) -> None:
        """:meth:`release`, waiting until the consumers are gone if they are stopped."""
        stopping = self.release(subscription)
        if stopping is not None:
            await stopping

    def hold(self, subscription: Subscription) -> None:
        """Keep what arrives for a joining subscription until its floors are known."""
        self.held[subscription] = []

    async def note_floors(self, subscription: Subscription) -> None:
        """Note where each stream ends now; the joining subscription gets only newer events.

        What arrived meanwhile was held back, and is handed over now if it is newer.
        """
        floors: dict[str, int] = {}
        try:
            for _, namespace, last_seq in await self.watcher.list_streams():
                floors[namespace] = last_seq
        finally:
            held = self.held.pop(subscription, [])
        if subscription not in self.subs:
            return  # closed meanwhile
        self.floors[subscription] = floors
        for delivery in held:
            if (delivery.sequence or 0) > floors.get(delivery.namespace, 0):
                subscription.deliver(delivery)

    # --- setting up -----------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._nc = await self.bus.runtime.connection()
        # Listen for new streams before listing the existing ones, so none falls between.
        await self.watcher.listen(self._nc)
        if self.positions is not None:
            await self.positions.open(self._nc)
        await self.watcher.scan()
        if self.positions is not None:
            self.positions.start_saving()

    def _known(self, stream: str) -> bool:
        return stream in self.consumers

    async def _consume(
        self, stream: str, namespace: str, created_later: bool, last_seq: int | None
    ) -> None:
        """Read ``stream`` (found by the watcher) from where this feed starts in it."""
        if self._stopped or stream in self.consumers:
            return
        self.consumers.claim(stream)
        self._streams[namespace] = stream
        position = since = None
        if self.positions is not None:
            position = await self.positions.load(self._nc, stream)
            since = self.positions.since
        start = self.start_at
        floor = start_floor(
            start,
            namespace,
            created_later=created_later,
            position=position,
            since=since,
            last_seq=last_seq,
        )
        if floor is not None:
            self._floor[namespace] = floor
        config = consumer_config(
            start, namespace, created_later=created_later, position=position, since=since
        )
        await self.consumers.consume(self._nc, stream, namespace, config)

    def _resume_after(self, namespace: str) -> int | None:
        return self._offered.get(namespace, self._floor.get(namespace))

    async def _room(self) -> None:
        if self.subs:
            await self.subs[0].half_empty()

    def _fail(self, error: BaseException) -> None:
        for sub in tuple(self.subs):
            sub.fail(error)

    # --- receiving ----------------------------------------------------------------------
    async def _on_traced_msg(self, namespace: str, stream: str, generation: int, msg: Msg) -> None:
        """:meth:`_on_msg` in a CONSUMER span, a child of the context the stored message
        carries (the save that wrote it)."""
        if not tracing.recording():
            await self._on_msg(namespace, stream, generation, msg)
            return
        headers = msg.headers or {}
        span = tracing.start_span(
            f"aether deliver {namespace}",
            kind=tracing.CONSUMER,
            parent=tracing.carried(headers) or {},
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "receive",
                "messaging.destination.name": msg.subject,
                "messaging.message.id": headers.get(MSG_ID, ""),
                "aether.namespace": namespace,
                "aether.subscribers": len(self.subs),
            },
        )
        try:
            await self._on_msg(namespace, stream, generation, msg)
        finally:
            span.end()

    async def _on_msg(self, namespace: str, stream: str, generation: int, msg: Msg) -> None:
        if not self.consumers.current(stream, generation):
            return  # from a consumer replaced after a message was dropped
        sequence = delivery_stream_sequence(msg.reply)
        try:
            event = decode_event(
                msg.data,
                sequence=sequence,
                trace_context=tracing.carried(msg.headers) if tracing.enabled else None,
            )
        except ReplayError as exc:
            # Never silently: the subscriber cannot get it, so say so loudly.
            self.bus._count("undecodable")
            logger.error("cannot deliver message %s of %s: %s", sequence, stream, exc.reason)
            return
        self._seen += 1
        if self._seen % _LAG_SAMPLE == 0:  # a sample is enough for a lag histogram
            metrics.BUS_LAG.observe(max(0.0, time.time() - event.timestamp.timestamp()))
        if len(self.subs) == 1 and not self.floors and not self.held:
            # The common case, inline as it runs for every message: one subscription.
            sub = self.subs[0]
            positions = self.positions
            if positions is not None and positions.handled(event.id):
                # Handled already (a durable subscription resumed before it): not twice.
                self.bus._count("duplicates")
            elif not sub.filter.matches(event):
                self.bus._count("filtered")
            # With overflow="wait" this holds nats-py's delivery, and so the consumer's
            # flow control, until the subscriber makes room.
            elif (
                await sub.adeliver(Delivery(namespace, event, len(msg.data)))
                if sub.overflow == "wait"
                else sub.deliver(Delivery(namespace, event, len(msg.data)))
            ):
                if not self._uncounted:
                    assert self._loop is not None
                    self._loop.call_soon(self._count_burst)
                self._uncounted += 1
            # After the delivery: an overflow's resume point must not include this event.
            self._offered[namespace] = sequence
            return
        delivery = Delivery(namespace, event, len(msg.data))
        # A shared feed: never waits for one subscriber (its subscriptions end on overflow).
        count = filtered = 0
        for sub in tuple(self.subs):  # deliver() may end one, which detaches it
            floor = self.floors.get(sub)
            if floor is not None and sequence <= floor.get(namespace, 0):
                continue
            if not sub.filter.matches(event):
                filtered += 1
            elif sub in self.held:
                self.held[sub].append(delivery)
            elif sub.deliver(delivery):
                count += 1
        self._offered[namespace] = sequence
        if filtered:
            self.bus._count("filtered", filtered)
        if count:
            self.bus._count("delivered", count)
            metrics.BUS_DELIVERED.inc(count)

    def _count_burst(self) -> None:
        # Runs once the deliveries of one burst (what nats-py had ready) are handed out.
        count, self._uncounted = self._uncounted, 0
        if count:
            self.bus._count("delivered", count)
            metrics.BUS_DELIVERED.inc(count)

    # --- stopping -----------------------------------------------------------------------------
    def stop(self) -> asyncio.Task[None]:
        """Release the consumers (once); must be called on the subscription's loop."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        self._stopped = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        await self.watcher.stop()
        await self.consumers.stop()
        if self.positions is not None and self._nc is not None:
            await self.positions.stop()


class FeedLink:
    """One subscription's side of its feed: the SubscriptionSource the NATS bus gives it.

    It is made with the subscription; the feed (its own, or a running shared one) is
    chosen on the subscription's loop, and until it has joined one there is nothing
    to reach, take or stop.
    """

    def __init__(self, *, durable: bool) -> None:
        #: A durable subscription's feed saves each delivery once it is handled.
        self.tracks_handled = durable
        self.feed: Feed | None = None
        self.subscription: Subscription | None = None
        #: The task attaching the subscription to its feed (async subscribe only).
        self.attaching: asyncio.Future[None] | None = None

    def join(self, feed: Feed, subscription: Subscription) -> None:
        """Hand ``subscription`` what ``feed`` reads from now on."""
        self.feed, self.subscription = feed, subscription
        feed.add(subscription)

    async def ready(self) -> None:
        if self.attaching is not None:
            await self.attaching

    def reached(self) -> dict[str, int]:
        if self.feed is None or self.subscription is None:
            return {}
        return self.feed.reached(self.subscription)

    def took(self, delivery: Delivery) -> None:
        if self.feed is not None:
            self.feed.took(delivery)

    async def stop(self) -> None:
        if self.feed is not None and self.subscription is not None:
            await self.feed.arelease(self.subscription)

    def detach(self) -> None:
        """The subscription closed: release it from its feed, on the feed's loop."""
        feed, subscription = self.feed, self.subscription
        if feed is None or subscription is None:
            return
        loop = subscription.loop
        if loop is None or loop.is_closed():
            return
        if running_loop() is loop:
            feed.release(subscription)
        else:
            loop.call_soon_threadsafe(feed.release, subscription)
