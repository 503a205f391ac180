"""An in-process event store with the same contract as the JetStream store, for tests and demos."""

from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from .. import tracing
from ..errors import PayloadTooLargeError, VersionConflictError
from ..events import (
    ActorSnapshot,
    Event,
    ReplayResult,
    decode_event,
    encode_event,
    encode_snapshot,
)
from ..names import validate_actor_id, validate_namespace

__all__ = ["InMemoryEventStore"]
from .base import (
    EventStore,
    NamespaceInfo,
    Runtime,
    StoreConfig,
    check_batch,
    check_from_version,
    check_limit,
    check_snapshot,
    check_stream_read,
)


def _sequence_of(event: Event) -> int:
    return event.sequence or 0


class InMemoryEventStore(EventStore):
    """Keeps one namespace's events in a dict; thread-safe; nothing survives the process.

    Events go through the same codec as on JetStream, so what this store accepts
    the JetStream store accepts too. With ``publish`` (a function of namespace and
    the saved events) each save is handed to it once stored, in order: the
    ``"memory"`` backend passes one that publishes to the in-process bus, so
    subscribers receive saves as they would from JetStream.
    """

    #: Every instance made in this process, so the namespaces can be listed.
    _instances: ClassVar[dict[str, InMemoryEventStore]] = {}

    def __init__(
        self,
        namespace: str,
        *,
        config: StoreConfig | None = None,
        publish: Callable[[str, Sequence[Event]], None] | None = None,
        **_: Any,
    ) -> None:
        self.namespace = validate_namespace(namespace)
        self.config = config or StoreConfig()
        self._publish = publish
        # Every instance of a namespace shares the data of the first that saved in it, as
        # every JetStream store of a namespace shares its stream: a store dropped from
        # get_event_store's cache and built again still sees what was saved. Only a save
        # registers an instance, so reading a namespace that does not exist keeps nothing.
        self._lock = threading.Lock()
        self._events: dict[str, list[Event]] = {}
        self._snapshots: dict[str, ActorSnapshot] = {}
        #: Every stored event in sequence order (sequences are given under the lock).
        self._log: list[Event] = []
        self._sequence = itertools.count(1)
        #: Saved events not yet published, and who publishes them now (see _drain).
        self._outbox: collections.deque[Event] = collections.deque()
        self._draining = threading.Lock()
        first = InMemoryEventStore._instances.get(namespace)
        if first is not None:
            self._share(first)

    def _share(self, first: InMemoryEventStore) -> None:
        self._lock = first._lock
        self._events = first._events
        self._snapshots = first._snapshots
        self._log = first._log
        self._sequence = first._sequence
        self._outbox = first._outbox
        self._draining = first._draining

    def _follow(self) -> None:
        """Before a read: share the registered data if another instance saved first."""
        first = InMemoryEventStore._instances.get(self.namespace)
        if first is not None and first._events is not self._events:
            self._share(first)

    def _claim(self) -> None:
        """Before a save: register as the namespace's data, or share the registered one."""
        first = InMemoryEventStore._instances.setdefault(self.namespace, self)
        if first is not self and first._events is not self._events:
            self._share(first)

    # --- helpers ------------------------------------------------------------
    def _encode(self, event: Event) -> Event:
        raw = encode_event(event)
        if len(raw) > self.config.max_event_bytes:
            raise PayloadTooLargeError(len(raw), self.config.max_event_bytes)
        # Store what a reader would decode, so both stores return equal events.
        return decode_event(raw)

    def _current(self, actor_id: str) -> int:
        events = self._events.get(actor_id)
        return events[-1].version if events else 0

    # --- sync ---------------------------------------------------------------
    def save_event(self, event: Event) -> Event:
        return self.save_events([event])[0]

    def save_events(self, events: Sequence[Event]) -> list[Event]:
        batch = check_batch(events)
        if not batch:
            return []
        if tracing.enabled and tracing.recording():
            # As the JetStream store: a PRODUCER span whose context the events keep.
            with tracing.span(
                f"aether publish {self.namespace}",
                kind=tracing.PRODUCER,
                attributes={
                    "aether.namespace": self.namespace,
                    "aether.actor_id": batch[0].actor_id,
                    "aether.version.first": batch[0].version,
                    "aether.version.last": batch[-1].version,
                    "messaging.batch.message_count": len(batch),
                },
            ):
                carried: dict[str, str] = {}
                tracing.inject(carried)
                return self._save(batch, carried or None)
        return self._save(batch, None)

    def _save(self, batch: list[Event], trace_context: dict[str, str] | None) -> list[Event]:
        decoded = [self._encode(event) for event in batch]
        actor_id = batch[0].actor_id
        self._claim()
        with self._lock:
            history = self._events.setdefault(actor_id, [])
            current = history[-1].version if history else 0
            if batch[0].version <= current:
                tail = history[-len(batch) :]
                if [e.id for e in tail] == [e.id for e in batch] and current == batch[-1].version:
                    # A repeat of the save that wrote the actor's last events:
                    # answer as the first time instead of storing them again.
                    return list(tail)
                raise VersionConflictError(actor_id, batch[0].version, current)
            stored = []
            for event in decoded:
                stored.append(
                    dataclasses.replace(
                        event, sequence=next(self._sequence), trace_context=trace_context
                    )
                )
            history.extend(stored)
            self._log.extend(stored)
            if self._publish is not None:
                self._outbox.extend(stored)
        if self._publish is not None:
            self._drain(self._publish)
        return stored

    def _drain(self, publish: Callable[[str, Sequence[Event]], None]) -> None:
        """Publish the saved events in sequence order, outside the data lock.

        One thread publishes at a time, taking what every thread queued meanwhile, so
        subscribers see the namespace in sequence order. A plain callback may save
        again while it is called (a reaction to an event): that save only queues, and
        the loop here publishes it once the callback returns, instead of deadlocking.
        """
        while self._outbox:
            if not self._draining.acquire(blocking=False):
                return  # the thread publishing now will take ours too
            try:
                while True:
                    with self._lock:
                        batch = list(self._outbox)
                        self._outbox.clear()
                    if not batch:
                        break
                    publish(self.namespace, batch)
            finally:
                self._draining.release()

    def get_events(
        self,
        actor_id: str,
        from_version: int = 0,
        *,
        after_sequence: int = 0,
        limit: int | None = None,
    ) -> list[Event]:
        check_limit(limit)
        return self.get_events_with_errors(actor_id, from_version).events[:limit]

    def get_events_with_errors(
        self, actor_id: str, from_version: int = 0, *, after_sequence: int = 0
    ) -> ReplayResult:
        # after_sequence is only a hint; a dict needs none.
        validate_actor_id(actor_id)
        check_from_version(from_version)
        self._follow()
        with self._lock:
            events = [e for e in self._events.get(actor_id, ()) if e.version >= from_version]
        return ReplayResult(events, [])

    def get_stream_events(
        self, after_sequence: int = 0, *, limit: int, max_bytes: int | None = None
    ) -> list[Event]:
        # Every event here was decoded on its way in: none can fail to decode.
        check_stream_read(after_sequence, limit, max_bytes)
        self._follow()
        with self._lock:
            start = bisect.bisect_right(self._log, after_sequence, key=_sequence_of)
            events = self._log[start : start + limit]
        if max_bytes is None:
            return events
        used = 0
        for count, event in enumerate(events):
            used += len(encode_event(event))
            if count and used > max_bytes:
                return events[:count]
        return events

    async def aget_stream_events(
        self, after_sequence: int = 0, *, limit: int, max_bytes: int | None = None
    ) -> list[Event]:
        return self.get_stream_events(after_sequence, limit=limit, max_bytes=max_bytes)

    def get_latest_version(self, actor_id: str) -> int:
        validate_actor_id(actor_id)
        self._follow()
        with self._lock:
            return self._current(actor_id)

    def get_actor_ids(self) -> list[str]:
        self._follow()
        with self._lock:
            return sorted(actor for actor, events in self._events.items() if events)

    def get_latest_snapshot(self, actor_id: str) -> ActorSnapshot | None:
        validate_actor_id(actor_id)
        self._follow()
        with self._lock:
            return self._snapshots.get(actor_id)

    def save_snapshot(self, snapshot: ActorSnapshot) -> None:
        check_snapshot(snapshot)
        raw = encode_snapshot(snapshot)
        if len(raw) > self.config.max_event_bytes:
            raise PayloadTooLargeError(len(raw), self.config.max_event_bytes, "snapshot")
        self._claim()
        with self._lock:
            self._snapshots[snapshot.actor_id] = snapshot

    # --- async: nothing here waits, so the twins call straight through -------
    async def asave_event(self, event: Event) -> Event:
        return self.save_event(event)

    async def asave_events(self, events: Sequence[Event]) -> list[Event]:
        return self.save_events(events)

    async def aget_events(
        self,
        actor_id: str,
        from_version: int = 0,
        *,
        after_sequence: int = 0,
        limit: int | None = None,
    ) -> list[Event]:
        return self.get_events(actor_id, from_version, limit=limit)

    async def aget_events_with_errors(
        self, actor_id: str, from_version: int = 0, *, after_sequence: int = 0
    ) -> ReplayResult:
        return self.get_events_with_errors(actor_id, from_version)

    async def aget_latest_version(self, actor_id: str) -> int:
        return self.get_latest_version(actor_id)

    async def aget_actor_ids(self) -> list[str]:
        return self.get_actor_ids()

    async def aget_latest_snapshot(self, actor_id: str) -> ActorSnapshot | None:
        return self.get_latest_snapshot(actor_id)

    async def asave_snapshot(self, snapshot: ActorSnapshot) -> None:
        self.save_snapshot(snapshot)

    def exists(self) -> bool:
        self._follow()
        with self._lock:
            return any(self._events.values())

    async def aexists(self) -> bool:
        return self.exists()

    def get_info(self) -> NamespaceInfo | None:
        self._follow()
        with self._lock:
            events = [e for history in self._events.values() for e in history]
            actors = sum(1 for history in self._events.values() if history)
        if not events:
            return None
        sequences = [e.sequence or 0 for e in events]
        return NamespaceInfo(
            name=self.namespace,
            stream=f"memory:{self.namespace}",
            events=len(events),
            actors=actors,
            bytes=sum(len(encode_event(e)) for e in events),
            first_sequence=min(sequences),
            last_sequence=max(sequences),
        )

    def get_latest_versions(self, actor_ids: Sequence[str]) -> dict[str, int]:
        self._follow()
        with self._lock:
            return {actor_id: self._current(actor_id) for actor_id in actor_ids}

    async def aget_info(self) -> NamespaceInfo | None:
        return self.get_info()

    async def aget_latest_versions(self, actor_ids: Sequence[str]) -> dict[str, int]:
        return self.get_latest_versions(actor_ids)

    @classmethod
    async def alist_namespaces(cls, *, runtime: Runtime | None, config: StoreConfig) -> list[str]:
        return sorted(ns for ns, store in cls._instances.items() if store._events)
