"""Read models shared by every Django surface: what the API, the admin, the ops views,
the management commands and a project's own views show about namespaces, actors,
aggregates and the cluster.

Each function reads the store or the cluster bucket live (nothing is cached here) and
returns plain data; a surface only turns it into its own answer (JSON, a template, a
command's output). No requests here: who may see what is decided by the caller with
:class:`aether_django.access.NamespaceAccess`, which the namespace functions take.

Errors: the store's own errors (``EventStoreError`` and its subclasses) propagate for
the surface to answer "unavailable"; a history that the namespace's aggregate class
cannot replay raises :class:`~aether_django.errors.AggregateReplayError`, one type
whatever the project's code raised.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from . import correlation
from .access import NamespaceAccess
from .aggregates import get_aggregate_class
from .bus import get_event_bus
from .cluster import cluster_config, shard_of
from .cluster.beatlease import BeatHolder, BeatLease
from .cluster.coordinator import Coordinator, Lease, NodeInfo, ShardMap
from .errors import AggregateReplayError, ReplayError
from .events import Event
from .runtime import get_runtime
from .store import EventStore, get_event_store, get_existing_event_store, list_namespaces
from .store.base import NamespaceInfo

__all__ = [
    "ActorRow",
    "ActorRows",
    "AggregateState",
    "ClusterStatus",
    "CorrelatedEvent",
    "Correlation",
    "actor_page",
    "actor_rows",
    "aggregate_state",
    "cluster_status",
    "correlated_events",
    "event_at",
    "namespace_infos",
    "visible_namespaces",
]


# --- namespaces ---------------------------------------------------------------------------


def visible_namespaces(access: NamespaceAccess | None) -> list[str]:
    """The namespaces ``access`` may read (every namespace for None: a command, or a
    view that applies no grants)."""
    namespaces = list_namespaces()
    return namespaces if access is None else access.readable(namespaces)


def namespace_infos(access: NamespaceAccess | None) -> list[NamespaceInfo]:
    """The figures of each namespace ``access`` may read; the others are not asked about."""
    infos = [get_event_store(ns).get_info() for ns in visible_namespaces(access)]
    return [info for info in infos if info is not None]


# --- actors -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ActorRow:
    """One actor of a namespace's listing."""

    actor_id: str
    version: int
    shard: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ActorRows:
    """One page of a namespace's actors, and where the next page starts (None: last)."""

    rows: list[ActorRow]
    next_after: str | None
    next_at: int | None


def actor_rows(store: EventStore, actor_ids: list[str]) -> list[ActorRow]:
    """Rows for ``actor_ids``: each one's version (one batched read) and shard."""
    versions = store.get_latest_versions(actor_ids)
    return [ActorRow(a, versions.get(a, 0), shard_of(a)) for a in actor_ids]


def actor_page(store: EventStore, after: str | None, limit: int, *, at: int = 0) -> ActorRows:
    """The page of at most ``limit`` actors after ``after`` (``at``: its rank, a hint)."""
    page = store.get_actor_page(after, limit, at=at)
    rows = actor_rows(store, page.actor_ids)
    if page.next_at is None or not page.actor_ids:
        return ActorRows(rows, None, None)
    return ActorRows(rows, page.actor_ids[-1], page.next_at)


async def _event_at(namespace: str, sequence: int, timeout: float) -> Event | None:
    subscription = await get_event_bus().asubscribe(
        namespace, start=sequence, buffer_size=1, overflow="wait"
    )
    try:
        delivery = await subscription.next(timeout)
    except TimeoutError:
        return None
    finally:
        await subscription.aclose()
    return delivery.event if delivery.sequence == sequence else None


def event_at(namespace: str, sequence: int, *, timeout: float = 2.0) -> Event | None:
    """The event stored at ``sequence`` of ``namespace``'s stream (where a projection
    stopped), or None when there is none there (any more).

    Read through the bus, which every backend with ``start=`` a sequence serves (the
    store reads by actor, not by stream position). Raises the bus's errors: a bus
    without that feature raises UnsupportedSubscriptionError.
    """
    return get_runtime().run(_event_at(namespace, sequence, timeout))


# --- correlation ----------------------------------------------------------------------------

#: Events of each namespace a correlation search reads, the latest ones: an event's
#: correlation id is in its metadata, which the server cannot filter by.
CORRELATION_SCAN = 10_000
#: Events a correlation search returns at most.
CORRELATION_LIMIT = 500
_SCAN_BATCH = 500


@dataclasses.dataclass(frozen=True)
class CorrelatedEvent:
    """One event of a correlation and the namespace it is stored in."""

    namespace: str
    event: Event


@dataclasses.dataclass(frozen=True)
class Correlation:
    """The events found with one correlation id, oldest first, and how far was looked."""

    correlation_id: str
    events: list[CorrelatedEvent]
    #: Namespaces searched whose older events were not read (more than ``scan`` events).
    partly_searched: list[str]
    #: Stream sequences, per namespace, of messages that did not decode and were passed.
    undecodable: dict[str, list[int]]
    #: Whether more than ``limit`` events matched (the oldest are shown).
    truncated: bool


