"""Placement in the cluster: each projection runs in exactly one node, and moves on failover.

Nodes are real processes on a real nats-server: ``manage.py aether_node``
(tests/projections/nodeproc.py) and a Celery worker on a valkey broker
(tests/projections/celery_app.py), sharing a SQLite file in WAL mode. The ledger
projections record, per event, the node that applied it (``context.node``), so the
rows show where each projection ran and that nothing was applied twice.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from aether_django.cluster.coordinator import ClusterConfig, Coordinator, ShardMap
from aether_django.cluster.hashring import shard_for
from aether_django.nats import headers as hdr
from aether_django.projections.placement import owned_by, shard_of_projection
from aether_django.runtime import Runtime
from aether_django.store import get_event_store
from aether_django.testing.processes import follow_json_lines, stop_process

from .conftest import save_ticks

ROOT = Path(__file__).resolve().parents[2]
NUM_SHARDS = 100
#: How soon a killed node's shards are served elsewhere (docs/cluster.md#how-long-a-failover-
#: takes): FAILURE_TIMEOUT + HEARTBEAT_INTERVAL (4 s with the test's defaults) plus what a
#: loaded machine adds, the bound the cluster tests assert.
FAILOVER_BOUND = 5.0
#: Seconds a slow event's handler takes: longer than the Celery bootstep's own wait for
#: the node to stop (5 s), which a warm shutdown must outlast.
SLOW_HANDLER = 8.0
#: Where the projections write, for the tests run on both: SQLite, PostgreSQL.
DATABASES = [
    pytest.param("default", id="sqlite"),
    pytest.param(
        "pg",
        marks=pytest.mark.django_db(databases=["default", "pg"], transaction=True),
        id="postgresql",
    ),
]


def _rows(db: Path | str, query: str, *args: str | int) -> list[tuple[Any, ...]]:
    """Run ``query`` (``%s`` placeholders) on the nodes' SQLite file, or on the "pg" alias."""
    if db == "pg":
        with connections["pg"].cursor() as cursor:
            cursor.execute(query, args)
            return list(cursor.fetchall())
    with sqlite3.connect(db, timeout=20) as conn:
        return conn.execute(query.replace("%s", "?"), args).fetchall()


class Node:
    """One node process (``aether_node`` or a Celery worker) printing its state as JSON lines."""

    def __init__(self, node_id: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.node_id = node_id
        self.history: list[dict[str, Any]] = []
        self.log = log
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**env, "AETHER_NODE_ID": node_id},
            stdout=subprocess.PIPE,
            stderr=log.open("ab"),
            text=True,
        )
        follow_json_lines(self.process, self.history.append)

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    def kill(self) -> None:
        stop_process(self.process, sig=signal.SIGKILL)

    def stop(self) -> None:
        if self.process.poll() is None:
            stop_process(self.process)


