"""Celery tasks that make each worker a cluster node, and the two lines that wire them up.

Each host's Celery worker is a node, named by ``AETHER["NODE_ID"]`` (or the
environment variable ``AETHER_NODE_ID``). Celery beat sends four tasks every
``HEARTBEAT_INTERVAL`` to a *broadcast* queue, so every worker runs each of them:

* ``aether_django.heartbeat`` — this node is alive;
* ``aether_django.elect_or_renew`` — take the leader lease if free (and then rebalance
  at once), renew it if held;
* ``aether_django.detect_failures`` — as leader, rebalance when an owner has died;
* ``aether_django.rebalance`` — as leader, spread the shards over the live nodes.

All four are idempotent: running one twice, late, or on a node that is not the
leader does no harm. The worker's main process also serves the commands of the
shards its node owns (see :mod:`aether_django.cluster.routing`). In a project::

    from aether_django.tasks import setup_cluster
    setup_cluster(app)          # app is your Celery app

``setup_cluster`` also makes :class:`aether_django.beat.LeasedScheduler` the beat
scheduler, so ``celery beat`` may run on every host: only the holder of the beat
lease sends the schedule (the cluster's and the project's), the others stand by.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from datetime import timedelta
from typing import Any

from celery import Celery, shared_task
from celery.signals import worker_ready, worker_shutdown
from kombu.common import Broadcast
from kombu.entity import Queue

from .beat import use_leased_scheduler
from .cluster import cluster_config, node_id
from .cluster.coordinator import Coordinator
from .cluster.routing import ShardHost
from .runtime import get_runtime

logger = logging.getLogger(__name__)

__all__ = [
    "BROADCAST_QUEUE",
    "cluster_celery_config",
    "detect_failures",
    "elect_or_renew",
    "heartbeat",
    "rebalance",
    "setup_cluster",
]

#: The broadcast queue every worker consumes the per-node tasks from.
BROADCAST_QUEUE = "aether_cluster"
_TASKS = ("heartbeat", "elect_or_renew", "detect_failures", "rebalance")

_coordinator: Coordinator | None = None
_lock = threading.Lock()


def get_coordinator() -> Coordinator:
    """This process's Coordinator, for this worker's node id and the current settings."""
    global _coordinator
    with _lock:
        name, config, runtime = node_id(), cluster_config(), get_runtime()
        current = _coordinator
        # Rebuilt when the settings or the runtime change (tests override them).
        if (
            current is None
            or current.node_id != name
            or current.config != config
            or current.runtime is not runtime
        ):
            current = _coordinator = Coordinator(runtime, name, config)
        return current


def _run(coro: Any) -> Any:
    return get_runtime().run(coro)


async def _as_leader(coordinator: Coordinator) -> bool:
    # A task may run in another pool process than the one that won the lease:
    # trust the server's lease, then the write is fenced by its revision.
    lease = await coordinator.read_lease()
    coordinator.lease = (
        lease if lease is not None and lease.node_id == coordinator.node_id else None
    )
    return coordinator.is_leader


@shared_task(name="aether_django.heartbeat", ignore_result=True)
def heartbeat() -> str:
    """Say this node is alive, with how many shards the map gives it."""

    async def beat() -> str:
        coordinator = get_coordinator()
        shard_map = await coordinator.read_shard_map()
        count = len(shard_map.shards_of(coordinator.node_id)) if shard_map else 0
        await coordinator.heartbeat(shard_count=count)
        return coordinator.node_id

    result: str = _run(beat())
    return result


@shared_task(name="aether_django.elect_or_renew", ignore_result=True)
def elect_or_renew() -> str | None:
    """Take the lease if nobody holds it, renew it if this node does; return the holder.

    A node that has just taken the lease rebalances in the same task: its
    predecessor may have died, and waiting for the next ``rebalance`` task could
    cost one more interval before the dead leader's shards move.
    """

    async def elect() -> str | None:
        coordinator = get_coordinator()
        lease = await coordinator.elect_or_renew()
        # The term is the revision that created the lease: equal only when just taken.
        if coordinator.is_leader and lease is not None and lease.revision == lease.term:
            await coordinator.rebalance()
        return lease.node_id if lease else None

    result: str | None = _run(elect())
    return result


@shared_task(name="aether_django.detect_failures", ignore_result=True)
def detect_failures() -> list[str]:
    """As leader: the owners in the shard map whose heartbeat expired; rebalance if any."""

    async def detect() -> list[str]:
        coordinator = get_coordinator()
        if not await _as_leader(coordinator):
            return []
        alive = set(await coordinator.alive_nodes())
        shard_map = await coordinator.read_shard_map()
        failed = sorted(set(shard_map.assignment.values()) - alive) if shard_map else []
        if failed:
            lease = coordinator.lease
            logger.warning(
                "nodes failed: %s; rebalancing",
                ", ".join(failed),
                extra={
                    "node": coordinator.node_id,
                    "term": lease.term if lease else None,
                    "failed": failed,
                },
            )
            await coordinator.rebalance()
        return failed

    result: list[str] = _run(detect())
    return result


@shared_task(name="aether_django.rebalance", ignore_result=True)
def rebalance() -> int:
    """As leader: spread the shards over the live nodes; return how many moved."""

    async def run() -> int:
        coordinator = get_coordinator()
        if not await _as_leader(coordinator):
            return 0
        plan = await coordinator.rebalance()
        return plan.moved_count if plan else 0

    result: int = _run(run())
    return result


def cluster_celery_config() -> dict[str, Any]:
    """Celery settings: the broadcast queue, the routes to it and the beat schedule."""
    interval = timedelta(seconds=cluster_config().heartbeat_interval)
    expires = cluster_config().failure_timeout
    broadcast = Broadcast(BROADCAST_QUEUE, routing_key=BROADCAST_QUEUE)
    names = [f"aether_django.{task}" for task in _TASKS]
    return {
        # An explicit routing key on both sides: with Redis, kombu's fanout
        # delivery matches it, and a default one differs between beat and worker.
        "task_queues": (Queue("celery"), broadcast),
        "task_routes": {
            name: {
                "queue": BROADCAST_QUEUE,
                "exchange": BROADCAST_QUEUE,
                "exchange_type": "fanout",
                "routing_key": BROADCAST_QUEUE,
                # Celery does not declare broadcast queues when sending, and kombu's
                # Redis transport then treats the undeclared exchange as direct.
                "declare": [broadcast.exchange],
            }
            for name in names
        },
        "beat_schedule": {
            # A tick older than FAILURE_TIMEOUT is stale (newer ones were sent since):
            # workers drop it rather than run a burst of them late.
            name: {"task": name, "schedule": interval, "options": {"expires": expires}}
            for name in names
        },
    }


def setup_cluster(app: Celery) -> None:
    """Make every worker of ``app`` a cluster node: schedule, queues, and shard hosting."""
    config = cluster_celery_config()
    schedule = {**(app.conf.beat_schedule or {}), **config.pop("beat_schedule")}
    app.conf.update(beat_schedule=schedule, **config)
    use_leased_scheduler(app)  # several beats may run: the lease holder sends
    worker_ready.connect(_start_hosting, weak=False)
    worker_shutdown.connect(_stop_hosting, weak=False)


# --- serving shards in the worker's main process -------------------------------------------
_hosting: dict[str, Any] = {}


def _start_hosting(**_: Any) -> None:
    """Follow the shard map and serve this node's shards, on the runtime's loop thread."""
    runtime = get_runtime()
    host = ShardHost(runtime, node_id())
    stop = asyncio.Event()

    async def follow() -> None:
        coordinator = Coordinator(runtime, node_id(), cluster_config())
        changed = asyncio.Event()

        async def on_notice(_msg: Any) -> None:
            changed.set()

        # The leader announces each map it writes: follow it at once, and poll every
        # interval as well in case a notice was missed.
        subscription = None
        with contextlib.suppress(Exception):
            subscription = await coordinator.watch_shard_map(on_notice)
        while not stop.is_set():
            changed.clear()
            try:
                shard_map = await coordinator.read_shard_map()
                mine = set(shard_map.shards_of(node_id())) if shard_map else set()
                await host.own(mine)
            except Exception:
                logger.warning("following the shard map failed", exc_info=True)
            wake = asyncio.ensure_future(changed.wait())
            halt = asyncio.ensure_future(stop.wait())
            await asyncio.wait(
                {wake, halt},
                timeout=coordinator.config.heartbeat_interval,
                return_when=asyncio.FIRST_COMPLETED,
            )
            wake.cancel()
            halt.cancel()
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        await host.stop()

    _hosting["stop"] = stop
    _hosting["future"] = asyncio.run_coroutine_threadsafe(follow(), runtime.loop)


def _stop_hosting(**_: Any) -> None:
    stop = _hosting.pop("stop", None)
    future = _hosting.pop("future", None)
    if stop is None or future is None:
        return
    get_runtime().loop.call_soon_threadsafe(stop.set)
    try:
        future.result(5)
    except Exception:
        logger.debug("stopping shard hosting failed", exc_info=True)
    try:
        get_runtime().run(get_coordinator().leave())
    except Exception:
        logger.debug("leaving the cluster failed", exc_info=True)
