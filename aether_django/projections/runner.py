"""Running projections: catch-up then live per namespace, a batch and its checkpoint in one step.

For each namespace its source covers, a :class:`NamespaceWorker` catches up from the
stream sequence right after the projection's checkpoint through the event store's
batched reads of the namespace in stream order (``aget_stream_events``), reading the
next chunk while the database applies the current one, until a read finds nothing
more: the stream's head. It then subscribes to the event bus from the sequence after
the last event it read. On the NATS bus that is an ordered JetStream consumer starting
at exactly that sequence, so an event saved between the last read and the
subscription is delivered by the bus, and none is missed; the worker still drops any
delivery at or before its position. When the subscription ends (the subscriber fell
behind, the bus was reset) the worker goes back to the store from its checkpoint.
Deliveries must follow each other: where the bus passed over stored messages (one it
could not decode), the worker reads that range from the store (.sources).

Each batch of events is applied in one ``transaction.atomic(using=Meta.database)``
together with the checkpoint's advance, a compare-and-set on its previous sequence
(and on the state ``running``), which is the transaction's first statement. When no
row is updated another runner moved the checkpoint (or an operator paused or reset
the projection): the batch rolls back before any handler ran, and the worker backs
off and starts again from the checkpoint it finds. Delivery may repeat; effects
never do.

A handler that raises rolls its batch back. The events of the batch before the
failing one are applied on their own, then the failing event is tried again after
``Meta.on_error`` backoffs; when the retries are used up the checkpoint is marked
``failed`` at that event (sequence, message, time) and the namespace's worker
stops. A stored message that does not decode stops the worker the same way, at once
(trying again cannot change it). Only a resume (after a fix) or a recorded skip gets
past it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import DatabaseError, connections, transaction
from django.utils import timezone
from nats.errors import Error as NatsError

from .. import correlation, metrics, privacy, tracing
from ..aggregates import get_aggregate_class
from ..bus import get_event_bus
from ..bus.base import Feature, Start
from ..errors import AetherError, ProjectionError, ReplayError
from ..events import Event, encode_event
from ..models import ForgottenKey, ProjectionCheckpoint
from ..privacy.keys import get_key_ring
from ..runtime import get_runtime
from ..store import get_event_store, get_existing_event_store, list_namespaces
from .base import Projection, ProjectionContext
from .sources import IDLE_WAIT, BatchSource, BusBatches, Item, StoreBatches, sequence_of

__all__ = ["NamespaceWorker", "ProjectionRunner", "stream_head"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a worker waits after losing a compare-and-set, before subscribing again.
MOVED_BACKOFF = 0.2


#: What _consume returns when its source ended (the store's head, or the end of a
#: subscription): the worker goes on with the other source.
_ENDED = "ended"


class _HandlerFailed(Exception):
    def __init__(self, index: int, sequence: int, error: BaseException) -> None:
        self.index = index
        self.sequence = sequence
        self.error = error


class _Moved(Exception):
    """The checkpoint was not where this batch started (or is no longer running)."""


class _Forgotten(_Moved):
    """The batch opened values with a key forget() erased meanwhile (its tombstone is
    in the projection's database): rolled back, to be read again without that key."""

    def __init__(self, subjects: set[str]) -> None:
        super().__init__()
        self.subjects = subjects


def stream_head(namespace: str) -> int:
    """The last stream sequence of ``namespace`` (0 when nothing was saved)."""
    info = get_existing_event_store(namespace).get_info()
    return info.last_sequence if info is not None else 0


def ensure_checkpoint(projection: type[Projection], namespace: str) -> ProjectionCheckpoint:
    """The checkpoint of ``projection`` in ``namespace``, made at 0 when missing.

    A new one starts paused when the projection is paused elsewhere, so that a pause
    holds for the namespaces a pattern finds later.
    """
    meta = projection._meta
    rows = ProjectionCheckpoint.objects.using(meta.database)
    found = rows.filter(projection=meta.name, namespace=namespace).first()
    if found is not None:
        return found
    paused = rows.filter(projection=meta.name, state=ProjectionCheckpoint.PAUSED).exists()
    checkpoint, _ = rows.get_or_create(
        projection=meta.name,
        namespace=namespace,
        defaults={"state": ProjectionCheckpoint.PAUSED if paused else ProjectionCheckpoint.RUNNING},
    )
    return checkpoint


def covered_namespaces(projection: type[Projection]) -> list[str]:
    """The existing namespaces the projection's source covers, sorted."""
    return [ns for ns in list_namespaces() if projection._meta.covers(ns)]


class NamespaceWorker(threading.Thread):
    """Applies one projection to one namespace until stopped, failed or paused.

    ``until``: stop once the checkpoint has reached this sequence (a rebuild's
    replay); None to follow live events until stopped. ``progress`` is called with
    the number of events of each committed batch.
    """

    def __init__(
        self,
        projection: type[Projection],
        namespace: str,
        *,
        stop: threading.Event | None = None,
        until: int | None = None,
        progress: Callable[[int], None] | None = None,
        node: str | None = None,
    ) -> None:
        super().__init__(name=f"projection {projection._meta.name} {namespace}", daemon=True)
        self.projection = projection
        self.namespace = namespace
        self.stopping = stop or threading.Event()
        self.until = until
        self.progress = progress
        #: The cluster node this worker runs in (handlers see it as ``context.node``).
        self.node = node
        self.instance = projection()
        self.upcast = projection.upcaster_for(namespace)
        # The namespace's aggregate class when it declares personal data: its sealed
        # fields are opened before the handlers see them (docs/privacy.md).
        model = get_aggregate_class(namespace)
        self.personal = model if model is not None and model._meta.personal_data else None
        # Whether forget() deletes rows of this projection: then a batch that opened
        # values checks the erased keys' tombstones before it commits.
        self.forgets = projection.forgets()
        self.store = get_event_store(namespace)
        #: Why the worker ended: "stopped", "caught-up", "paused", "failed" or "error".
        self.outcome: str | None = None
        #: The checkpoint's sequence as this worker last committed or read it.
        self.position = 0
        self._db = ThreadPoolExecutor(1, thread_name_prefix="projection-db")

    # --- the thread ----------------------------------------------------------------------
    def run(self) -> None:
        try:
            # On the runtime's own loop, which holds the process's NATS connection: a
            # loop of the worker's own would open (and leave behind) one of its own.
            future = asyncio.run_coroutine_threadsafe(self._follow(), get_runtime().loop)
            self.outcome = future.result()
        except Exception:
            logger.exception(
                "projection %s stopped in %s", self.projection._meta.name, self.namespace
            )
            self.outcome = "error"
        finally:
            # The database work ran in the executor's thread: its connection goes with it.
            self._db.submit(connections.close_all).result()
            self._db.shutdown()

    async def _db_call(self, fn: Callable[..., T], *args: Any) -> T:
        # The ORM refuses to run in a thread with a running event loop, and a
        # transaction must stay in one thread: every database call goes to one thread.
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def _follow(self) -> str:
        while not self.stopping.is_set():
            checkpoint = await self._db_call(ensure_checkpoint, self.projection, self.namespace)
            self.position = checkpoint.sequence
            if checkpoint.state != ProjectionCheckpoint.RUNNING:
                return checkpoint.state
            if self.until is not None and self.position >= self.until:
                return "caught-up"
            # History through the store's batched reads, up to the stream's head.
            outcome = await self._consume(self._history())
            if outcome == _ENDED:
                if self.until is not None:
                    return "caught-up"  # the head is all there is (events expired)
                # Then live events through the bus, from right after the last one read.
                outcome = await self._live()
            if outcome is None:
                # Lost a compare-and-set: another runner is ahead, or the state changed.
                await asyncio.sleep(MOVED_BACKOFF)
            elif outcome != _ENDED:
                return outcome
            # _ENDED: the subscription ended (it fell behind, the bus was reset): back to
            # the store from the checkpoint.
        return "stopped"

    def _history(self) -> StoreBatches:
        return StoreBatches(self.store, self.position, self.projection._meta.batch_size)

    async def _live(self) -> str | None:
        """Follow the bus from the position the store's read reached.

        On a bus that starts at a stream sequence (NATS: an ordered consumer from
        ``position + 1``) nothing saved after the store's last read is lost. A bus
        that cannot only starts at "new": the subscription is made first, and the
        store is read once more after it is ready, so what was saved in between comes
        from the store and the deliveries at or before it are dropped.
        """
        meta = self.projection._meta
        bus = get_event_bus()
        exact = Feature.START_SEQUENCE in bus.features
        start: Start = self.position + 1 if exact else "new"
        subscription = await bus.asubscribe(
            self.namespace,
            start=start,
            overflow="wait" if Feature.OVERFLOW_WAIT in bus.features else "end",
            buffer_size=max(2 * meta.batch_size, 64),
        )
        try:
            if not exact:
                outcome = await self._consume(self._history())
                if outcome != _ENDED:
                    return outcome
            return await self._consume(
                BusBatches(subscription, self.store, self.position, meta.batch_size)
            )
        finally:
            await subscription.aclose()

    async def _consume(self, source: BatchSource) -> str | None:
        """Apply the batches of ``source`` until stopped (an outcome), moved (None:
        start again from the checkpoint) or the source ended (``_ENDED``)."""
        meta = self.projection._meta
        pending: list[Item] = []
        # The (subject, key id) pairs whose keys opened values in ``pending``.
        keys: set[tuple[str, str]] = set()
        failures = 0
        try:
            while not self.stopping.is_set():
                if self.until is not None and self.position >= self.until:
                    return "caught-up"
                if not pending:
                    taken = await source.take()
                    if taken is None:
                        return _ENDED
                    pending = [item for item in taken if sequence_of(item) > self.position]
                    if not taken:
                        # Idle: has an operator paused (or someone failed) it meanwhile?
                        state = await self._db_call(self._state)
                        if state != ProjectionCheckpoint.RUNNING:
                            return state or "stopped"
                        continue
                    if not pending:
                        continue
                    if self.personal is not None:
                        pending, keys = await self._open_personal(pending)
                try:
                    await self._db_call(self._apply, pending, self.position, keys)
                except _Forgotten:
                    # Not the handlers' fault, and nothing to retry as it is: read the
                    # batch again from the checkpoint, without the keys (dropped).
                    logger.info(
                        "projection %s: a batch of %s opened values of a data subject "
                        "forgotten meanwhile; reading it again",
                        meta.name,
                        self.namespace,
                    )
                    return None
                except _Moved:
                    logger.info(
                        "projection %s: the checkpoint of %s is no longer at %d (another "
                        "runner, a pause or a reset), backing off",
                        meta.name,
                        self.namespace,
                        self.position,
                    )
                    return None
                except _HandlerFailed as failed:
                    if failed.index > 0:
                        # What came before the failing event is fine: commit it on its
                        # own, so the projection stops exactly at the failing event.
                        head, pending = pending[: failed.index], pending[failed.index :]
                        try:
                            await self._db_call(self._apply, head, self.position, keys)
                        except (_Moved, _HandlerFailed):
                            return None
                        self._committed(head)
                        continue
                    failures += 1
                    # A message that does not decode stays so: trying again cannot help.
                    undecodable = isinstance(failed.error, ReplayError)
                    if undecodable or failures > meta.retries:
                        marked = await self._db_call(self._fail, failed)
                        return "failed" if marked else None
                    delay = min(meta.backoff * 2 ** (failures - 1), meta.max_backoff)
                    logger.warning(
                        "projection %s: %s at %s:%s (try %d of %d), again in %.2fs",
                        meta.name,
                        type(failed.error).__name__,
                        self.namespace,
                        failed.sequence,
                        failures,
                        meta.retries + 1,
                        delay,
                    )
                    if await self._sleep(delay):
                        return "stopped"
                    continue
                except DatabaseError:
                    # The checkpoint itself could not be read or written (a locked
                    # database, a lost connection): nothing was committed, start over.
                    logger.warning("projection %s: database error", meta.name, exc_info=True)
                    return None
                failures = 0
                self._committed(pending)
                pending, keys = [], set()
            return "stopped"
        finally:
            source.close()

    async def _open_personal(self, items: list[Item]) -> tuple[list[Item], set[tuple[str, str]]]:
        """``items`` with their personal fields opened (or the forgotten marker), and
        the (subject, key id) pairs whose keys opened values. An event whose envelope
        is malformed becomes a ReplayError: the projection stops (failed) exactly
        there, and the stored event stays as it is."""
        assert self.personal is not None
        events = [item for item in items if isinstance(item, Event)]
        try:
            found, keys = await privacy.aopen_events_with_keys(self.personal, events)
            opened = iter(found)
            return [next(opened) if isinstance(item, Event) else item for item in items], keys
        except privacy.EnvelopeError:
            pass
        out: list[Item] = []
        keys = set()
        for item in items:
            if isinstance(item, Event):
                try:
                    (item,), used = await privacy.aopen_events_with_keys(self.personal, [item])
                    keys |= used
                except privacy.EnvelopeError as exc:
                    item = ReplayError(
                        sequence_of(item), encode_event(item), str(exc), item.actor_id
                    )
            out.append(item)
        return out, keys

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, or return True early when the worker is told to stop."""
        end = asyncio.get_running_loop().time() + seconds
        while (left := end - asyncio.get_running_loop().time()) > 0:
            if self.stopping.is_set():
                return True
            await asyncio.sleep(min(left, IDLE_WAIT))
        return self.stopping.is_set()

    def _committed(self, events: list[Item]) -> None:
        self.position = sequence_of(events[-1])
        metrics.PROJECTION_EVENTS.inc(
            len(events), projection=self.projection._meta.name, namespace=self.namespace
        )
        if self.progress is not None:
            self.progress(len(events))

    # --- database work (in the worker's database thread) ------------------------------------
    def _state(self) -> str | None:
        meta = self.projection._meta
        return (
            ProjectionCheckpoint.objects.using(meta.database)
            .filter(projection=meta.name, namespace=self.namespace)
            .values_list("state", flat=True)
            .first()
        )

    def _apply(
        self, events: Sequence[Item], previous: int, keys: set[tuple[str, str]] | None = None
    ) -> None:
        """Apply ``events`` and move the checkpoint from ``previous`` to the last of
        them, in one transaction; raises _Moved (_Forgotten when one of ``keys``, those
        that opened the events' values, was forgotten meanwhile) or _HandlerFailed after
        rolling back (a stored message that does not decode fails like a handler)."""
        if not (tracing.enabled and tracing.recording()):
            self._apply_batch(events, previous, keys)
            return
        # One span per batch: a child of the first traced event's save, linked to the
        # save of every event in it (a batch gathers events of many traces).
        contexts = [getattr(event, "trace_context", None) for event in events]
        meta = self.projection._meta
        with tracing.span(
            f"aether project {meta.name}",
            kind=tracing.CONSUMER,
            parent=next((c for c in contexts if c), {}),
            links=contexts,
            attributes={
                "messaging.operation.type": "process",
                "messaging.batch.message_count": len(events),
                "aether.projection": meta.name,
                "aether.namespace": self.namespace,
                "aether.sequence.first": sequence_of(events[0]),
                "aether.sequence.last": sequence_of(events[-1]),
            },
        ):
            self._apply_batch(events, previous, keys)

    def _apply_batch(
        self, events: Sequence[Item], previous: int, keys: set[tuple[str, str]] | None = None
    ) -> None:
        meta = self.projection._meta
        started = time.perf_counter()
        try:
            self._apply_in_transaction(events, previous, keys)
        except _Forgotten as forgotten:
            # This process's cache still held those keys (forgotten in another process,
            # or while the batch was opened): drop them, so the batch read again gets
            # the bucket's answer, the marker.
            ring = get_key_ring()
            for subject in forgotten.subjects:
                ring.drop(subject)
            raise
        # Committed: only batches that took effect are timed.
        metrics.PROJECTION_BATCH_SECONDS.observe(
            time.perf_counter() - started, projection=meta.name
        )

    def _apply_in_transaction(
        self, events: Sequence[Item], previous: int, keys: set[tuple[str, str]] | None
    ) -> None:
        meta = self.projection._meta
        last = sequence_of(events[-1])
        with transaction.atomic(using=meta.database):
            # The compare-and-set comes first: it takes the checkpoint row's lock (on
            # SQLite the database's write lock) before any handler runs, so a racing
            # runner waits here and then finds the checkpoint moved, instead of running
            # its handlers into the winner's rows (a unique key broken on PostgreSQL, a
            # locked table on SQLite) and taking that for the event's failure.
            moved = (
                ProjectionCheckpoint.objects.using(meta.database)
                .filter(
                    projection=meta.name,
                    namespace=self.namespace,
                    sequence=previous,
                    state=ProjectionCheckpoint.RUNNING,
                )
                .update(sequence=last, updated_at=timezone.now())
            )
            if moved != 1:
                raise _Moved
            for index, event in enumerate(events):
                if isinstance(event, ReplayError):
                    raise _HandlerFailed(index, event.sequence, event)
                sequence = sequence_of(event)
                context = ProjectionContext(
                    namespace=self.namespace,
                    sequence=sequence,
                    projection=meta.name,
                    database=meta.database,
                    node=self.node,
                    correlation_id=event.metadata.get(correlation.CORRELATION_KEY),
                    causation_id=event.metadata.get(correlation.CAUSATION_KEY),
                )
                try:
                    # Each event in a savepoint of its own would cost a round trip per
                    # event; the whole batch rolls back instead, and is split after.
                    self.instance.handle(self.upcast(event) if self.upcast else event, context)
                except Exception as exc:
                    metrics.PROJECTION_HANDLER_ERRORS.inc(
                        projection=meta.name, namespace=self.namespace
                    )
                    raise _HandlerFailed(index, sequence, exc) from exc
            if keys and self.forgets:
                # Last, under the checkpoint's lock: forget() takes it before it deletes
                # rows and writes the tombstone, so either this batch committed before
                # that delete (which then takes its rows too), or its tombstone is here.
                forgotten = self._forgotten(keys)
                if forgotten:
                    raise _Forgotten(forgotten)

    def _forgotten(self, keys: set[tuple[str, str]]) -> set[str]:
        """The subjects of ``keys`` whose key has a tombstone: one query."""
        by_hash: dict[str, str] = {privacy.subject_hash(subject): subject for subject, _ in keys}
        found = (
            ForgottenKey.objects.using(self.projection._meta.database)
            .filter(subject_sha256__in=list(by_hash))
            .values_list("subject_sha256", "kid")
        )
        return {by_hash[digest] for digest, kid in found if (by_hash[digest], kid) in keys}

    def _fail(self, failed: _HandlerFailed) -> bool:
        """Mark the checkpoint failed at the failing event; False if it had moved."""
        meta = self.projection._meta
        message = "".join(traceback.format_exception_only(failed.error)).strip()
        logger.error(
            "projection %s stopped at %s:%s: %s",
            meta.name,
            self.namespace,
            failed.sequence,
            message,
        )
        marked = bool(
            ProjectionCheckpoint.objects.using(meta.database)
            .filter(
                projection=meta.name,
                namespace=self.namespace,
                sequence=self.position,
                state=ProjectionCheckpoint.RUNNING,
            )
            .update(
                state=ProjectionCheckpoint.FAILED,
                last_error_sequence=failed.sequence,
                last_error=message,
                last_error_at=timezone.now(),
            )
        )
        if marked:
            metrics.PROJECTION_FAILURES.inc(projection=meta.name, namespace=self.namespace)
        return marked


class ProjectionRunner:
    """Runs projections in this process: a worker per (projection, namespace).

    :meth:`tick` starts a worker for every covered namespace whose checkpoint is
    running and has none alive; it lists the namespaces again each time, so a pattern
    source picks up namespaces created later, and a resumed or skipped projection
    starts again. :meth:`run` ticks every ``interval`` seconds until :meth:`stop`.

    In a cluster node the runner is told which projections the node owns
    (:meth:`place`, see :mod:`.placement`): it then runs those only, and stops the
    workers of a projection the node no longer owns at its next tick, which comes
    at once. ``node`` is the node's id, which handlers see as ``context.node``.
    """

    def __init__(
        self,
        projections: Iterable[type[Projection]],
        *,
        interval: float = 1.0,
        node: str | None = None,
        keep_going: bool = False,
    ) -> None:
        self.projections = list(projections)
        for projection in self.projections:
            if projection._meta.problems:
                # Run nothing that the system checks reject (aether_django.E501).
                raise ProjectionError(
                    f"projection {projection._meta.name} is declared wrongly: "
                    + "; ".join(projection._meta.problems)
                )
        self.interval = interval
        self.node = node
        #: Log a projection that cannot be started and go on with the others, instead
        #: of raising: a node's runner, whose end nobody would see.
        self.keep_going = keep_going
        self.stopping = threading.Event()
        self.workers: dict[tuple[str, str], NamespaceWorker] = {}
        #: The names of the projections to run; None: all of them (no placement).
        self.placed: frozenset[str] | None = None
        #: One stop flag per projection, so that one can be stopped alone.
        self._stops: dict[str, threading.Event] = {}
        #: Set to tick at once (a new placement, a stop) instead of after ``interval``.
        self._wake = threading.Event()
        self._lock = threading.Lock()
        #: The thread start() runs the runner in, which stop() waits for too.
        self._thread: threading.Thread | None = None

    def place(self, names: Iterable[str]) -> None:
        """Run only the projections named from now on (applied at the next tick, at once).

        Does not block: a node's event loop calls it on every shard map it follows.
        """
        placed = frozenset(names)
        if placed != self.placed:
            self.placed = placed
            self._wake.set()

    def running(self) -> set[str]:
        """The names of the projections with a worker alive in this runner."""
        return {name for (name, _), worker in list(self.workers.items()) if worker.is_alive()}

    def stop_projection(self, name: str, timeout: float = 10.0) -> None:
        """Stop the workers of one projection and wait for them (each finishes or rolls
        back its batch); it starts again at a tick that finds it placed here."""
        with self._lock:
            stop = self._stops.pop(name, None)
            if stop is not None:
                stop.set()
            workers = [w for (n, _), w in self.workers.items() if n == name]
        for worker in workers:
            if worker is not threading.current_thread():
                worker.join(timeout)
        with self._lock:
            for key in [k for k, w in self.workers.items() if k[0] == name and w in workers]:
                if not self.workers[key].is_alive():
                    del self.workers[key]

    def tick(self) -> None:
        """Start the workers that should be running and are not (and, under a placement,
        stop those of the projections placed elsewhere)."""
        placed = self.placed
        if placed is not None:
            for name in {n for n, _ in self.workers} - placed:
                self.stop_projection(name)
        namespaces = list_namespaces()
        for projection in self.projections:
            meta = projection._meta
            if placed is not None and meta.name not in placed:
                continue
            try:
                self._start_workers(projection, namespaces)
            except (DatabaseError, AetherError, OSError, NatsError):
                if not self.keep_going:
                    raise
                # As in run(): look again at the next tick; the other projections go on.
                logger.warning("projection %s: could not look for work", meta.name, exc_info=True)
            except Exception:
                if not self.keep_going:
                    raise
                # A mistake in the settings or the declaration (an unknown database alias):
                # said loudly at every tick, and the other projections still run.
                logger.exception("projection %s could not be started", meta.name)
            if self.stopping.is_set():
                return

    def _start_workers(self, projection: type[Projection], namespaces: list[str]) -> None:
        """Start a worker of ``projection`` for each covered namespace that has none alive."""
        meta = projection._meta
        for namespace in namespaces:
            if not meta.covers(namespace):
                continue
            key = (meta.name, namespace)
            worker = self.workers.get(key)
            if worker is not None and worker.is_alive():
                continue
            if ensure_checkpoint(projection, namespace).state != ProjectionCheckpoint.RUNNING:
                continue
            with self._lock:
                if self.stopping.is_set():
                    return
                stop = self._stops.setdefault(meta.name, threading.Event())
                worker = NamespaceWorker(projection, namespace, stop=stop, node=self.node)
                self.workers[key] = worker
            worker.start()

    def run(self) -> None:
        """Tick until stopped (the ``aether_projections run`` loop)."""
        try:
            while not self.stopping.is_set():
                # Cleared before the tick: a placement that comes during it wakes the next.
                self._wake.clear()
                try:
                    self.tick()
                except (DatabaseError, AetherError, OSError, NatsError):
                    # NATS or the database did not answer (a locked SQLite file, a
                    # restarting server): the workers that run go on; look again later.
                    logger.warning("projection runner: could not look for work", exc_info=True)
                self._wake.wait(self.interval)
        finally:
            self.stop()

    def start(self) -> threading.Thread:
        """Run in a background thread (tests, an embedding process); returns it."""
        thread = threading.Thread(target=self._run_closing, name="projection runner", daemon=True)
        self._thread = thread
        thread.start()
        return thread

    def _run_closing(self) -> None:
        try:
            self.run()
        finally:
            connections.close_all()

    def request_stop(self) -> None:
        """Tell the runner and every worker to stop, without waiting (a signal handler's
        part; :meth:`run` then waits for the workers)."""
        self.stopping.set()
        for stop in list(self._stops.values()):
            stop.set()
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every worker and wait for them (each finishes or rolls back its batch),
        and for the thread :meth:`start` runs the runner in (it may be in a tick, which
        writes checkpoints, until it sees the stop)."""
        with self._lock:
            self.request_stop()
        for worker in list(self.workers.values()):
            if worker is not threading.current_thread():
                worker.join(timeout)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


def catch_up(
    projection: type[Projection],
    *,
    progress: Callable[[int], None] | None = None,
    heads: dict[str, int] | None = None,
) -> dict[str, str]:
    """Apply ``projection`` to every covered namespace up to its head as of now.

    Returns each namespace's outcome ("caught-up", "failed", "paused", ...).
    """
    heads = (
        heads
        if heads is not None
        else {ns: stream_head(ns) for ns in covered_namespaces(projection)}
    )
    workers = [
        NamespaceWorker(projection, namespace, until=head, progress=progress)
        for namespace, head in heads.items()
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {w.namespace: w.outcome or "error" for w in workers}
