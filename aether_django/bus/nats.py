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
import logging
from collections.abc import Collection
from typing import Any, ClassVar

from nats.aio.msg import Msg

from ..aio import Runtime, running_loop
from ..errors import ReplayError
from ..events import Event, decode_event, encode_event
from ..names import default_node_id, validate_namespace
from ..patterns import SubscriptionFilter
from .base import Feature, Start

# RESTART_ATTEMPTS, POSITIONS_BUCKET, RECENT_IDS and RESCAN_INTERVAL were defined here
# before the feed was split into its parts: they stay importable from here.
from .consumers import RESTART_ATTEMPTS as RESTART_ATTEMPTS
from .feed import Feed, FeedLink
from .local import (
    DEFAULT_BUFFER_BYTES,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_HANDLER_BACKOFF,
    DEFAULT_HANDLER_RETRIES,
    Callback,
    ErrorCallback,
    FanOutBus,
    Subscription,
)
from .positions import POSITIONS_BUCKET as POSITIONS_BUCKET
from .positions import RECENT_IDS as RECENT_IDS
from .watcher import RESCAN_INTERVAL as RESCAN_INTERVAL

logger = logging.getLogger(__name__)

__all__ = ["NATSEventBus", "default_node_id"]

HDR_ORIGIN = "Aether-Origin"


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
        self._shared: dict[tuple[asyncio.AbstractEventLoop, str, frozenset[str] | None], Feed] = {}

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
        link = FeedLink(durable=durable is not None)
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
            source=link,
        )
        subscription.readable = patterns
        self._add(subscription)
        self._listen_for_signals()
        shared = start == "new" and durable is None and overflow == "end"
        if running is None:
            future = asyncio.run_coroutine_threadsafe(
                self._attach(subscription, link, start, durable, shared=shared, readable=patterns),
                loop,
            )
            try:
                future.result(self.timeout + 5)
            except BaseException:
                subscription.close()
                raise
        else:
            link.attaching = loop.create_task(
                self._attach(subscription, link, start, durable, shared=shared, readable=patterns)
            )
        return subscription

    async def _attach(
        self,
        subscription: Subscription,
        link: FeedLink,
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
            feed = Feed(
                self,
                subscription.pattern,
                start,
                durable,
                readable=readable,
                budget=subscription.buffer_bytes,
            )
            link.join(feed, subscription)
            feed.task = asyncio.current_task()
            await feed.start()
            return
        key = (asyncio.get_running_loop(), subscription.pattern, readable)
        known = self._shared.get(key)
        joining = known is not None and not known.stopped
        if known is None or not joining:
            known = Feed(
                self,
                subscription.pattern,
                "new",
                None,
                on_empty=self._drop_shared,
                readable=readable,
            )
            self._shared[key] = known
            known.task = asyncio.get_running_loop().create_task(known.start())
        feed = known
        if joining:
            feed.hold(subscription)
        link.join(feed, subscription)
        try:
            assert feed.task is not None
            await asyncio.shield(feed.task)
            if joining:
                await feed.note_floors(subscription)
        except BaseException:
            subscription.close()
            raise

    def _drop_shared(self, feed: Feed) -> None:
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
            if subscription.source is not None:
                await subscription.source.ready()
        except BaseException:
            subscription.close()
            raise
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        super()._remove(subscription)
        if isinstance(subscription.source, FeedLink):
            subscription.source.detach()

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
