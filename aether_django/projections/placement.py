"""Placement: which cluster node runs each projection, and the node's part in running them.

A projection is placed like an actor whose id is the projection's name: the
cluster's stable hash (:func:`aether_django.cluster.hashring.shard_for`) maps the
name to a shard, and the node that owns that shard in the current shard map runs
the projection. So placement needs no state of its own: it moves when the shard
moves (a node joins, leaves or fails), within the shard failover bound
(docs/cluster.md#how-long-a-failover-takes), and every process that can read the
shard map can say where a projection runs (:func:`owner_of`).

A node runs its projections through :class:`ProjectionPlacement`, a node service
(:class:`aether_django.sharding.node.NodeService`) that ``aether_node`` and the
Celery worker's bootstep pass to their :class:`~aether_django.sharding.node.ClusterNode`
(:func:`node_services`). On every map the node follows it tells one
:class:`~.runner.ProjectionRunner` which projections the node owns; the runner,
in a thread of its own, starts the newly owned and stops the no longer owned.

Correctness never depends on placement: while a shard moves, two nodes may
briefly both run a projection, and the checkpoint's compare-and-set
(docs/projections.md#guarantees) makes one of them back off.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from ..cluster import cluster_config
from ..cluster.coordinator import Coordinator, ShardMap
from ..cluster.hashring import shard_for
from ..conf import aether_settings
from ..errors import AetherError
from ..runtime import get_runtime
from ..sharding.node import NodeService
from .base import Projection, all_projections
from .runner import ProjectionRunner

__all__ = [
    "UNREACHABLE",
    "ProjectionPlacement",
    "locate",
    "node_services",
    "owned_by",
    "owner_of",
    "placed_in_nodes",
    "read_shard_map",
    "shard_of_projection",
]

logger = logging.getLogger(__name__)

#: Seconds between a node runner's looks for new namespaces and resumed projections.
RUNNER_INTERVAL = 1.0

#: What reading the shard map raises when NATS does not answer (the status command
#: then shows the placement as unknown, and the rest of the status all the same).
UNREACHABLE = (AetherError, OSError, NatsError, TimeoutError)


def placed_in_nodes() -> bool:
    """Whether cluster nodes run the projections (``AETHER["PROJECTIONS_IN_NODES"]``)."""
    return bool(aether_settings.PROJECTIONS_IN_NODES)


def shard_of_projection(projection: type[Projection] | str, num_shards: int | None = None) -> int:
    """The shard a projection (or a projection name) is placed by."""
    name = projection if isinstance(projection, str) else projection._meta.name
    shards = num_shards if num_shards is not None else cluster_config().num_shards
    return shard_for(name, shards)


def owned_by(
    node_id: str, shard_map: ShardMap | None, projections: Iterable[type[Projection]]
) -> set[str]:
    """The names of those of ``projections`` that ``node_id`` runs under ``shard_map``."""
    if shard_map is None:
        return set()
    return {
        p._meta.name
        for p in projections
        if shard_map.owner(shard_for(p._meta.name, shard_map.num_shards)) == node_id
    }


def read_shard_map(timeout: float | None = None) -> ShardMap | None:
    """The cluster's current shard map; None when there is no cluster (no bucket, no
    map yet). Creates nothing: a project without a cluster keeps having none."""
    config = cluster_config()
    runtime = get_runtime()
    coordinator = Coordinator(runtime, "projections", config)

    async def read() -> ShardMap | None:
        js = (await runtime.connection()).jetstream(timeout=config.timeout)
        try:
            await js.stream_info(coordinator.stream)
        except NotFoundError:
            return None
        return await coordinator.read_shard_map()

    return runtime.run(asyncio.wait_for(read(), timeout or 3 * config.timeout))


def owner_of(projection: type[Projection] | str, shard_map: ShardMap | None = None) -> str | None:
    """The id of the node that runs ``projection``, or None when no node does.

    None when nodes do not run projections (``PROJECTIONS_IN_NODES`` False), when
    there is no cluster or no shard map yet, or when the projection's shard has no
    owner. Reads the current map unless ``shard_map`` is given (to place many
    projections with one read). A node follows a new map within milliseconds of its
    announcement, so the answer can be that short a time ahead of the node.
    """
    if not placed_in_nodes():
        return None
    if shard_map is None:
        shard_map = read_shard_map()
    if shard_map is None:
        return None
    return shard_map.owner(shard_of_projection(projection, shard_map.num_shards))


def locate() -> Callable[[type[Projection]], dict[str, Any]]:
    """Where each projection runs, for the status command and the admin page: a
    function giving ``node`` (an id or None) and ``placement`` (words).

    The shard map is read once, here, for all projections. When it cannot be read the
    placement is "unknown", and the caller shows the rest of its status all the same.
    """
    if not placed_in_nodes():
        return lambda p: {
            "node": None,
            "placement": "not placed: nodes do not run projections (PROJECTIONS_IN_NODES is False)",
        }
    try:
        shard_map = read_shard_map()
    except UNREACHABLE as exc:
        unknown = f"unknown (cluster unreadable: {exc!r})"
        return lambda p: {"node": None, "placement": unknown}
    if shard_map is None:
        return lambda p: {"node": None, "placement": "not placed (no cluster shard map)"}

    def place(p: type[Projection]) -> dict[str, Any]:
        node = owner_of(p, shard_map)
        shard = shard_of_projection(p, shard_map.num_shards)
        where = f"runs in node {node}" if node else "not placed (its shard has no owner)"
        return {"node": node, "placement": f"{where} (shard {shard})"}

    return place


class ProjectionPlacement(NodeService):
    """A node's projections: those whose shard the node owns, run by one runner.

    :meth:`follow` runs on the node's event loop and only hands the set of owned
    names to the runner (it never blocks); the runner's own thread starts and stops
    workers, touching the ORM and waiting for workers where that is allowed.
    """

    def __init__(
        self,
        projections: Iterable[type[Projection]],
        *,
        node_id: str,
        interval: float = RUNNER_INTERVAL,
    ) -> None:
        self.projections = list(projections)
        self.node_id = node_id
        # keep_going: a projection that cannot start is logged at every tick, and the
        # node's other projections run; the runner's thread never ends on it unseen.
        self.runner = ProjectionRunner(
            self.projections, interval=interval, node=node_id, keep_going=True
        )
        # Nothing runs before the node has followed a map.
        self.runner.place(())
        self._thread: threading.Thread | None = None
        #: The names this node owned at the last map it followed.
        self.owned: frozenset[str] = frozenset()

    async def follow(self, node_id: str, shard_map: ShardMap | None) -> None:
        owned = frozenset(owned_by(node_id, shard_map, self.projections))
        if owned != self.owned:
            logger.info(
                "node %s runs projections: %s",
                node_id,
                ", ".join(sorted(owned)) or "none",
                extra={"node": node_id},
            )
            self.owned = owned
        self.runner.place(owned)
        if self._thread is None:
            self._thread = self.runner.start()

    async def stop(self) -> None:
        # Waiting for the workers blocks: not on the node's loop, where (in a Celery
        # worker) the workers' own coroutines run.
        if self._thread is None:
            return
        await asyncio.get_running_loop().run_in_executor(None, self._stop)

    def _stop(self) -> None:
        self.runner.stop()
        if self._thread is not None:
            self._thread.join(15)


def node_services(node_id: str) -> list[NodeService]:
    """What a cluster node runs besides its shards: its projections, when nodes run
    them (``PROJECTIONS_IN_NODES``) and any are declared."""
    if not placed_in_nodes():
        return []
    projections = [p for p in all_projections() if not p._meta.problems]
    if not projections:
        return []
    return [ProjectionPlacement(projections, node_id=node_id)]
