"""The cluster driver: one node's part in membership and leadership, and its shards.

``manage.py aether_node`` and the Celery worker run the same :class:`ClusterNode`,
so the two cannot drift. Its :meth:`~ClusterNode.tick` is one round of the
protocol (heartbeat; take or renew the lease, rebalancing as leader; follow the
shard map and host this node's shards), and every shard-map write in it is
fenced by one thing only: the revision of the lease the node holds.

What sets the pace is the one difference between the two:

* ``aether_node`` ticks on its own, every ``heartbeat_interval``;
* a Celery worker ticks when beat's cluster tick reaches it (beat is the clock),
  and on its own only when that tick is more than ``late_after`` intervals
  late, so a beat that dies or a standby beat that takes over never makes a
  node look failed.

Besides its shards a node can run *node services*: anything placed by the shard
map (the projections are one, see :mod:`aether_django.projections.placement`).
The node does not know them: whoever starts it (``aether_node``, the Celery
worker's bootstep) passes them in, so this layer never imports the layers above
it. Each service is told every map the node follows and stopped with the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from nats.aio.msg import Msg

from ..aio import Runtime
from ..cluster.coordinator import ClusterConfig, Coordinator, Lease, NodeInfo, ShardMap
from .routing import ShardHost

#: The logger keeps the name it had before the node moved out of ``cluster/``, so that
#: logging configurations written for it keep working (docs/operations.md).
logger = logging.getLogger("aether_django.cluster.node")

__all__ = ["ClusterNode", "NodeService"]

#: A node driven by an outside clock ticks on its own after this many intervals of silence.
LATE_AFTER = 1.5
#: Clock ticks closer together than this many intervals are one tick (two beats, a burst).
MIN_GAP = 0.5


class NodeService(Protocol):
    """Work a node runs for the shards it owns, besides serving their commands.

    Both methods are called on the node's event loop and must not block it: hand
    slow work (the ORM, joining threads) to a thread of the service's own.
    """

    async def follow(self, node_id: str, shard_map: ShardMap | None) -> None:
        """The node now follows ``shard_map`` (None: there is none yet)."""

    async def stop(self) -> None:
        """The node stops: stop everything the service runs."""


class ClusterNode:
    """Heartbeat, lease, rebalance (as leader) and shard hosting, one tick at a time."""

    def __init__(
        self,
        runtime: Runtime,
        node_id: str,
        config: ClusterConfig | None = None,
        *,
        on_change: Callable[[dict[str, Any]], None] | None = None,
        hosting: bool = True,
        services: Sequence[NodeService] = (),
    ) -> None:
        self.coordinator = Coordinator(runtime, node_id, config)
        #: None in a process of the node that serves no shards (a Celery pool process).
        self.host: ShardHost | None = ShardHost(runtime, node_id) if hosting else None
        self.node_id = node_id
        self.on_change = on_change
        #: What else this node runs by the shard map (told each map in :meth:`follow`).
        self.services = list(services) if hosting else []
        #: Ticks run because the clock was late (see :meth:`run`), and clock ticks dropped.
        self.late_ticks = 0
        self.skipped_ticks = 0
        self._last: dict[str, Any] = {}
        self._leader: Lease | None = None

    @property
    def config(self) -> ClusterConfig:
        return self.coordinator.config

    @property
    def runtime(self) -> Runtime:
        return self.coordinator.runtime

    # --- the protocol, step by step (the Celery tasks call these one at a time) ---------
    async def _shard_count(self) -> int:
        if self.host is not None:
            return len(self.host.shards)
        shard_map = await self.coordinator.read_shard_map()
        return len(shard_map.shards_of(self.node_id)) if shard_map else 0

    async def heartbeat(self) -> NodeInfo:
        """Say this node is alive, with how many shards it serves (or the map gives it)."""
        return await self.coordinator.heartbeat(shard_count=await self._shard_count())

    async def elect(self) -> Lease | None:
        """Take or renew the lease, rebalancing as leader; return the holder."""
        self._leader = await self.coordinator.elect()
        return self._leader

    async def detect_failures(self) -> list[str]:
        """As leader: the owners whose heartbeat expired; rebalance when there are any."""
        if not await self.coordinator.adopt_lease():
            return []
        failed = await self.coordinator.failed_owners()
        if failed:
            await self.coordinator._rebalance_fenced()
        return failed

    async def rebalance(self) -> int:
        """As leader: spread the shards over the live nodes; return how many moved."""
        if not await self.coordinator.adopt_lease():
            return 0
        plan = await self.coordinator._rebalance_fenced()
        return plan.moved_count if plan else 0

    # --- the whole round ------------------------------------------------------------------
    async def tick(self) -> dict[str, Any]:
        """One round: heartbeat, lease, rebalance if leader, then follow the shard map."""
        self._leader = await self.coordinator.tick(shard_count=await self._shard_count())
        return await self.follow()

    async def follow(self) -> dict[str, Any]:
        """Serve exactly the shards the current map gives this node; report any change.

        Also run alone on a map notice between ticks; the leader reported is then
        the holder the last tick saw.
        """
        lease = self._leader
        shard_map = await self.coordinator.read_shard_map()
        mine = set(shard_map.shards_of(self.node_id)) if shard_map else set()
        gained, lost = await self.host.own(mine) if self.host is not None else (set(), set())
        for service in self.services:
            # One service failing must not stop the node from serving its shards.
            await self._guarded(service.follow(self.node_id, shard_map))
        state = {
            "node": self.node_id,
            "leader": lease.node_id if lease else None,
            "term": lease.term if lease else None,
            "shards": len(mine),
            "map_revision": shard_map.revision if shard_map else None,
            "fenced": self.coordinator.fenced,
        }
        if gained or lost or state != self._last:
            if self.on_change is not None:
                self.on_change({**state, "gained": len(gained), "lost": len(lost)})
            self._last = state
        return state

    async def run(self, stop: asyncio.Event, clock: asyncio.Event | None = None) -> None:
        """Tick until ``stop`` is set; then leave the cluster.

        Without ``clock``, ticks keep a fixed rate of one per heartbeat interval (a
        slow tick does not push the next one later), so a heartbeat or a leader's
        look at the members is never more than one interval away.

        With ``clock`` (set by whoever receives beat's tick), a tick runs when it
        is set, and on its own when it has not been set for ``LATE_AFTER``
        intervals: the outside clock paces the node, but its absence (a beat
        failing over, a broker away) never stops the heartbeat. Clock ticks less
        than ``MIN_GAP`` intervals after the last tick are dropped, so two beats
        sending at once or a burst of delayed ticks do not speed the node up.

        Either way, between ticks a new shard map is followed as soon as the leader
        announces it, not at the next tick: a failover then costs the lease or
        heartbeat expiry plus at most one interval, not two.
        """
        loop = asyncio.get_running_loop()
        interval = self.config.heartbeat_interval
        changed = asyncio.Event()

        async def on_notice(_msg: Msg) -> None:
            changed.set()

        subscription = None
        try:
            with contextlib.suppress(Exception):  # without notices, ticks still follow
                subscription = await self.coordinator.watch_shard_map(on_notice)
            next_tick = loop.time()
            last_tick: float | None = None
            while not stop.is_set():
                now = loop.time()
                due = now >= next_tick
                if clock is not None and clock.is_set():
                    clock.clear()
                    if last_tick is None or now - last_tick >= MIN_GAP * interval:
                        due = True
                    else:
                        self.skipped_ticks += 1
                elif clock is not None and due and last_tick is not None:
                    self.late_ticks += 1
                    logger.info(
                        "node %s: no cluster tick for %.1f s, ticking on its own",
                        self.node_id,
                        now - last_tick,
                        extra={"node": self.node_id},
                    )
                if due:
                    if clock is not None:
                        next_tick = now + LATE_AFTER * interval
                    else:
                        next_tick += interval
                        if next_tick <= now:
                            # More than an interval behind (a long tick, a paused
                            # process): tick now, once, rather than in a burst.
                            next_tick = now + interval
                    last_tick = now
                    changed.clear()
                    await self._guarded(self.tick())
                    continue
                if changed.is_set():
                    changed.clear()
                    await self._guarded(self.follow())
                    continue
                events = [changed.wait(), stop.wait()]
                if clock is not None:
                    events.append(clock.wait())
                waiting = [asyncio.ensure_future(event) for event in events]
                try:
                    await asyncio.wait(
                        waiting, timeout=next_tick - now, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for future in waiting:
                        future.cancel()
        finally:
            if subscription is not None:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
            if self.host is not None:
                await self.host.stop()
            for service in self.services:
                await self._guarded(service.stop())
            with contextlib.suppress(Exception):
                await self.coordinator.leave()

    async def _guarded(self, step: Awaitable[Any]) -> None:
        try:
            await step
        except Exception:
            logger.warning("tick of node %s failed", self.node_id, exc_info=True)
