"""A cluster node: takes part in membership and leadership, and serves the shards it owns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from ..store.base import Runtime
from .coordinator import ClusterConfig, Coordinator
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

    @property
    def config(self) -> ClusterConfig:
        return self.coordinator.config

    async def tick(self) -> dict[str, Any]:
        """One round: heartbeat, lease, rebalance if leader, then follow the shard map."""
        lease = await self.coordinator.tick(shard_count=len(self.host.shards))
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
        """Tick every heartbeat interval until ``stop`` is set; then leave the cluster."""
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except Exception:
                    logger.warning("tick of node %s failed", self.node_id, exc_info=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.heartbeat_interval)
        finally:
            await self.host.stop()
            with contextlib.suppress(Exception):
                await self.coordinator.leave()
