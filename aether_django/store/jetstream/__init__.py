"""The JetStream event store: one stream per namespace, one subject per actor.

``JetStreamEventStore`` is a thin public class that composes the store's parts, one
job each:

* ``retry`` — deadlines, back-off and retried requests (``Retrier``);
* ``provisioning`` — the stream and snapshot bucket: create, verify, drift
  (``Provisioner``);
* ``reads`` — the head cache, direct gets, the version seek, replays and pages of
  events (``Reader``);
* ``writes`` — the save protocol: expected sequences, atomic batches, resolving
  saves that got no answer (``Writer``);
* ``snapshots`` — the latest snapshot per actor in a key-value bucket
  (``Snapshots``);
* ``inspection`` and ``listing`` — the namespace's figures, its actors page by page
  and the namespaces on the server (``Inspector``).

Every wire request goes through ``aether_django.nats``. Importing this package
imports no Django and no runtime: a store receives its ``Runtime`` and
``StoreConfig``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ... import names
from ...events import ActorSnapshot, Event, ReplayResult
from ..base import (
    ActorPage,
    AsyncFirstEventStore,
    NamespaceInfo,
    Runtime,
    StoreConfig,
)
from .common import HDR_VERSION, META_NAMESPACE, Place
from .inspection import Inspector, list_namespaces
from .provisioning import Provisioner
from .reads import Reader
from .retry import Retrier
from .snapshots import Snapshots
from .writes import Writer

__all__ = ["HDR_VERSION", "META_NAMESPACE", "JetStreamEventStore"]


class JetStreamEventStore(AsyncFirstEventStore):
    """Event store for one namespace on NATS JetStream.

    ``runtime`` supplies the NATS connection of the running loop and the bridge
    for sync calls (normally ``aether_django.runtime.get_runtime()``).
    """

    fresh_reads = True  # each read decodes the messages it fetched

    def __init__(
        self, namespace: str, *, runtime: Runtime, config: StoreConfig | None = None
    ) -> None:
        self.namespace = names.validate_namespace(namespace)
        self.runtime = runtime
        self.config = config or StoreConfig()
        place = Place.of(namespace, self.config)
        self.stream_name = place.stream
        self.bucket_name = place.bucket
        self._place = place
        self._retry = retry = Retrier(runtime, self.config, namespace)
        self._provisioner = provisioner = Provisioner(place, retry)
        self._reads = reads = Reader(place, retry, provisioner)
        self._writes = Writer(place, retry, provisioner, reads)
        self._snapshots = Snapshots(place, retry, provisioner, reads)
        self._inspector = Inspector(place, retry, provisioner, reads)

    def __repr__(self) -> str:
        return f"<JetStreamEventStore namespace={self.namespace!r} stream={self.stream_name!r}>"

    @property
    def _subject_prefix(self) -> str:
        """The first tokens of every actor subject of the namespace."""
        return self._place.subject_prefix

    def subject_for(self, actor_id: str) -> str:
        """The subject that holds ``actor_id``'s events."""
        return self._place.subject_for(actor_id)

    # --- writes ---------------------------------------------------------------
    async def asave_event(self, event: Event) -> Event:
        return await self._writes.save_event(event)

    async def asave_events(self, events: Sequence[Event]) -> list[Event]:
        return await self._writes.save_events(events)

    # --- reads ----------------------------------------------------------------
    async def aget_events(
        self,
        actor_id: str,
        from_version: int = 0,
        *,
        after_sequence: int = 0,
        limit: int | None = None,
    ) -> list[Event]:
        events, errors = await self._reads.read(actor_id, from_version, after_sequence, limit)
        if errors:
            raise errors[0]
        return events

    async def aget_events_with_errors(
        self, actor_id: str, from_version: int = 0, *, after_sequence: int = 0
    ) -> ReplayResult:
        return await self._reads.read(actor_id, from_version, after_sequence, None)

    async def aget_events_page(
        self, actor_id: str, from_version: int = 0, *, limit: int, max_bytes: int
    ) -> tuple[list[Event], bool]:
        """A page of at most ``limit`` events and ``max_bytes`` encoded bytes (at least
        one event), and whether more follow; it costs its own bytes plus at most one
        event, whatever ``limit`` says."""
        return await self._reads.events_page(actor_id, from_version, limit, max_bytes)

    async def aget_stream_events(
        self, after_sequence: int = 0, *, limit: int, max_bytes: int | None = None
    ) -> list[Event]:
        """The namespace's events after ``after_sequence``, every actor's, in stream
        order; stops before a message that does not decode, and raises ReplayError
        for one the read starts at (see ``EventStore.aget_stream_events``)."""
        return await self._reads.stream_events(after_sequence, limit, max_bytes)

    async def aget_latest_version(self, actor_id: str) -> int:
        return await self._reads.latest_version(actor_id)

    async def aget_latest_versions(self, actor_ids: Sequence[str]) -> dict[str, int]:
        """Each actor's current version from one batched read of their last messages."""
        return await self._reads.latest_versions(actor_ids)

    # --- snapshots ------------------------------------------------------------
    async def aget_latest_snapshot(self, actor_id: str) -> ActorSnapshot | None:
        return await self._snapshots.latest(actor_id)

    async def asave_snapshot(self, snapshot: ActorSnapshot) -> None:
        await self._snapshots.save(snapshot)

    # --- provisioning ---------------------------------------------------------
    async def aensure(self, *, create: bool = True) -> list[str]:
        """Make sure the stream and snapshot bucket exist and are usable; return what was done.

        With ``create=False`` only check; raises StoreConfigurationError or
        NamespaceCollisionError when something is wrong.
        """
        return await self._provisioner.ensure(self._retry.deadline(), create=create)

    async def aexists(self) -> bool:
        """Whether the namespace's stream exists (one read, then remembered)."""
        return await self._provisioner.stream_exists(self._retry.deadline())

    # --- inspection -----------------------------------------------------------
    async def aget_info(self) -> NamespaceInfo | None:
        """Figures of the namespace's stream, read live from the server."""
        return await self._inspector.info()

    async def aget_actor_ids(self) -> list[str]:
        """Every actor with events, from the stream's per-subject counts (paged by the server)."""
        return await self._inspector.actor_ids()

    async def aget_actor_page(self, after: str | None, limit: int, *, at: int = 0) -> ActorPage:
        """Up to ``limit`` actor ids after ``after``, in subject-token order.

        The server sorts the stream's subjects and answers from a rank on, up to its
        cap per reply; a page reads one such window, positioned by ``at`` (the rank of
        the previous page's last id) and checked against ``after``, and keeps it for
        the pages that follow (see ``inspection``).
        """
        return await self._inspector.actor_page(after, limit, at)

    @classmethod
    async def alist_namespaces(cls, *, runtime: Runtime | None, config: StoreConfig) -> list[str]:
        """The namespaces that have an events stream on the server."""
        if runtime is None:
            raise ValueError("listing JetStream namespaces needs a runtime")
        return await list_namespaces(runtime, config)
