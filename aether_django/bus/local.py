"""The in-process event bus: subscriptions by namespace pattern and filter, bounded buffers.

A subscription never loses events silently. Each has a bounded buffer, in deliveries
(``buffer_size``) and in bytes of stored events (``buffer_bytes``); when a
subscriber falls so far behind that its buffer is full, the subscription is
ended: the subscriber first receives what was buffered, then
SubscriptionOverflowError carrying the last stream sequence it received per
namespace, from which it can resume (from the store, or with a new subscription
starting at ``overflow.resume_start()``). The Go original drops events in that case.
A callback subscription is told through its ``on_error`` callback, and every
overflow is counted (``bus.metrics["overflowed"]`` and the Prometheus counter
``aether_bus_overflows_total``).

A handler that raises has not handled its delivery. A callback's delivery is
handed to it again after a wait that doubles each time (``handler_backoff``
seconds first); when it has failed ``handler_retries`` times more, the
subscription stops at that event with SubscriptionHandlerError, which names it,
and whose ``resume_start()`` starts at it. An iterating subscriber says the same
with :meth:`Subscription.nack`. The event is never counted as handled, so a
durable subscription resumes at it instead of going past it.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import threading
import warnings
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from .. import metrics, tracing
from ..aio import running_loop
from ..errors import AetherError
from ..events import Event
from ..names import validate_namespace
from ..patterns import SubscriptionFilter, is_exact, matches, validate_pattern
from .base import BaseEventBus, Feature, Start

logger = logging.getLogger(__name__)

__all__ = [
    "Delivery",
    "FanOutBus",
    "LocalEventBus",
    "Subscription",
    "SubscriptionClosedError",
    "SubscriptionHandlerError",
    "SubscriptionOverflowError",
    "SubscriptionSource",
]

#: Deliveries a subscription buffers before it overflows, unless told otherwise.
DEFAULT_BUFFER_SIZE = 10_000
#: Times a delivery whose handler failed is handed over again before the
#: subscription stops at it, unless told otherwise.
DEFAULT_HANDLER_RETRIES = 3
#: Seconds before the first of those retries; each further wait is twice the one
#: before, up to MAX_HANDLER_BACKOFF.
DEFAULT_HANDLER_BACKOFF = 0.5
MAX_HANDLER_BACKOFF = 30.0
#: Bytes of stored events a subscription buffers before it overflows, unless told
#: otherwise: 10 000 events of up to 1 MiB each would be 10 GiB.
DEFAULT_BUFFER_BYTES = 64 * 1024 * 1024

Callback = Callable[["Delivery"], Any]
#: Called with the error that ended a callback subscription (for example a
#: SubscriptionOverflowError); a plain function or a coroutine function.
ErrorCallback = Callable[[BaseException], Any]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event as a subscriber receives it, with the namespace it was saved in."""

    namespace: str
    event: Event
    #: Bytes of the event as stored (what a buffer's byte budget counts); 0 when not
    #: known, for a transient event.
    size: int = 0

    @property
    def sequence(self) -> int | None:
        """The event's position in its namespace's stream (None for transient events)."""
        return self.event.sequence


class SubscriptionOverflowError(AetherError):
    """The subscriber fell behind and its buffer filled: the subscription has ended.

    ``last_sequences`` maps each namespace to the last stream sequence the
    subscriber received; resume from there and nothing is missed. Where the bus
    knows it (``NATSEventBus``), a namespace the subscription reads but received
    nothing from is listed too, with the sequence the subscription had got past,
    so :meth:`resume_start` never replays that namespace's older history.
    """

    def __init__(self, pattern: str, last_sequences: dict[str, int], buffer_size: int) -> None:
        self.pattern = pattern
        self.last_sequences = dict(last_sequences)
        self.buffer_size = buffer_size
        super().__init__(
            f"subscription to {pattern!r} fell {buffer_size} events behind and was ended; "
            f"resume after {self.last_sequences or 'the start'}"
        )

    @property
    def last_sequence(self) -> int | None:
        """The last sequence received, when the subscription covered one namespace."""
        if len(self.last_sequences) == 1:
            return next(iter(self.last_sequences.values()))
        return None

    def resume_start(self) -> dict[str, int]:
        """A ``start=`` for a new subscription that continues right after this one.

        Namespaces missing from it (created after the subscription ended) are
        read from their first event.
        """
        return {namespace: seq + 1 for namespace, seq in self.last_sequences.items()}


