"""The cluster-wide event bus: every saved event reaches matching subscribers in every process.

Stored events are the bus. A subscription reads the JetStream streams of the
namespaces its pattern matches with ordered consumers, so saving an event never
needs a second publish, delivery follows stream order per namespace, and a
subscriber of ``tenant-a`` only ever reads the stream of ``tenant-a``. A
wildcard subscription watches JetStream's stream-created advisories (and
rescans now and then) so namespaces created later are covered too.

Start positions: ``"new"`` (events saved after the subscription is ready),
``"all"``, a stream sequence (an int, or a dict namespace -> sequence), or a
``datetime``. A *durable* subscription has a name; the last stream sequence its
subscriber *handled* (asked for the next delivery after it, called ``ack()`` or
``aclose()``) is saved per namespace in the KV bucket ``aether_bus_positions``
right after that, with the ids of the last events it handled, and a subscription
with the same name resumes after it — in order, none missing, and skipping an
event whose id it has handled already.

Subscriptions from ``"new"`` without a durable name and with ``overflow="end"``
that follow the same pattern on the same event loop share one set of consumers:
each event is received and decoded once and handed to all of them (a process
serving 500 WebSocket clients of one namespace reads the namespace once, not 500
times). A subscription joining a running shared feed notes each stream's last
sequence first and skips what is not newer, so ``"new"`` stays exact.

A subscription with consumers of its own (catching up, durable, or
``overflow="wait"``) lets the NATS client queue at most its byte budget for each
of them (and more than one message of the stream's largest size): nats-server
pushes up to its flow-control window (32 MiB) to a consumer whose subscriber
does not read, so the client drops what is over the budget, and the consumer is
replaced by one reading on from after the last event offered to the subscription,
once the subscriber has read half its buffer. Nothing is skipped or repeated;
``bus.metrics["restarts"]`` counts the replacements.

``readable=`` (a set of namespace patterns) narrows a subscription to the
namespaces matching one of them: consumers are made only on their streams, so a
wildcard subscription of a user with few grants never reads the others (the
WebSocket consumer passes the user's read grants). Shared feeds are shared only
by subscriptions with the same ``readable``.

``publish(namespace, event)`` is for transient signals that are not stored: it
delivers to local subscribers at once and to other processes over core NATS,
at most once (a process that is down, or slow, misses it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy, KeyValueConfig
from nats.js.kv import KeyValue

from .. import metrics
from ..aio import Runtime, running_loop
from ..errors import ReplayError
from ..events import (
    Event,
    decode_event,
    encode_event,
    format_timestamp,
    parse_timestamp,
)
from ..names import default_node_id, event_namespace, validate_namespace
from ..nats.api import STREAM_CREATED_ADVISORIES, JetStreamRefused, delivery_stream_sequence
from ..nats.client import handle_dropped_messages
from ..nats.streams import list_event_streams, stream_info
from ..patterns import SubscriptionFilter, matches
from .base import Feature, Start
from .local import (
    DEFAULT_BUFFER_BYTES,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_HANDLER_BACKOFF,
    DEFAULT_HANDLER_RETRIES,
    Callback,
    Delivery,
    ErrorCallback,
    FanOutBus,
    Subscription,
)

logger = logging.getLogger(__name__)

__all__ = ["NATSEventBus", "default_node_id"]

#: KV bucket holding the positions of durable subscriptions.
POSITIONS_BUCKET = "aether_bus_positions"
#: Ids of the last events a durable subscription handled, kept per namespace with
#: its position, so an event delivered again after a resume is skipped.
RECENT_IDS = 100
#: Seconds between rescans for namespaces created while advisories were missed.
RESCAN_INTERVAL = 10.0
HDR_ORIGIN = "Aether-Origin"
#: Attempts (a second apart) to replace a consumer whose messages the client dropped
#: before its subscription ends with the error.
RESTART_ATTEMPTS = 5
#: One delivery in this many is timed for the bus-lag histogram.
_LAG_SAMPLE = 16


class NATSEventBus(FanOutBus):
    """A bus whose subscriptions receive every saved event, from any process.

    It supports the whole contract of :class:`~aether_django.bus.base.BaseEventBus`.
    """

    features: ClassVar[frozenset[Feature]] = frozenset(Feature)

    def __init__(
        self,
        *,
        runtime: Runtime,
        subject_prefix: str = "aether.events",
        node_id: str | None = None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        replicas: int = 1,
        timeout: float = 5.0,
        handler_retries: int = DEFAULT_HANDLER_RETRIES,
        handler_backoff: float = DEFAULT_HANDLER_BACKOFF,
        **_: Any,
    ) -> None:
        super().__init__(
            buffer_size=buffer_size,
            buffer_bytes=buffer_bytes,
            handler_retries=handler_retries,
            handler_backoff=handler_backoff,
        )
        self.runtime = runtime
        self.subject_prefix = subject_prefix
        self.signal_prefix = subject_prefix.rsplit(".", 1)[0] + ".signals"
        self.node_id = node_id or default_node_id()
        self.replicas = replicas
        self.timeout = timeout
        self._signals: asyncio.Future[Any] | None = None
        # (loop, pattern, readable) -> the shared feed of the "new" subscriptions there.
        self._shared: dict[tuple[asyncio.AbstractEventLoop, str, frozenset[str] | None], _Feed] = {}

    # --- subscribing ------------------------------------------------------------------
    def subscribe(
        self,
        namespace_pattern: str,
        filter: SubscriptionFilter | None = None,
        *,
        buffer_size: int | None = None,
        callback: Callback | None = None,
        start: Start = "new",
        durable: str | None = None,
        overflow: str = "end",
        on_error: ErrorCallback | None = None,
        readable: Collection[str] | None = None,
        buffer_bytes: int | None = None,
    ) -> Subscription:
        """Subscribe to saved events of the namespaces matching ``namespace_pattern``.

        ``readable``: when given, only namespaces that also match one of these
        patterns are read (no consumer is made on the other streams).

        ``buffer_size`` and ``buffer_bytes`` bound the buffer in deliveries and in
        bytes of stored events. ``overflow="wait"`` makes a full buffer hold the
        JetStream consumer back
        (flow control) instead of ending the subscription. ``on_error`` is
        called with the error that ends a callback subscription (see
        :meth:`EventBus.subscribe`). An int ``start`` is one stream's sequence,
        so a wildcard pattern needs a dict of namespace to sequence instead.

        In async code the consumers are set up in the background (use
        :meth:`asubscribe` to wait until they are); in sync code (``callback``
        required) this returns once they are, and the callback runs on the
        runtime's loop thread.
        """
        patterns = self.check_subscription(
            namespace_pattern, start=start, durable=durable, overflow=overflow, readable=readable
        )
        running = running_loop()
        if callback is None and running is None:
            raise RuntimeError(
                "subscribe() without callback= must be called from async code; "
                "pass callback= to receive events in sync code"
            )
        loop = running or self.runtime.loop
        subscription = Subscription(
            namespace_pattern,
            filter,
            buffer_size=buffer_size or self.buffer_size,
            buffer_bytes=buffer_bytes or self.buffer_bytes,
            callback=callback,
            loop=loop,
            on_close=self._remove,
            overflow=overflow,
            on_error=on_error,
            handler_retries=self.handler_retries,
            handler_backoff=self.handler_backoff,
        )
        subscription.readable = patterns
        self._add(subscription)
        self._listen_for_signals()
        shared = start == "new" and durable is None and overflow == "end"
        if running is None:
            future = asyncio.run_coroutine_threadsafe(
                self._attach(subscription, start, durable, shared=shared, readable=patterns), loop
            )
            try:
                future.result(self.timeout + 5)
            except BaseException:
                subscription.close()
                raise
        else:
            subscription._ready = loop.create_task(  # type: ignore[attr-defined]
                self._attach(subscription, start, durable, shared=shared, readable=patterns)
            )
        return subscription

    async def _attach(
        self,
        subscription: Subscription,
        start: Start,
        durable: str | None,
        *,
        shared: bool,
        readable: frozenset[str] | None,
    ) -> None:
        """Give ``subscription`` its consumers: its own, or a running shared feed's.

        Runs on the subscription's loop, which owns the shared feeds made on it.
        """
        if subscription.closed:
            return  # closed before it was attached: nothing to start for it
        if not shared:
            feed = _Feed(self, subscription.pattern, start, durable, readable=readable)
            subscription.feed = feed  # type: ignore[attr-defined]
            subscription._stopper = functools.partial(feed.arelease, subscription)
            feed.add(subscription)
            feed.task = asyncio.current_task()
            await feed.start()
            return
        key = (asyncio.get_running_loop(), subscription.pattern, readable)
        known = self._shared.get(key)
        joining = known is not None and not known.stopped
        if known is None or not joining:
            known = _Feed(
                self,
                subscription.pattern,
                "new",
                None,
                on_empty=self._drop_shared,
                readable=readable,
                shared=True,
            )
            self._shared[key] = known
            known.task = asyncio.get_running_loop().create_task(known.start())
        feed = known
        subscription.feed = feed  # type: ignore[attr-defined]
        subscription._stopper = functools.partial(feed.arelease, subscription)
        if joining:
            feed.hold(subscription)
        feed.add(subscription)
        try:
            assert feed.task is not None
            await asyncio.shield(feed.task)
            if joining:
                await feed.note_floors(subscription)
        except BaseException:
            subscription.close()
            raise

    def _drop_shared(self, feed: _Feed) -> None:
        for key, known in list(self._shared.items()):
            if known is feed:
                del self._shared[key]

    async def asubscribe(
        self,
        namespace_pattern: str,
        filter: SubscriptionFilter | None = None,
        *,
        buffer_size: int | None = None,
        callback: Callback | None = None,
        start: Start = "new",
        durable: str | None = None,
        overflow: str = "end",
        on_error: ErrorCallback | None = None,
        readable: Collection[str] | None = None,
        buffer_bytes: int | None = None,
    ) -> Subscription:
        """Subscribe and wait until the consumers exist, so ``start="new"`` is exact."""
        subscription = self.subscribe(
            namespace_pattern,
            filter,
            buffer_size=buffer_size,
            callback=callback,
            start=start,
            durable=durable,
            overflow=overflow,
            on_error=on_error,
            readable=readable,
            buffer_bytes=buffer_bytes,
        )
        try:
            await subscription._ready  # type: ignore[attr-defined]
        except BaseException:
            subscription.close()
            raise
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        super()._remove(subscription)
        feed: _Feed | None = getattr(subscription, "feed", None)
        if feed is None or subscription.loop is None or subscription.loop.is_closed():
            return
        loop = subscription.loop
        if running_loop() is loop:
            feed.release(subscription)
        else:
            loop.call_soon_threadsafe(feed.release, subscription)

    # --- transient signals --------------------------------------------------------------
    def publish(self, namespace: str, event: Event) -> int:
        """Deliver a transient (not stored) event here now, and to other processes at most once.

        Local subscribers receive it at once; subscribers in other processes
        receive it if they are connected when it passes. For events that must
        not be lost, save them with the event store: saved events reach every
        subscriber, including those that were offline.
        """
        validate_namespace(namespace)
        self._count("published")
        offered = self.dispatch(namespace, event)
        payload = encode_event(event)
        subject = f"{self.signal_prefix}.{namespace}"

        async def send() -> None:
            try:
                nc = await self.runtime.connection()
                await nc.publish(subject, payload, headers={HDR_ORIGIN: self.node_id})
            except Exception:
                logger.warning("transient event to %s not sent", subject, exc_info=True)

        running = running_loop()
        if running is not None:
            running.create_task(send())
        else:
            asyncio.run_coroutine_threadsafe(send(), self.runtime.loop)
        return offered

    def _listen_for_signals(self) -> None:
        if self._signals is not None:
            return
        loop = self.runtime.loop

        async def listen() -> Any:
            nc = await self.runtime.connection()
            prefix = self.signal_prefix + "."

            async def on_signal(msg: Msg) -> None:
                if (msg.headers or {}).get(HDR_ORIGIN) == self.node_id:
                    return  # delivered locally when it was published
                try:
                    event = decode_event(msg.data)
                except ReplayError:
                    logger.warning("ignoring an undecodable transient event on %s", msg.subject)
                    return
                self.dispatch(msg.subject[len(prefix) :], event)

            return await nc.subscribe(prefix + ">", cb=on_signal)

        self._signals = asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(listen(), loop), loop=loop
        )


class _Feed:
    """The JetStream consumers behind one subscription, or behind the shared "new"
    subscriptions of one pattern, on their loop."""

    def __init__(
        self,
        bus: NATSEventBus,
        pattern: str,
        start: Start,
        durable: str | None,
        *,
        on_empty: Callable[[_Feed], None] | None = None,
        readable: frozenset[str] | None = None,
        shared: bool = False,
    ) -> None:
        self.bus = bus
        # Shared by subscriptions from "new": its consumers never wait for one of them.
        self.shared = shared
        self.pattern = pattern
        # Only namespaces matching one of these are read (None: every match of pattern).
        self.readable = readable
        self.subs: list[Subscription] = []
        # Per joining subscription: namespace -> last stream sequence before it joined,
        # and what arrived for it while that was being asked.
        self.floors: dict[Subscription, dict[str, int]] = {}
        self.held: dict[Subscription, list[Delivery]] = {}
        self._on_empty = on_empty
        self.start_at = start
        self.durable = durable
        self.task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self.consumers: dict[str, Any] = {}
        # Durable: stream -> last handled sequence, and the ids of the last events
        # handled there (saved with it); _recent_ids is their union, for lookups.
        self.positions: dict[str, int] = {}
        self._recent: dict[str, collections.deque[str]] = {}
        self._recent_ids: set[str] = set()
        self._written: dict[str, int] = {}
        self._dirty: asyncio.Event | None = None
        #: The positions bucket (durable subscriptions), once it is known to exist.
        self._positions: KeyValue | None = None
        self._streams: dict[str, str] = {}  # namespace -> stream
        # Namespace -> the sequence before the first event this feed reads there,
        # and the last sequence it has offered to its subscriptions: together the
        # resume point of a namespace that delivered nothing before an overflow.
        self._floor: dict[str, int] = {}
        self._offered: dict[str, int] = {}
        # A feed of one subscription holds what the NATS client queues for each of its
        # consumers to a byte budget: when the client drops a message over it, the
        # consumer is replaced by one reading from after the last event offered.
        # Stream -> the generation of its consumer (what a replaced one still hands
        # over is ignored), and what its first consumer was made with.
        self._generation: dict[str, int] = {}
        self._largest: dict[str, int] = {}  # stream -> its max_msg_size, when it has one
        self._origin: dict[str, tuple[bool, int | None]] = {}
        # Deliveries not yet added to the counters: they are counted once per burst.
        self._uncounted = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._advisories: Any = None
        self._seen = 0
        # When a durable subscription first started: a namespace it has no
        # position for is read from then on (all of it, for start="all").
        self._since: datetime | None = None
        self._nc: Any = None
        self._stopped = False

    @property
    def stopped(self) -> bool:
        return self._stopped or self._stopping is not None

    def covers(self, namespace: str) -> bool:
        """Whether this feed reads ``namespace``: its pattern and ``readable`` match it."""
        if not matches(self.pattern, namespace):
            return False
        return self.readable is None or any(matches(p, namespace) for p in self.readable)

    def add(self, subscription: Subscription) -> None:
        self.subs.append(subscription)
        subscription._reached = functools.partial(self.reached, subscription)
        if self.durable:
            subscription._on_take = self._took

    def reached(self, subscription: Subscription) -> dict[str, int]:
        """Namespace -> the sequence this feed has offered ``subscription`` everything up to."""
        point = {**self._floor, **self._offered}
        for namespace, floor in self.floors.get(subscription, {}).items():
            # It joined a running feed: older events were never meant for it.
            point[namespace] = max(point.get(namespace, 0), floor)
        return point

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
            for _, namespace, info in await list_event_streams(
                self._nc, self.bus.subject_prefix, self.bus.timeout, pattern=self.pattern
            ):
                if self.covers(namespace):
                    floors[namespace] = int((info.get("state") or {}).get("last_seq") or 0)
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
        self._advisories = await self._nc.subscribe(
            STREAM_CREATED_ADVISORIES, cb=self._on_stream_created
        )
        if self.durable:
            self._dirty = asyncio.Event()
            await self._ensure_positions_bucket()
            self._since = await self._durable_since()
        for stream, namespace, last_seq in await self._list_streams():
            await self._consume(stream, namespace, created_later=False, last_seq=last_seq)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._rescan()))
        if self.durable:
            self._tasks.append(loop.create_task(self._save_positions()))

    async def _list_streams(self) -> list[tuple[str, str, int]]:
        streams = await list_event_streams(
            self._nc, self.bus.subject_prefix, self.bus.timeout, pattern=self.pattern
        )
        for stream, _, info in streams:
            self._note_largest(stream, info.get("config") or {})
        return [
            (stream, namespace, int((info.get("state") or {}).get("last_seq") or 0))
            for stream, namespace, info in streams
        ]

    def _note_largest(self, stream: str, config: Mapping[str, Any]) -> None:
        largest = config.get("max_msg_size")
        if isinstance(largest, int) and largest > 0:
            self._largest[stream] = largest

    async def _on_stream_created(self, msg: Msg) -> None:
        try:
            stream = json.loads(msg.data).get("stream", "")
        except ValueError:
            return
        if not stream.endswith("_events") or stream in self.consumers:
            return
        try:
            info = await stream_info(self._nc, stream, self.bus.timeout)
        except JetStreamRefused:
            return  # deleted again already, or not ours to read
        config = info.get("config") or {}
        self._note_largest(stream, config)
        namespace = event_namespace(config, self.bus.subject_prefix)
        if namespace:
            await self._consume(stream, namespace, created_later=True)

    async def _rescan(self) -> None:
        while not self._stopped:
            await asyncio.sleep(RESCAN_INTERVAL)
            try:
                for stream, namespace, _ in await self._list_streams():
                    await self._consume(stream, namespace, created_later=True)
            except Exception:
                logger.debug("stream rescan failed", exc_info=True)

    def _config(self, namespace: str, created_later: bool, position: int | None) -> ConsumerConfig:
        if position is not None:
            return ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=position + 1
            )
        start = self.start_at
        if self._since is not None and start != "all" and not isinstance(start, Mapping):
            return ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=self._since
            )
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

    def _start_floor(
        self, namespace: str, created_later: bool, position: int | None, last_seq: int | None
    ) -> int | None:
        """The sequence before the first event this feed reads in ``namespace``, if known."""
        start = self.start_at
        if position is not None:
            return position
        if created_later or start == "all":
            return 0
        if self._since is not None and not isinstance(start, Mapping):
            return None  # from a time: which sequence that is, is not known here
        if start == "new":
            return last_seq  # listed just before the consumer was made
        if isinstance(start, Mapping):
            return max(0, start.get(namespace, 1) - 1)
        if isinstance(start, int):
            return start - 1
        return None

    async def _consume(
        self, stream: str, namespace: str, *, created_later: bool, last_seq: int | None = None
    ) -> None:
        if self._stopped or stream in self.consumers or not self.covers(namespace):
            return
        self.consumers[stream] = None  # claimed; a concurrent discovery skips it
        self._streams[namespace] = stream
        position: int | None = None
        if self.durable:
            position, handled = await self._load_position(stream)
            recent = self._recent[stream] = collections.deque(handled, maxlen=RECENT_IDS)
            self._recent_ids.update(recent)
        floor = self._start_floor(namespace, created_later, position, last_seq)
        if floor is not None:
            self._floor[namespace] = floor
        self._origin[stream] = (created_later, position)
        await self._subscribe(stream, namespace, self._config(namespace, created_later, position))

    async def _subscribe(self, stream: str, namespace: str, config: ConsumerConfig) -> None:
        """Make the ordered consumer of ``stream`` (its first, or a replacement)."""
        generation = self._generation.get(stream, 0)
        # nats-py awaits cb(msg): a partial saves a coroutine per message.
        callback = functools.partial(self._on_msg, namespace, stream, generation)
        limit = -1
        if not self.shared:
            # What the client may queue for this consumer: the subscription's byte
            # budget, and more than one message of the largest size the stream takes,
            # or such a message would be dropped each time it is read.
            largest = self._largest.get(stream) or self._nc.max_payload
            limit = max(self.subs[0].buffer_bytes if self.subs else 0, largest + 1)
            handle_dropped_messages(
                callback, functools.partial(self._dropped, stream, namespace, generation)
            )
        js = self._nc.jetstream(timeout=self.bus.timeout)
        consumer = await js.subscribe(
            f"{self.bus.subject_prefix}.{namespace}.*",
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
        self.bus._count("restarts")
        task = asyncio.get_running_loop().create_task(self._restart(stream, namespace))
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def _restart(self, stream: str, namespace: str) -> None:
        old = self.consumers.get(stream)
        if old is not None:
            await _discard(old)
        if self.subs:
            # Start again once the subscriber has made room, not for each event it takes.
            await self.subs[0].half_empty()
        if self._stopped:
            return
        after = self._offered.get(namespace, self._floor.get(namespace))
        if after is not None:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
            )
        else:  # nothing offered yet, from a start without a known sequence: as before
            config = self._config(namespace, *self._origin[stream])
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
                for sub in tuple(self.subs):
                    sub.fail(exc)

    # --- receiving ----------------------------------------------------------------------
    async def _on_msg(self, namespace: str, stream: str, generation: int, msg: Msg) -> None:
        if generation != self._generation.get(stream, 0):
            return  # from a consumer replaced after a message was dropped
        sequence = delivery_stream_sequence(msg.reply)
        try:
            event = decode_event(msg.data, sequence=sequence)
        except ReplayError as exc:
            # Never silently: the subscriber cannot get it, so say so loudly.
            self.bus._count("undecodable")
            logger.error("cannot deliver message %s of %s: %s", sequence, stream, exc.reason)
            return
        self._seen += 1
        if self._seen % _LAG_SAMPLE == 0:  # a sample is enough for a lag histogram
            metrics.BUS_LAG.observe(max(0.0, time.time() - event.timestamp.timestamp()))
        if len(self.subs) == 1 and not self.floors and not self.held:
            sub = self.subs[0]
            if self._recent_ids and event.id in self._recent_ids:
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

    # --- durable positions ----------------------------------------------------------------
    def _key(self, stream: str) -> str:
        return f"{self.durable}.{stream}"

    async def _ensure_positions_bucket(self) -> None:
        js = self._nc.jetstream(timeout=self.bus.timeout)
        try:
            self._positions = await js.key_value(POSITIONS_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await js.create_key_value(
                    KeyValueConfig(
                        bucket=POSITIONS_BUCKET,
                        description="positions of aether_django durable subscriptions",
                        history=1,
                        replicas=self.bus.replicas,
                        direct=True,
                    )
                )
            self._positions = await js.key_value(POSITIONS_BUCKET)

    async def _durable_since(self) -> datetime | None:
        """When this durable subscription first started; None on its first start."""
        js = self._nc.jetstream(timeout=self.bus.timeout)
        kv = await js.key_value(POSITIONS_BUCKET)
        key = f"{self.durable}.since"
        try:
            entry = await kv.get(key)
            return parse_timestamp((entry.value or b"").decode())
        except (nats.js.errors.KeyNotFoundError, ValueError):
            pass
        start = self.start_at
        since = start if isinstance(start, datetime) else datetime.now(UTC)
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await kv.create(key, format_timestamp(since).encode())
        # On its very first start the requested start policy applies as it is.
        return None

    async def _load_position(self, stream: str) -> tuple[int | None, list[str]]:
        """The saved position in ``stream`` and the ids of the last events handled there."""
        js = self._nc.jetstream(timeout=self.bus.timeout)
        kv = await js.key_value(POSITIONS_BUCKET)
        try:
            entry = await kv.get(self._key(stream))
        except nats.js.errors.KeyNotFoundError:
            return None, []
        return _parse_position(entry.value or b"")

    def _took(self, delivery: Delivery) -> None:
        """The subscriber has handled ``delivery``: it is the position to save now."""
        if delivery.sequence is None:
            return  # a transient event has no position
        stream = self._streams.get(delivery.namespace)
        if stream is None:
            return
        self.positions[stream] = delivery.sequence
        recent = self._recent.setdefault(stream, collections.deque(maxlen=RECENT_IDS))
        if len(recent) == RECENT_IDS:
            self._recent_ids.discard(recent[0])
        recent.append(delivery.event.id)
        self._recent_ids.add(delivery.event.id)
        if self._dirty is not None:
            self._dirty.set()

    async def _save_positions(self) -> None:
        """Save each handled position as soon as it changes (confirmed by the server).

        While one save is on its way, later positions wait and are saved together.
        """
        assert self._dirty is not None
        while not self._stopped:
            await self._dirty.wait()
            self._dirty.clear()
            await self._write_positions()

    async def _write_positions(self) -> None:
        kv = self._positions
        assert kv is not None, "the positions bucket is opened before positions are saved"
        for stream, seq in list(self.positions.items()):
            if self._written.get(stream) == seq:
                continue
            value = json.dumps({"seq": seq, "ids": list(self._recent.get(stream, ()))})
            try:
                await kv.put(self._key(stream), value.encode())
                self._written[stream] = seq
            except (TimeoutError, nats.errors.Error):
                logger.warning("could not save the position of %s", self._key(stream))

    # --- stopping -----------------------------------------------------------------------------
    def stop(self) -> asyncio.Task[None]:
        """Release the consumers (once); must be called on the subscription's loop."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        for consumer in self.consumers.values():
            if consumer is not None:
                with contextlib.suppress(Exception):
                    await consumer.unsubscribe()
        # Their callbacks key the drop handlers, which refer to this feed: let both go.
        self.consumers = dict.fromkeys(self.consumers)
        if self._advisories is not None:
            with contextlib.suppress(Exception):
                await self._advisories.unsubscribe()
        if self.durable and self._nc is not None:
            await self._write_positions()


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


def _parse_position(raw: bytes) -> tuple[int | None, list[str]]:
    """A saved position: ``{"seq": n, "ids": [...]}``, or a bare sequence (older format)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None, []
    if isinstance(doc, int) and not isinstance(doc, bool):
        return doc, []
    if not isinstance(doc, dict):
        return None, []
    seq, ids = doc.get("seq"), doc.get("ids")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None, []
    return seq, [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []
