"""Celery tasks and a worker bootstep that make each worker a cluster node.

Each host's Celery worker is a node, named by ``AETHER["NODE_ID"]`` (or the
environment variable ``AETHER_NODE_ID``), driven by the same
:class:`~aether_django.sharding.node.ClusterNode` as ``manage.py aether_node``.

Celery beat is the clock: every ``HEARTBEAT_INTERVAL`` it sends
``aether_django.tick`` to a fanout exchange. In each worker's *main process*,
a bootstep (:class:`ClusterStep`) consumes it on a connection of its own, on a
queue the task pool does not read, and runs one round of the node's duties on
the runtime's loop thread, where the node also serves the commands of its
shards (see :mod:`aether_django.sharding.routing`):

* heartbeat — this node is alive;
* elect or renew — take the leader lease if free (and then rebalance at once),
  renew it if held;
* detect failures and rebalance — as leader, spread the shards over the live
  nodes when an owner died or a node joined;
* run the projections placed in this node (see
  :mod:`aether_django.projections.placement`), in threads of the main process.

So a pool that is busy with long user tasks (solo or prefork) never delays a
heartbeat or a routed command. A tick older than one interval is dropped; a
node whose tick is more than 1.5 intervals late ticks on its own until beat's
tick comes back (a beat failing over does not make nodes look failed).

The tasks ``aether_django.heartbeat``, ``elect_or_renew``, ``detect_failures``
and ``rebalance`` (and ``tick``) stay, idempotent, for projects that call them:
they run the same driver's steps. In a project::

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
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from .extras import missing_extra

try:
    from celery import Celery, bootsteps, shared_task
    from kombu.common import Broadcast
    from kombu.message import Message
    from kombu.messaging import Consumer
except ModuleNotFoundError as exc:  # installed by the [celery] extra
    raise missing_extra(__name__, "Celery", "celery") from exc

from .beat import use_leased_scheduler
from .cluster import cluster_config, node_id
from .cluster.coordinator import Coordinator
from .projections.placement import node_services
from .runtime import get_runtime
from .sharding.node import ClusterNode

logger = logging.getLogger(__name__)

__all__ = [
    "BROADCAST_QUEUE",
    "ClusterStep",
    "cluster_celery_config",
    "detect_failures",
    "elect_or_renew",
    "heartbeat",
    "rebalance",
    "setup_cluster",
    "tick",
]

#: The fanout exchange beat sends the cluster tick to; each worker binds a queue of its own.
BROADCAST_QUEUE = "aether_cluster"
#: The task beat sends every interval: one round of the node's duties.
TICK_TASK = "aether_django.tick"
_TASKS = ("heartbeat", "elect_or_renew", "detect_failures", "rebalance")
#: Every task name the worker's clock consumer takes as beat's tick.
CLOCK_TASKS = frozenset({TICK_TASK, *(f"aether_django.{task}" for task in _TASKS)})

_driver: ClusterNode | None = None
_on_change: Callable[[dict[str, Any]], None] | None = None
_lock = threading.Lock()


def get_driver() -> ClusterNode:
    """This process's cluster driver: the worker's own while it runs, else one per process.

    In the worker's main process it is the node :class:`ClusterStep` runs (it hosts
    the shards); in a pool process, or outside a worker, a driver that hosts none,
    for this node id and the current settings.
    """
    global _driver
    with _lock:
        name, config, runtime = node_id(), cluster_config(), get_runtime()
        service = _service
        if service is not None and service.node is not None and service.pid == os.getpid():
            node = service.node
            if node.node_id == name and node.config == config and node.runtime is runtime:
                return node
        current = _driver
        # Rebuilt when the settings or the runtime change (tests override them).
        if (
            current is None
            or current.node_id != name
            or current.config != config
            or current.runtime is not runtime
        ):
            current = _driver = ClusterNode(runtime, name, config, hosting=False)
        return current


def get_coordinator() -> Coordinator:
    """The coordinator of this process's cluster driver."""
    return get_driver().coordinator