class SubscriptionHandlerError(AetherError):
    """A delivery's handler kept failing: the subscription stopped at that event.

    The event was not counted as handled (a durable subscription with the same
    name resumes at it) and nothing after it was handed over. ``delivery`` is
    the event, ``attempts`` how often its handler ran, and the handler's last
    exception is ``__cause__``. ``last_sequences`` maps each namespace to the
    last stream sequence handled before it, and :meth:`resume_start` is a
    ``start=`` that begins at the failed event.
    """

    def __init__(
        self,
        pattern: str,
        delivery: Delivery,
        attempts: int,
        error: BaseException,
        last_sequences: dict[str, int],
    ) -> None:
        self.pattern = pattern
        self.delivery = delivery
        self.namespace = delivery.namespace
        self.sequence = delivery.sequence
        self.event_id = delivery.event.id
        self.attempts = attempts
        self.last_sequences = dict(last_sequences)
        event = delivery.event
        super().__init__(
            f"the handler of subscription {pattern!r} failed {attempts} times on event "
            f"{event.id} ({event.event_type} of {event.actor_id!r}, namespace "
            f"{delivery.namespace!r}, sequence {delivery.sequence}): {error!r}; "
            "the subscription stopped at it"
        )
        self.__cause__ = error

    def resume_start(self) -> dict[str, int]:
        """A ``start=`` for a new subscription that begins at the failed event.

        Namespaces missing from it are read from their first event.
        """
        return {namespace: seq + 1 for namespace, seq in self.last_sequences.items()}


class SubscriptionClosedError(AetherError):
    """The subscription was closed by the bus (for example, its setup failed)."""


class SubscriptionSource(Protocol):
    """What fills a subscription from outside this process (the NATS bus's feed), as
    the subscription sees it.

    Deliveries themselves arrive through :meth:`Subscription.deliver` (or
    ``adeliver``); this is the rest a subscription asks of its source. A bus that
    has one passes it as ``Subscription(source=...)``; the in-process bus has none.
    """

    @property
    def tracks_handled(self) -> bool:
        """Whether :meth:`took` wants each delivery once it is handled."""
        ...

    async def ready(self) -> None:
        """Return once the source delivers (so that ``start="new"`` is exact)."""
        ...

    def reached(self) -> dict[str, int]:
        """Namespace -> the sequence the source has offered the subscription
        everything up to (a resume point for namespaces that delivered nothing)."""
        ...

    def took(self, delivery: Delivery) -> None:
        """The subscriber has handled ``delivery`` (never earlier: a crash while
        handling must not skip it); a durable source saves it as its position."""
        ...

    async def stop(self) -> None:
        """Release what the source keeps for the subscription, which has closed."""
        ...