class PlacementCluster:
    """Node processes of one fresh cluster bucket and one SQLite file, and an observer."""

    def __init__(
        self, tmp_path: Path, nats_url: str, names: list[str], source: str, database: str
    ) -> None:
        self.tmp_path = tmp_path
        self.file = tmp_path / "db.sqlite3"
        #: Where the projections write: the SQLite file, or "pg" (the test's PostgreSQL).
        self.db: Path | str = "pg" if database == "pg" else self.file
        self.names = names
        self.source = source
        self.bucket = f"cluster_{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "AETHER_TEST_DATABASE": str(self.file),
            "AETHER_TEST_PROJECTION_DATABASE": database,
            "AETHER_NATS_URL": nats_url,
            "AETHER_TEST_CLUSTER_BUCKET": self.bucket,
            "AETHER_TEST_NUM_SHARDS": str(NUM_SHARDS),
            "AETHER_TEST_SOURCE": source,
            "AETHER_TEST_PROJECTIONS": ",".join(names),
            "BATCH_SIZE": "20",
        }
        subprocess.run(
            [sys.executable, "-m", "tests.projections.runnerproc", "migrate"],
            cwd=ROOT,
            env=self.env,
            check=True,
        )
        self.runtime = Runtime(nats_url)
        self.observer = Coordinator(
            self.runtime, "observer", ClusterConfig(bucket=self.bucket, num_shards=NUM_SHARDS)
        )
        self.nodes: dict[str, Node] = {}

    def node(self, node_id: str) -> Node:
        """Start ``manage.py aether_node`` as ``node_id``."""
        command = [sys.executable, "-m", "tests.projections.nodeproc", node_id]
        return self._start(node_id, command, self.env)

    def celery_worker(self, node_id: str, broker_url: str) -> Node:
        """Start a Celery worker (no beat: a node ticks on its own when beat is silent)."""
        command = [
            sys.executable, "-m", "celery", "-A", "tests.projections.celery_app", "worker",
            "--pool=prefork", "--concurrency=1", "-n", f"{node_id}@%h",
            "--without-mingle", "--without-gossip", "--loglevel=WARNING",
        ]  # fmt: skip
        return self._start(node_id, command, {**self.env, "AETHER_TEST_BROKER_URL": broker_url})

    def _start(self, node_id: str, command: list[str], env: dict[str, str]) -> Node:
        node = Node(node_id, command, env, self.tmp_path / f"{node_id}.log")
        self.nodes[node_id] = node
        return node

    def logs(self) -> str:
        return "\n".join(
            f"--- {node.node_id}\n{node.log.read_text(errors='replace')[-3000:]}"
            for node in self.nodes.values()
        )

    def shard_map(self) -> ShardMap | None:
        return self.runtime.run(self.observer.read_shard_map())

    def settled(self, node_ids: list[str]) -> ShardMap | None:
        """The map once it spreads over exactly ``node_ids`` and each of them follows it."""
        shard_map = self.shard_map()
        if shard_map is None or set(shard_map.counts()) != set(node_ids):
            return None
        for node_id in node_ids:
            if self.nodes[node_id].last.get("map_revision") != shard_map.revision:
                return None
        return shard_map

    def owners(self, shard_map: ShardMap) -> dict[str, str]:
        """Each projection's node under ``shard_map``."""
        owners = {}
        for node_id in shard_map.counts():
            for name in owned_by(node_id, shard_map, _named(self.names)):
                owners[name] = node_id
        return owners

    def checkpoint(self, name: str) -> int:
        found = _rows(
            self.db,
            "SELECT sequence FROM aether_django_projectioncheckpoint "
            "WHERE projection = %s AND namespace = %s",
            name,
            self.source,
        )
        return found[0][0] if found else 0

    def applied(self, name: str) -> list[tuple[int, str]]:
        """(sequence, node) of every row projection ``name`` wrote, in sequence order."""
        return [
            (seq, node)
            for seq, node in _rows(
                self.db,
                "SELECT sequence, node FROM projection_tests_applied "
                "WHERE projection = %s ORDER BY sequence, id",
                name,
            )
        ]

    def first_applied_by(self, name: str, node: str) -> float | None:
        """When ``node`` wrote its first row for projection ``name`` (None: not yet)."""
        found = _rows(
            self.db,
            "SELECT MIN(at) FROM projection_tests_applied WHERE projection = %s AND node = %s",
            name,
            node,
        )
        return found[0][0] if found else None

    def wait_caught_up(self, head: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            behind = {n: at for n in self.names if (at := self.checkpoint(n)) < head}
            if not behind:
                return
            assert time.monotonic() < deadline, f"behind {head}: {behind}\n{self.logs()}"
            time.sleep(0.1)

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.runtime.close()


def _named(names: list[str]) -> list[Any]:
    """Stand-ins with the ``_meta.name`` that placement reads (the classes live in the nodes)."""

    class Meta:
        def __init__(self, name: str) -> None:
            self.name = name

    class Named:
        def __init__(self, name: str) -> None:
            self._meta = Meta(name)

    return [Named(name) for name in names]


def wait_until(condition: Any, timeout: float, what: str, logs: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s" + (f"\n{logs()}" if logs else ""))
        time.sleep(0.05)


@pytest.fixture
def placement_cluster(tmp_path, unique, aether_nats_url):
    clusters: list[PlacementCluster] = []

    def make(count: int, database: str = "default") -> PlacementCluster:
        names = [unique(f"placed{i}") for i in range(count)]
        cluster = PlacementCluster(
            tmp_path, aether_nats_url, names, unique("proj-placed"), database
        )
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


def _assert_each_ran_once_in_its_owner(
    cluster: PlacementCluster, owners: dict[str, str], head: int
) -> None:
    for name in cluster.names:
        rows = cluster.applied(name)
        # Every event once, in order: nothing applied twice, nothing missing.
        assert [seq for seq, _ in rows] == list(range(1, head + 1)), name
        # ... and all of it by one node, the one the shard map places the projection in.
        assert {node for _, node in rows} == {owners[name]}, (name, owners)


@pytest.mark.slow
def test_two_nodes_run_each_projection_in_exactly_one_of_them(placement_cluster):
    cluster = placement_cluster(12)
    cluster.node("node-a")
    cluster.node("node-b")
    shard_map = wait_until(
        lambda: cluster.settled(["node-a", "node-b"]), 30, "two nodes settle", cluster.logs
    )
    owners = cluster.owners(shard_map)
    assert set(owners) == set(cluster.names)
    # 12 names hashed over two nodes: both get some (all on one: 1 in 2,048).
    assert set(owners.values()) == {"node-a", "node-b"}, owners
    save_ticks(cluster.source, 60, actor="first")
    time.sleep(0.5)  # some applied live, the rest in batches
    save_ticks(cluster.source, 60, actor="second")
    head = get_event_store(cluster.source).get_info().last_sequence
    cluster.wait_caught_up(head)
    assert cluster.shard_map().revision == shard_map.revision  # nothing moved meanwhile
    _assert_each_ran_once_in_its_owner(cluster, owners, head)
    # The status command (another process) says where each one runs.
    manage = [sys.executable, "-m", "tests.projections.nodeproc", "--manage"]
    status = subprocess.run(
        [*manage, "aether_projections", "status", "--json", *cluster.names],
        cwd=ROOT,
        env=cluster.env,
        capture_output=True,
        text=True,
        check=True,
    )
    shown = {p["name"]: p["node"] for p in json.loads(status.stdout)["projections"]}
    assert shown == owners
    counts = {node: list(owners.values()).count(node) for node in sorted(set(owners.values()))}
    print(f"\nprojections per node: {counts}")


@pytest.mark.slow
@pytest.mark.parametrize("database", DATABASES)
def test_a_killed_nodes_projections_move_within_the_failover_bound(placement_cluster, database):
    cluster = placement_cluster(6, database)
    cluster.node("node-a")
    cluster.node("node-b")
    shard_map = wait_until(
        lambda: cluster.settled(["node-a", "node-b"]), 30, "two nodes settle", cluster.logs
    )
    owners = cluster.owners(shard_map)
    victim = owners[cluster.names[0]]
    survivor = next(n for n in ("node-a", "node-b") if n != victim)
    reassigned, took_over, moving = _fail_over(
        cluster, owners, victim, survivor, cluster.nodes[victim].kill
    )
    print(
        f"\n{len(moving)} projection(s) of {victim}: shards in {survivor} {reassigned:.2f}s, "
        f"first batches there {took_over:.2f}s after the kill"
    )
    # The shard failover bound: the survivor serves the shards, and runs the projections
    # (its first batch of each committed), within it.
    assert reassigned <= FAILOVER_BOUND, reassigned
    assert took_over <= FAILOVER_BOUND, took_over


def _fail_over(
    cluster: PlacementCluster,
    owners: dict[str, str],
    victim: str,
    survivor: str,
    end: Any,
) -> tuple[float, float, list[str]]:
    """End ``victim`` with ``end()`` while events are being saved and its projections
    applied; wait until ``survivor`` runs them all and the read model is caught up.

    Returns the seconds from ``end()`` until the map gives the survivor every shard, and
    until the survivor has committed a first batch of each moved projection (the rows'
    own write times), and the moved projections. Asserts the read model exact.
    """
    moving = [n for n, o in owners.items() if o == victim]
    assert moving, owners
    stop = threading.Event()

    def writer() -> None:
        version = 1
        while not stop.is_set():
            save_ticks(cluster.source, 5, actor="live", first_version=version)
            version += 5
            time.sleep(0.02)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        # The victim is applying its projections' batches when it ends.
        wait_until(
            lambda: all(cluster.checkpoint(n) >= 40 for n in moving),
            30,
            "the victim applies",
            cluster.logs,
        )
        ended, ended_at = time.monotonic(), time.time()
        end()
        wait_until(
            lambda: cluster.settled([survivor]), 3 * FAILOVER_BOUND, "the map moves", cluster.logs
        )
        reassigned = time.monotonic() - ended
        # Every projection of the victim runs in the survivor: it applies the events
        # that keep coming, and its rows say so (and when: the row's own time).

        def firsts() -> list[float] | None:
            found = [cluster.first_applied_by(name, survivor) for name in moving]
            return [at for at in found if at is not None] if all(found) else None

        took_over_at = wait_until(
            firsts,
            3 * FAILOVER_BOUND,
            "the survivor takes the victim's projections",
            cluster.logs,
        )
        took_over = max(took_over_at) - ended_at
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
    head = get_event_store(cluster.source).get_info().last_sequence
    cluster.wait_caught_up(head)
    for name in cluster.names:
        rows = cluster.applied(name)
        # Exact: every event once, whichever node applied it (a batch the end cut
        # short was rolled back and applied again by the survivor).
        assert [seq for seq, _ in rows] == list(range(1, head + 1)), name
        nodes = [node for _, node in rows]
        if name in moving:
            # The victim up to some event, the survivor from the next one on.
            cut = nodes.index(survivor)
            assert set(nodes[:cut]) == {victim} and set(nodes[cut:]) == {survivor}, name
        else:
            assert set(nodes) == {survivor}, name
    return reassigned, took_over, moving


def _children(pid: int) -> list[int]:
    """The processes ``pid`` forked (a Celery worker's pool), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _left(cluster: PlacementCluster, node_id: str) -> bool:
    """Whether ``node_id`` left the cluster (its heartbeat purged on the way out) rather
    than failed (its heartbeat expired, leaving no record)."""
    last = cluster.runtime.run(cluster.observer._get(f"alive.{node_id}"))
    return last is not None and (last.headers or {}).get(hdr.KV_OPERATION) == "PURGE"


@pytest.fixture
def celery_and_node(request, placement_cluster):
    """A Celery worker node w1 (prefork pool) and an aether_node node-a, settled, with
    ten projections (w1 runs some of them): the cluster and the projections' owners.

    The projections write to SQLite, or to PostgreSQL when parametrized with "pg". The
    failover tests use PostgreSQL: ten projections busy on one SQLite file queue for its
    single write lock, which adds up to a second or two to the survivor's first batches
    (a measure of SQLite, not of the failover; the aether_node test covers SQLite).
    """
    from ..cluster.celery_nodes import cluster_broker

    cluster = placement_cluster(10, getattr(request, "param", "default"))
    server, broker_url = cluster_broker()
    try:
        cluster.celery_worker("w1", broker_url)
        cluster.node("node-a")
        shard_map = wait_until(
            lambda: cluster.settled(["w1", "node-a"]),
            45,
            "a Celery worker and an aether_node settle",
            cluster.logs,
        )
        owners = cluster.owners(shard_map)
        # Ten names over two nodes: both get some (all on one: 1 in 512).
        assert set(owners.values()) == {"w1", "node-a"}, owners
        yield cluster, owners
    finally:
        cluster.close()
        if server is not None:
            server.stop()


@pytest.mark.slow
def test_a_celery_worker_node_runs_its_projections(celery_and_node):
    cluster, owners = celery_and_node
    save_ticks(cluster.source, 80, actor="celery")
    head = get_event_store(cluster.source).get_info().last_sequence
    cluster.wait_caught_up(head)
    _assert_each_ran_once_in_its_owner(cluster, owners, head)


@pytest.mark.slow
@pytest.mark.parametrize("celery_and_node", [DATABASES[1]], indirect=True)
def test_a_killed_celery_workers_projections_move_within_the_failover_bound(celery_and_node):
    cluster, owners = celery_and_node
    worker = cluster.nodes["w1"].process
    pool = _children(worker.pid)
    assert pool, "the prefork pool has a process"
    orphans_ended: list[float] = []

    def kill() -> None:
        killed = time.monotonic()
        cluster.nodes["w1"].kill()  # the main process only: its pool is orphaned
        # The pool processes end on their own: they find the pipe to their parent closed.
        wait_until(
            lambda: not any(_running(pid) for pid in pool), 10, "the orphaned pool processes end"
        )
        orphans_ended.append(time.monotonic() - killed)

    try:
        reassigned, took_over, moving = _fail_over(cluster, owners, "w1", "node-a", kill)
    finally:
        for pid in pool:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
    assert not _left(cluster, "w1")  # failed: its heartbeat expired
    # Neither the killed process (its runner's threads died with it) nor an orphan ran a
    # projection after the survivor took it: after the cut the rows name node-a alone,
    # and every event is applied once (checked by _fail_over).
    print(
        f"\n{len(moving)} projection(s) of the killed Celery worker: pool ended "
        f"{orphans_ended[0]:.2f}s, shards in node-a {reassigned:.2f}s, first batches there "
        f"{took_over:.2f}s after the kill"
    )
    assert reassigned <= FAILOVER_BOUND, reassigned
    assert took_over <= FAILOVER_BOUND, took_over


@pytest.mark.slow
@pytest.mark.parametrize("celery_and_node", [DATABASES[1]], indirect=True)
def test_a_celery_worker_stopped_warm_hands_its_projections_over(celery_and_node):
    cluster, owners = celery_and_node
    node = cluster.nodes["w1"]
    exited: list[float] = []

    def warm_shutdown() -> None:
        started = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        node.process.wait(30)
        exited.append(time.monotonic() - started)

    reassigned, took_over, moving = _fail_over(cluster, owners, "w1", "node-a", warm_shutdown)
    # A clean exit: the runner's workers finished or rolled back their batches and the
    # node left the cluster, so the survivor took over without waiting for a failure.
    assert node.process.returncode == 0, cluster.logs()
    assert _left(cluster, "w1")  # the leader did not have to wait for its heartbeat to expire
    log = node.log.read_text(errors="replace")
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    print(
        f"\n{len(moving)} projection(s) of the Celery worker stopped warm: exited in "
        f"{exited[0]:.2f}s, shards in node-a {reassigned:.2f}s, first batches there "
        f"{took_over:.2f}s after SIGTERM"
    )
    assert reassigned <= FAILOVER_BOUND, reassigned
    assert took_over <= FAILOVER_BOUND, took_over


@pytest.mark.slow
@pytest.mark.parametrize("celery_and_node", [DATABASES[1]], indirect=True)
def test_a_celery_worker_stopped_warm_waits_for_a_long_batch(celery_and_node):
    cluster, owners = celery_and_node
    node = cluster.nodes["w1"]
    moving = [n for n, o in owners.items() if o == "w1"]
    save_ticks(cluster.source, 10, actor="before")
    cluster.wait_caught_up(10)
    # A handler that takes longer than the bootstep waits for its node to stop.
    save_ticks(cluster.source, 1, actor="slow", sleep=SLOW_HANDLER)
    save_ticks(cluster.source, 10, actor="after")
    time.sleep(1.5)
    # w1's runners are inside the slow batch now, with 6 s or so of it to go.
    assert all(cluster.checkpoint(n) == 10 for n in moving)
    termed = time.monotonic()
    node.process.send_signal(signal.SIGTERM)
    node.process.wait(60)
    exited = time.monotonic() - termed
    # The worker waited for its runner (the batch finished or rolled back) and then left
    # the cluster, as aether_node does: it did not exit with its node half stopped.
    assert node.process.returncode == 0, cluster.logs()
    assert _left(cluster, "w1"), cluster.logs()
    head = get_event_store(cluster.source).get_info().last_sequence
    cluster.wait_caught_up(head)
    for name in cluster.names:
        assert [seq for seq, _ in cluster.applied(name)] == list(range(1, head + 1)), name
    # The slow batch finished in w1 (the worker waited for it) rather than in node-a.
    slow = {node for name in moving for seq, node in cluster.applied(name) if seq == 11}
    print(f"\nstopped warm in a {SLOW_HANDLER:.0f} s batch: exited in {exited:.2f}s")
    assert slow == {"w1"}, slow


def test_a_projection_is_placed_by_its_names_shard():
    assert shard_of_projection("order-summary", 100) == shard_for("order-summary", 100)
    shard_map = ShardMap(
        num_shards=4, assignment={0: "a", 1: "b", 2: "a", 3: "b"}, term=1, revision=1
    )
    names = _named([f"p{i}" for i in range(20)])
    on_a, on_b = owned_by("a", shard_map, names), owned_by("b", shard_map, names)
    assert on_a | on_b == {f"p{i}" for i in range(20)} and not on_a & on_b
    assert all(shard_for(n, 4) in (0, 2) for n in on_a)
    assert owned_by("a", None, names) == set()