def correlated_events(
    correlation_id: str,
    namespaces: list[str],
    *,
    scan: int = CORRELATION_SCAN,
    limit: int = CORRELATION_LIMIT,
) -> Correlation:
    """Every event of ``namespaces`` whose ``correlationId`` is ``correlation_id``,
    among the latest ``scan`` events of each, oldest first (by time), at most ``limit``.

    The caller decides which namespaces may be searched (the admin passes the ones the
    user may read). Reads each stream from the end back ``scan`` events, in batches;
    a message that does not decode is noted and passed over.
    """
    found: list[CorrelatedEvent] = []
    partly: list[str] = []
    undecodable: dict[str, list[int]] = {}
    for namespace in namespaces:
        # A name asked about that exists nowhere must not fill the cache of stores.
        store = get_existing_event_store(namespace)
        info = store.get_info()
        if info is None or info.events == 0:
            continue
        after = max(info.first_sequence - 1, info.last_sequence - scan, 0)
        if after > info.first_sequence - 1:
            partly.append(namespace)
        while after < info.last_sequence:
            try:
                batch = store.get_stream_events(after, limit=_SCAN_BATCH)
            except ReplayError as exc:
                undecodable.setdefault(namespace, []).append(exc.sequence)
                after = max(after + 1, exc.sequence)
                continue
            if not batch:
                break
            for event in batch:
                if event.metadata.get(correlation.CORRELATION_KEY) == correlation_id:
                    found.append(CorrelatedEvent(namespace, event))
            after = batch[-1].sequence or info.last_sequence
    found.sort(key=lambda item: (item.event.timestamp, item.namespace, item.event.sequence or 0))
    return Correlation(
        correlation_id, found[:limit], partly, undecodable, truncated=len(found) > limit
    )


# --- aggregate state ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AggregateState:
    """An actor's state as its namespace's aggregate class builds it."""

    aggregate: str
    actor_id: str
    version: int
    state: dict[str, Any]


def aggregate_state(
    namespace: str, actor_id: str, *, at_version: int | None = None
) -> AggregateState | None:
    """The actor's state (as of ``at_version``), or None when no aggregate class is
    registered for ``namespace``.

    Raises the class's ``DoesNotExist`` for an actor without events, and
    AggregateReplayError when its history cannot be replayed, including when the
    class's ``get_snapshot_state`` raises on the state it rebuilt.
    """
    model = get_aggregate_class(namespace)
    if model is None:
        return None
    actor = model.objects.get(actor_id, at_version=at_version)
    try:
        state = actor.get_snapshot_state()
    except Exception as exc:  # the project's code, on state rebuilt from stored events
        raise AggregateReplayError(actor_id, actor.version, exc, aggregate=model.__name__) from exc
    return AggregateState(model.__name__, actor.actor_id, actor.version, state)


# --- the cluster --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClusterStatus:
    """The cluster bucket as read at one moment."""

    lease: Lease | None
    nodes: list[NodeInfo]
    shard_map: ShardMap | None
    num_shards: int
    #: The Celery beat holding the beat lease (read only when asked for).
    beat: BeatHolder | None = None

    @property
    def leader(self) -> str | None:
        return self.lease.node_id if self.lease else None

    @property
    def term(self) -> int | None:
        return self.lease.term if self.lease else None


def cluster_status(
    *, timeout: float | None = None, beat: bool = False, reader: str = "inspection"
) -> ClusterStatus:
    """Leader, nodes and shard map (and the beat holder with ``beat``), read once.

    ``timeout`` bounds each read of the bucket (the configured cluster timeout when
    None) and the whole read to three times that: a page or a scrape must answer
    even when NATS does not. ``reader`` names the reader in the coordinator (it
    writes nothing). Raises whatever the read raised (NATS away, a timeout).
    """
    config = cluster_config()
    if timeout is not None:
        config = dataclasses.replace(config, timeout=timeout)
    runtime = get_runtime()
    coordinator = Coordinator(runtime, reader, config)

    async def read() -> ClusterStatus:
        # The reads are not one snapshot, so they go in the reverse order of the
        # writes: a leader takes the lease, then writes the shard map. A map read first
        # is never newer than the lease read after it, so a status never shows a
        # rebalance's map without the lease of the leader that wrote it.
        shard_map = await coordinator.read_shard_map()
        lease = await coordinator.read_lease()
        nodes = await coordinator.nodes()
        holder = await BeatLease(runtime, reader, config).read() if beat else None
        return ClusterStatus(lease, nodes, shard_map, config.num_shards, holder)

    if timeout is None:
        return runtime.run(read())
    return runtime.run(asyncio.wait_for(read(), timeout * 3))