class Subscription:
    """Events matching a namespace pattern and a filter, as an async iterator.

    ``async for delivery in subscription`` yields Delivery objects in the order
    the bus received them (stream order per namespace). ``close()`` ends it.
    With ``callback=`` the bus calls the callback for each delivery instead, and
    ``on_error=`` with the error that ends the subscription, if one does.

    A delivery counts as *handled* once the subscriber asks for the next one,
    calls :meth:`ack`, or closes with :meth:`aclose` (for a callback: once it
    returns without raising). Durable subscriptions save only handled positions.
    A callback that raises gets the delivery again, ``handler_retries`` times at
    most, after ``handler_backoff`` seconds doubling each time; then the
    subscription ends with SubscriptionHandlerError. An iterating subscriber
    whose handler failed calls :meth:`nack` for the same.

    A bus that reads from outside the process passes ``source=`` (a
    :class:`SubscriptionSource`), which is told of each handled delivery and
    released when the subscription closes.
    """

    def __init__(
        self,
        pattern: str,
        filter: SubscriptionFilter | None = None,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        callback: Callback | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        on_close: Callable[[Subscription], None] | None = None,
        overflow: str = "end",
        on_error: ErrorCallback | None = None,
        handler_retries: int = DEFAULT_HANDLER_RETRIES,
        handler_backoff: float = DEFAULT_HANDLER_BACKOFF,
        source: SubscriptionSource | None = None,
    ) -> None:
        if overflow not in ("end", "wait"):
            raise ValueError('overflow must be "end" or "wait"')
        #: "end": a full buffer ends the subscription with SubscriptionOverflowError.
        #: "wait": a full buffer makes the source wait (backpressure), where the
        #: source can (stored events stay in the stream meanwhile).
        self.overflow = overflow
        self._space: asyncio.Event | None = None
        self.pattern = validate_pattern(pattern)
        self.exact = is_exact(pattern)
        #: When set, only namespaces matching one of these patterns are delivered
        #: (the bus's ``readable=``).
        self.readable: frozenset[str] | None = None
        self.filter = filter or SubscriptionFilter()
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self.buffer_size = buffer_size
        if handler_retries < 0 or handler_backoff < 0:
            raise ValueError("handler_retries and handler_backoff must not be negative")
        self.handler_retries = handler_retries
        self.handler_backoff = handler_backoff
        if buffer_bytes < 1:
            raise ValueError("buffer_bytes must be at least 1")
        #: The buffer is also full once the events in it add up to this many bytes
        #: (one event larger than that is still taken into an empty buffer).
        self.buffer_bytes = buffer_bytes
        self._queued_bytes = 0
        self.callback = callback
        self.loop = loop
        self._pump_task: asyncio.Task[None] | None = None
        self.last_sequences: dict[str, int] = {}
        self.received = 0
        self._queue: collections.deque[Delivery] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._error: BaseException | None = None
        self._on_close = on_close
        self.on_error = on_error
        #: Where deliveries come from, when that is outside this process.
        self.source = source
        # Whether handled deliveries are told to the source (durable positions).
        self._tracks = source is not None and source.tracks_handled
        #: The delivery handed over last and not yet counted as handled.
        self._pending: Delivery | None = None
        #: The delivery handed over last, and how often in a row its handler failed.
        self._last: Delivery | None = None
        self._failures = 0
        #: A delivery whose handler failed, with the error: handed over again
        #: (after a wait) before anything else.
        self._retry: tuple[Delivery, BaseException] | None = None
        if callback is not None and inspect.iscoroutinefunction(callback):
            # Awaited one at a time, in order, with the same buffer as an iterator.
            if loop is None or loop is not running_loop():
                raise RuntimeError("an async callback needs to subscribe from its event loop")
            self.callback = None
            self._pump_task = loop.create_task(self._pump(callback))

    async def _pump(
        self,
        callback: Callable[[Delivery], Awaitable[Any]],
        *,
        sync_callback: Callback | None = None,
    ) -> None:
        """Await ``callback`` for each delivery in order; a failed one is retried first.

        With ``sync_callback`` (a plain callback that failed), hand deliveries to it
        directly again as soon as the retried one and those queued meanwhile are done.
        """
        try:
            async for delivery in self:
                try:
                    await callback(delivery)
                except Exception as exc:
                    self._log_failure(delivery, exc)
                    self.nack(exc)
                    continue
                if (
                    sync_callback is not None
                    and not self._queue
                    and self._retry is None
                    and not self._closed
                ):
                    self.ack()
                    self.callback = sync_callback
                    self._pump_task = None
                    return
        except (
            SubscriptionOverflowError,
            SubscriptionClosedError,
            SubscriptionHandlerError,
        ) as exc:
            await self._report(exc)

    def _log_failure(self, delivery: Delivery, error: BaseException) -> None:
        logger.error(
            "subscriber callback for %r failed on event %s (%s, sequence %s), attempt %d",
            self.pattern,
            delivery.event.id,
            delivery.namespace,
            delivery.sequence,
            self._failures + 1,
            exc_info=error,
        )

    async def _report(self, error: BaseException) -> None:
        """Hand the error that ended a callback subscription to ``on_error`` (or the log)."""
        if self.on_error is None:
            logger.error("subscription to %r ended: %s", self.pattern, error)
            return
        try:
            outcome = self.on_error(error)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            logger.exception("on_error callback for %r failed", self.pattern)

    def __repr__(self) -> str:
        return f"<Subscription {self.pattern!r} buffered={len(self._queue)}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def reads(self, namespace: str) -> bool:
        """Whether ``namespace`` is within ``readable`` (always, when that is unset)."""
        readable = self.readable
        return readable is None or any(matches(p, namespace) for p in readable)

    # --- the bus side -----------------------------------------------------------
    def deliver(self, delivery: Delivery) -> bool:
        """Offer a delivery; False when the subscription is closed or just overflowed.

        Must run on the subscription's loop (the bus arranges that).
        """
        if self._closed:
            return False
        if self.callback is not None:
            self._call(delivery)
            return True
        if self._full(delivery):
            self._end(
                SubscriptionOverflowError(self.pattern, self._resume_point(), len(self._queue))
            )
            return False
        self._queue.append(delivery)
        self._queued_bytes += delivery.size
        self._wake()
        return True

    def _full(self, delivery: Delivery) -> bool:
        """Whether the buffer has no room for ``delivery``, by count or by bytes."""
        if len(self._queue) >= self.buffer_size:
            return True
        return bool(self._queue) and self._queued_bytes + delivery.size > self.buffer_bytes

    async def adeliver(self, delivery: Delivery) -> bool:
        """Like :meth:`deliver`, but with ``overflow="wait"`` wait for room instead of ending."""
        if self.overflow == "wait" and self.callback is None:
            while self._full(delivery) and not self._closed:
                if self._space is None:
                    self._space = asyncio.Event()
                self._space.clear()
                await self._space.wait()
        return self.deliver(delivery)

    async def half_empty(self) -> None:
        """Wait until the buffer is at most half full, by count and by bytes (or closed).

        A source that stopped reading because the buffer was full starts again then,
        so that it does not restart for each delivery the subscriber takes.
        """
        while (
            not self._closed
            and self.callback is None
            and (
                2 * len(self._queue) > self.buffer_size
                or 2 * self._queued_bytes > self.buffer_bytes
            )
        ):
            if self._space is None:
                self._space = asyncio.Event()
            self._space.clear()
            await self._space.wait()

    def _resume_point(self) -> dict[str, int]:
        # What the subscriber will have received once it drains the buffer.
        point = dict(self.last_sequences)
        for delivery in self._queue:
            if delivery.sequence is not None:
                point[delivery.namespace] = delivery.sequence
        if self.source is not None:
            # Namespaces that delivered nothing: resume where the source had got to,
            # not from their first event.
            for namespace, seq in self.source.reached().items():
                point.setdefault(namespace, seq)
        return point

    def _call(self, delivery: Delivery) -> None:
        callback = self.callback
        assert callback is not None
        self._note(delivery)
        while True:
            try:
                callback(delivery)
            except Exception as exc:
                self._log_failure(delivery, exc)
                self.nack(exc)
            else:
                self._retry = None
                self.ack()  # a plain callback has handled its delivery once it returns
                return
            if self.loop is not None:
                break
            # Called in the publisher's thread, with no loop to wait on: retried at once.
            if self._failures > self.handler_retries:
                assert self._retry is not None
                error = self._retry[1]
                self._retry = None
                self._stop_at(delivery, error)
                return
        # Wait on the loop before retrying: meanwhile later deliveries queue up (in
        # order, buffer_size at most) and a pump hands them over once it succeeds.
        assert self.loop is not None
        self.callback = None
        sync_callback = callback

        async def call(delivery: Delivery) -> None:
            sync_callback(delivery)

        self._pump_task = self.loop.create_task(self._pump(call, sync_callback=sync_callback))

    def _note(self, delivery: Delivery, *, again: bool = False) -> None:
        if not again:
            self.received += 1
            self._failures = 0
        self._last = delivery
        if delivery.sequence is not None:
            self.last_sequences[delivery.namespace] = delivery.sequence
        if self._tracks:
            self._pending = delivery

    def nack(self, error: BaseException | None = None) -> None:
        """The delivery taken last was not handled (its handler raised ``error``).

        It is not counted as handled, and it is what the subscription hands over
        next, after a wait (``handler_backoff`` seconds, doubling each time). Once
        it has failed ``handler_retries`` times more, the subscription ends with
        SubscriptionHandlerError naming it instead, so a durable subscription
        resumes at it.
        """
        delivery = self._last
        if delivery is None or (self._closed and self._error is None):
            return
        self._pending = None
        self._failures += 1
        self._retry = (delivery, error or RuntimeError("the handler did not handle it"))

    def _backoff(self) -> float:
        return float(min(self.handler_backoff * 2 ** (self._failures - 1), MAX_HANDLER_BACKOFF))

    def _stop_at(self, delivery: Delivery, error: BaseException) -> SubscriptionHandlerError:
        """End the subscription at ``delivery``, whose handler kept failing."""
        point = dict(self.last_sequences)
        if delivery.sequence is not None:
            point[delivery.namespace] = delivery.sequence - 1
        for queued in self._queue:  # discarded: never handed over
            if queued.sequence is not None:
                point.setdefault(queued.namespace, queued.sequence - 1)
        if self.source is not None:
            for namespace, seq in self.source.reached().items():
                point.setdefault(namespace, seq)
        failure = SubscriptionHandlerError(self.pattern, delivery, self._failures, error, point)
        self._queue.clear()
        self._queued_bytes = 0
        if self._closed:
            # It overflowed while the handler was retried: this event comes first.
            self._error = failure
        else:
            self._end(failure)
        return failure

    def ack(self) -> None:
        """Count the delivery taken last as handled now (a durable subscription saves it).

        Asking for the next delivery does the same; call this when a handler
        finishes long before the next event is wanted.
        """
        pending = self._pending
        if pending is not None:
            self._pending = None
            assert self.source is not None
            self.source.took(pending)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _end(self, error: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._error = error
        self._wake()
        if self._space is not None:
            self._space.set()
        if self._on_close is not None:
            self._on_close(self)
        if error is not None and self.callback is not None and self.on_error is not None:
            # A plain callback has no pump to report through; it is told here.
            try:
                self.on_error(error)
            except Exception:
                logger.exception("on_error callback for %r failed", self.pattern)

    def fail(self, error: BaseException) -> None:
        """End the subscription with ``error`` (raised to the subscriber after its buffer)."""
        self._end(error)

    # --- the subscriber side ----------------------------------------------------------
    def close(self) -> None:
        """Stop receiving; buffered deliveries are discarded.

        The delivery taken last is not counted as handled (its handler may still
        be running): a durable subscription gets it again when it resumes. Use
        :meth:`aclose` when it was handled.
        """
        self._queue.clear()
        self._retry = None
        self._queued_bytes = 0
        self._end(None)

    async def aclose(self) -> None:
        """Count the delivery taken last as handled, close, and wait until the bus
        has released everything behind the subscription.

        For a durable subscription this includes saving its position.
        """
        self.ack()
        self.close()
        if self.source is not None:
            await self.source.stop()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """:meth:`aclose` when the block finished; when it raised, the delivery
        taken last was not handled, so only :meth:`close` (and release)."""
        if exc_type is None:
            await self.aclose()
            return
        self._pending = None
        self.close()
        if self.source is not None:
            await self.source.stop()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Delivery:
        # Asking for the next delivery means the previous one was handled.
        if self._pending is not None:
            self.ack()
        while True:
            if self._retry is not None:
                delivery, error = self._retry
                if self._failures > self.handler_retries:
                    self._retry = None
                    raise self._stop_at(delivery, error)
                await asyncio.sleep(self._backoff())
                if self._retry is None:
                    continue  # closed meanwhile
                self._retry = None
                self._note(delivery, again=True)
                return delivery
            if self._queue:
                delivery = self._queue.popleft()
                self._queued_bytes -= delivery.size
                self._note(delivery)
                if self._space is not None:
                    self._space.set()
                return delivery
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def next(self, timeout: float | None = None) -> Delivery:
        """The next delivery, waiting at most ``timeout`` seconds (TimeoutError)."""
        return await asyncio.wait_for(self.__anext__(), timeout)


class FanOutBus(BaseEventBus):
    """The in-process half every bus shares: live subscriptions by pattern, handed the
    deliveries for a namespace on their own loops, with counters.

    Thread-safe: ``dispatch`` may be called from any thread; each subscription
    receives on the event loop it was created on. Subclasses say where events
    come from (:meth:`subscribe`, :meth:`publish`).
    """

    def __init__(
        self,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        handler_retries: int = DEFAULT_HANDLER_RETRIES,
        handler_backoff: float = DEFAULT_HANDLER_BACKOFF,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        **_: object,
    ) -> None:
        # Extra keyword arguments (runtime, node_id, ...) are what get_event_bus
        # passes to every bus class; a bus ignores those it does not need.
        super().__init__()
        self.buffer_size = buffer_size
        #: How a subscription retries a delivery whose callback raised (Subscription).
        self.handler_retries = handler_retries
        self.handler_backoff = handler_backoff
        self.buffer_bytes = buffer_bytes
        self._lock = threading.Lock()
        self._exact: dict[str, list[Subscription]] = collections.defaultdict(list)
        self._wildcard: list[Subscription] = []
        self._metrics: collections.Counter[str] = collections.Counter()

    @property
    def metrics(self) -> dict[str, int]:
        """Counters: published, delivered, filtered, overflowed, subscriptions."""
        with self._lock:
            counts = dict(self._metrics)
            counts["subscriptions"] = sum(len(s) for s in self._exact.values()) + len(
                self._wildcard
            )
        return counts

    def _count(self, key: str, n: int = 1) -> None:
        self._metrics[key] += n

    def _add(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription.exact:
                self._exact[subscription.pattern].append(subscription)
            else:
                self._wildcard.append(subscription)

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription.exact:
                subs = self._exact.get(subscription.pattern, [])
                if subscription in subs:
                    subs.remove(subscription)
                if not subs:
                    self._exact.pop(subscription.pattern, None)
            elif subscription in self._wildcard:
                self._wildcard.remove(subscription)
            if subscription._error is not None and isinstance(
                subscription._error, SubscriptionOverflowError
            ):
                self._count("overflowed")
                metrics.BUS_OVERFLOWS.inc()

    def subscriptions_for(self, namespace: str) -> list[Subscription]:
        """The live subscriptions whose pattern (and ``readable``) match ``namespace``."""
        with self._lock:
            found = list(self._exact.get(namespace, ()))
            found += [s for s in self._wildcard if matches(s.pattern, namespace)]
        return [s for s in found if s.reads(namespace)]

    def dispatch(self, namespace: str, event: Event) -> int:
        """Offer an event to the matching local subscriptions (no validation, no counting)."""
        if tracing.enabled and event.trace_context and tracing.recording():
            # A stored event's hand-over, in a CONSUMER span of the save's trace.
            span = tracing.start_span(
                f"aether deliver {namespace}",
                kind=tracing.CONSUMER,
                parent=event.trace_context,
                attributes={
                    "messaging.operation.type": "receive",
                    "messaging.message.id": event.id,
                    "aether.namespace": namespace,
                },
            )
            try:
                return self._dispatch(namespace, event)
            finally:
                span.end()
        return self._dispatch(namespace, event)

    def _dispatch(self, namespace: str, event: Event) -> int:
        delivery = Delivery(namespace, event)
        current = running_loop()
        offered = 0
        for subscription in self.subscriptions_for(namespace):
            if not subscription.filter.matches(event):
                self._count("filtered")
                continue
            offered += 1
            loop = subscription.loop
            if loop is None or loop is current:
                subscription.deliver(delivery)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(subscription.deliver, delivery)
        self._count("delivered", offered)
        return offered

    def close(self) -> None:
        """Close every subscription."""
        with self._lock:
            subs = [s for group in self._exact.values() for s in group] + self._wildcard
        for subscription in subs:
            subscription.close()


class LocalEventBus(FanOutBus):
    """Delivers events to the subscriptions in this process whose pattern and filter match.

    It keeps no history: a subscription receives what is published (and, in the
    ``"memory"`` backend, saved) after it was made, so it starts at ``"new"``
    only and cannot be durable; ``overflow="wait"`` is refused too, as a
    publisher never waits. Thread-safe: ``publish`` may be called from any
    thread; each subscription receives on the event loop it was created on.
    """

    features: ClassVar[frozenset[Feature]] = frozenset({Feature.READABLE})

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
        """Subscribe to events of the namespaces matching ``namespace_pattern``.

        Without ``callback`` the result is an async iterator and must be created
        on the event loop that will iterate it. A ``callback`` is called for each
        delivery instead: a plain function right where the event arrives (it
        must return quickly; it has no buffer, so it never overflows), a
        coroutine function awaited one delivery at a time, in order, on the loop
        ``subscribe`` was called on, with the subscription's bounded buffer.
        ``on_error`` is called with the error that ends a callback subscription:
        SubscriptionOverflowError (with ``resume_start()``) when an async
        callback falls ``buffer_size`` deliveries (or ``buffer_bytes`` bytes of
        stored events) behind, SubscriptionHandlerError when the callback kept
        raising on one delivery (retried first, see :class:`Subscription`).
        Without it the error is only logged. ``start`` other than ``"new"``,
        ``durable`` and ``overflow="wait"`` raise UnsupportedSubscriptionError.
        """
        patterns = self.check_subscription(
            namespace_pattern, start=start, durable=durable, overflow=overflow, readable=readable
        )
        loop = running_loop()
        if callback is None and loop is None:
            raise RuntimeError(
                "subscribe() without callback= must be called from async code; "
                "pass callback= to receive events in sync code"
            )
        subscription = Subscription(
            namespace_pattern,
            filter,
            buffer_size=buffer_size or self.buffer_size,
            buffer_bytes=buffer_bytes or self.buffer_bytes,
            callback=callback,
            loop=loop,
            on_close=self._remove,
            on_error=on_error,
            handler_retries=self.handler_retries,
            handler_backoff=self.handler_backoff,
        )
        subscription.readable = patterns
        self._add(subscription)
        return subscription

    # --- publishing ----------------------------------------------------------------------
    def publish(self, namespace: str, event: Event) -> int:
        """Deliver ``event`` to every matching subscription in this process, now.

        Returns how many subscriptions it was offered to. Nothing is stored, so
        delivery is at most once: a subscription made later never sees it, and
        one that has overflowed or closed misses it. For an event that must not
        be lost, save it with the event store instead.
        """
        validate_namespace(namespace)
        self._count("published")
        return self.dispatch(namespace, event)


def deprecated_event_bus() -> type[LocalEventBus]:
    """The old name ``EventBus``, asked through a module's ``__getattr__`` (here and in
    the ``aether_django.bus`` package): LocalEventBus, with a warning naming the caller's
    line. EventBus named the in-process bus when it was also every bus's base class;
    the contract is BaseEventBus now, so the old name is kept one release."""
    warnings.warn(
        "aether_django.bus.EventBus is deprecated: use "
        "aether_django.bus.LocalEventBus for the in-process bus, or "
        "aether_django.bus.BaseEventBus for the interface every bus implements",
        DeprecationWarning,
        stacklevel=3,
    )
    return LocalEventBus


def __getattr__(name: str) -> Any:
    if name == "EventBus":
        return deprecated_event_bus()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
