"""A cluster node: takes part in membership and leadership, and serves the shards it owns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg

from ..store.base import Runtime
from .coordinator import ClusterConfig, Coordinator, Lease
from .routing import ShardHost

logger = logging.getLogger(__name__)

__all__ = ["ClusterNode"]


class ClusterNode:
    """Heartbeat, lease, rebalance (as leader) and shard hosting, one tick at a time."""

    def __init__(
        self,
        runtime: Runtime,
        node_id: str,
        config: ClusterConfig | None = None,
        *,
        on_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.coordinator = Coordinator(runtime, node_id, config)
        self.host = ShardHost(runtime, node_id)
        self.node_id = node_id
        self.on_change = on_change
        self._last: dict[str, Any] = {}
        self._leader: Lease | None = None

    @property
    def config(self) -> ClusterConfig:
        return self.coordinator.config

    async def tick(self) -> dict[str, Any]:
        """One round: heartbeat, lease, rebalance if leader, then follow the shard map."""
        self._leader = await self.coordinator.tick(shard_count=len(self.host.shards))
        return await self.follow()

    async def follow(self) -> dict[str, Any]:
        """Serve exactly the shards the current map gives this node; report any change.

        Also run alone on a map notice between ticks; the leader reported is then
        the holder the last tick saw.
        """
        lease = self._leader
        shard_map = await self.coordinator.read_shard_map()
        mine = set(shard_map.shards_of(self.node_id)) if shard_map else set()
        gained, lost = await self.host.own(mine)
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

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every heartbeat interval until ``stop`` is set; then leave the cluster.

        Ticks keep a fixed rate (a slow tick does not push the next one later), so
        a heartbeat or a leader's look at the members is never more than one
        interval away. Between ticks a new shard map is followed as soon as the
        leader announces it, not at the next tick: a failover then costs the
        lease or heartbeat expiry plus at most one interval, not two.
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
            while not stop.is_set():
                now = loop.time()
                if now >= next_tick:
                    next_tick += interval
                    if next_tick <= now:
                        # More than an interval behind (a long tick, a paused process):
                        # tick now, once, rather than in a burst to catch up.
                        next_tick = now + interval
                    changed.clear()
                    await self._guarded(self.tick())
                    continue
                if changed.is_set():
                    changed.clear()
                    await self._guarded(self.follow())
                    continue
                wake = asyncio.ensure_future(changed.wait())
                halt = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait(
                        {wake, halt}, timeout=next_tick - now, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    wake.cancel()
                    halt.cancel()
        finally:
            if subscription is not None:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
            await self.host.stop()
            with contextlib.suppress(Exception):
                await self.coordinator.leave()

    async def _guarded(self, step: Awaitable[Any]) -> None:
        try:
            await step
        except Exception:
            logger.warning("tick of node %s failed", self.node_id, exc_info=True)