def _run(coro: Any) -> Any:
    return get_runtime().run(coro)


@shared_task(name=TICK_TASK, ignore_result=True)
def tick() -> str | None:
    """One round of the node's duties (what the worker's clock runs); return the leader."""
    state: dict[str, Any] = _run(get_driver().tick())
    leader: str | None = state["leader"]
    return leader


@shared_task(name="aether_django.heartbeat", ignore_result=True)
def heartbeat() -> str:
    """Say this node is alive, with how many shards the map gives it."""
    driver = get_driver()
    _run(driver.heartbeat())
    return driver.node_id


@shared_task(name="aether_django.elect_or_renew", ignore_result=True)
def elect_or_renew() -> str | None:
    """Take the lease if nobody holds it (and rebalance at once), renew it if this node does;
    return the holder."""
    lease = _run(get_driver().elect())
    return lease.node_id if lease else None


@shared_task(name="aether_django.detect_failures", ignore_result=True)
def detect_failures() -> list[str]:
    """As leader: the owners in the shard map whose heartbeat expired; rebalance if any."""
    driver = get_driver()
    failed: list[str] = _run(driver.detect_failures())
    if failed:
        lease = driver.coordinator.lease
        logger.warning(
            "nodes failed: %s; rebalancing",
            ", ".join(failed),
            extra={"node": driver.node_id, "term": lease.term if lease else None, "failed": failed},
        )
    return failed


@shared_task(name="aether_django.rebalance", ignore_result=True)
def rebalance() -> int:
    """As leader: spread the shards over the live nodes; return how many moved."""
    moved: int = _run(get_driver().rebalance())
    return moved


def _exchange() -> Broadcast:
    return Broadcast(BROADCAST_QUEUE, routing_key=BROADCAST_QUEUE)


def cluster_celery_config() -> dict[str, Any]:
    """Celery settings: the routes to the fanout exchange and the beat schedule.

    The exchange is not among the worker's task queues: the pool never runs the
    cluster tasks, :class:`ClusterStep` consumes them in the main process.
    """
    interval = cluster_config().heartbeat_interval
    exchange = _exchange().exchange
    names = [TICK_TASK, *(f"aether_django.{task}" for task in _TASKS)]
    return {
        # An explicit routing key on both sides: with Redis, kombu's fanout
        # delivery matches it, and a default one differs between beat and worker.
        "task_routes": {
            name: {
                "queue": BROADCAST_QUEUE,
                "exchange": BROADCAST_QUEUE,
                "exchange_type": "fanout",
                "routing_key": BROADCAST_QUEUE,
                # Celery does not declare broadcast queues when sending, and kombu's
                # Redis transport then treats the undeclared exchange as direct.
                "declare": [exchange],
            }
            for name in names
        },
        "beat_schedule": {
            # Expires after one interval: the worker drops an older tick rather than
            # run it late (a burst of stale ticks must not change leadership).
            TICK_TASK: {
                "task": TICK_TASK,
                "schedule": timedelta(seconds=interval),
                "options": {"expires": interval},
            }
        },
    }


def setup_cluster(
    app: Celery, *, on_change: Callable[[dict[str, Any]], None] | None = None
) -> None:
    """Make every worker of ``app`` a cluster node: schedule, routes, and the clock step.

    ``on_change`` is called, on the node's loop thread, with each change of the
    node's state (leader, term, shards, map revision; what ``aether_node --json``
    prints); it must not block.
    """
    global _on_change
    _on_change = on_change
    config = cluster_celery_config()
    schedule = {**(app.conf.beat_schedule or {}), **config.pop("beat_schedule")}
    app.conf.update(beat_schedule=schedule, **config)
    use_leased_scheduler(app)  # several beats may run: the lease holder sends
    if ClusterStep not in app.steps["worker"]:
        app.steps["worker"].add(ClusterStep)


#: Seconds a worker's warm shutdown waits for its node to stop and leave the cluster.
NODE_STOP_TIMEOUT = 30.0


# --- the node in the worker's main process -------------------------------------------------
class ClusterService:
    """The worker's node: the driver on the runtime's loop, paced by beat's tick.

    A thread with a broker connection of its own consumes the tick from a queue
    bound to the fanout exchange (the pool never sees it) and sets the driver's
    clock; the driver runs on the runtime's loop thread, where shard hosting and
    its NATS connection live. Neither waits for the pool.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.node: ClusterNode | None = None
        #: The process the node runs in: a pool process forked later is not it.
        self.pid = os.getpid()
        self.received = 0
        self.stale = 0
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._future: Any = None
        self._stop: asyncio.Event | None = None
        self._clock: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        runtime = get_runtime()
        self.pid = os.getpid()
        name = node_id()
        # The worker runs the projections placed in this node too (PROJECTIONS_IN_NODES),
        # in the main process, next to the shards: never in the pool.
        self.node = ClusterNode(
            runtime, name, cluster_config(), on_change=_on_change, services=node_services(name)
        )
        self._stop, self._clock = asyncio.Event(), asyncio.Event()
        self._loop = runtime.loop
        self._future = asyncio.run_coroutine_threadsafe(
            self.node.run(self._stop, self._clock), runtime.loop
        )
        self._thread = threading.Thread(
            target=self._consume, name="aether-cluster-clock", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(5)
        future, stop = self._future, self._stop
        self._future = None
        if future is None or stop is None:
            return
        assert self._loop is not None
        self._loop.call_soon_threadsafe(stop.set)
        try:
            # The driver stops hosting, stops the node's projections (a batch in progress
            # finishes or rolls back) and leaves the cluster: a warm shutdown waits for
            # that as it waits for running tasks, up to a bound.
            future.result(NODE_STOP_TIMEOUT)
        except Exception:
            logger.debug("stopping the cluster node failed", exc_info=True)

    terminate = stop

    def _consume(self) -> None:
        # Each worker binds a queue of its own (a unique, auto-deleted name) to the
        # fanout exchange, so every worker gets every tick.
        queue = Broadcast(
            BROADCAST_QUEUE,
            routing_key=BROADCAST_QUEUE,
            queue=f"{BROADCAST_QUEUE}.{node_id()}.{id(self):x}",
        )
        while not self._halt.is_set():
            try:
                with (
                    # The app's own broker settings (transport options, TLS), so the
                    # fanout delivery matches what beat sends.
                    self.app.connection_for_read() as connection,
                    Consumer(connection, [queue], on_message=self._on_message, no_ack=True),
                ):
                    while not self._halt.is_set():
                        with contextlib.suppress(TimeoutError):  # a chance to see the halt
                            connection.drain_events(timeout=0.5)
            except Exception:
                # The broker is away: the driver ticks on its own meanwhile.
                logger.warning("cluster tick consumer failed; reconnecting", exc_info=True)
                self._halt.wait(1.0)

    def _on_message(self, message: Message) -> None:
        headers = message.headers or {}
        if headers.get("task") not in CLOCK_TASKS:
            return
        self.received += 1
        if _expired(headers.get("expires")):
            self.stale += 1
            logger.debug("dropped a stale cluster tick %s", headers.get("id"))
            return
        clock, loop = self._clock, self._loop
        if clock is not None and loop is not None:
            loop.call_soon_threadsafe(clock.set)


def _expired(expires: Any) -> bool:
    if not expires:
        return False
    try:
        when = datetime.fromisoformat(str(expires))
    except ValueError:
        return False
    now = datetime.now(UTC) if when.tzinfo else datetime.now()
    return when < now


_service: ClusterService | None = None


class ClusterStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: run this worker's cluster node in its main process.

    Started after the pool (prefork children are forked before the node's
    threads exist) and before the consumer, whose start blocks.
    """

    requires = ("celery.worker.components:Pool",)

    def create(self, parent: Any) -> ClusterService:
        global _service
        _service = ClusterService(parent.app)
        return _service

    def stop(self, parent: Any) -> None:
        global _service
        if self.obj is not None:
            self.obj.stop()
        _service = None

    terminate = stop
