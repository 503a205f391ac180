"""Run ``manage.py aether_node`` processes for the cluster tests, and watch the cluster."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aether_django.testing.processes import follow_json_lines, stop_process

ROOT = Path(__file__).resolve().parents[2]


class NodeProcess:
    """One cluster node as an OS process, printing its changes of state as JSON lines."""

    def __init__(self, node_id: str, bucket: str) -> None:
        self.node_id = node_id
        self.bucket = bucket
        self.changes: queue.Queue[dict[str, Any]] = queue.Queue()
        self.history: list[dict[str, Any]] = []
        self.process: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "AETHER_TEST_CLUSTER_BUCKET": self.bucket,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "django",
                "aether_node",
                "--node-id",
                self.node_id,
                "--import",
                "tests.aggregates.domain",
                "--json",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        follow_json_lines(self.process, self._changed)

    def _changed(self, change: dict[str, Any]) -> None:
        self.history.append(change)
        self.changes.put(change)

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    def kill(self) -> None:
        stop_process(self.process, sig=signal.SIGKILL)

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()
        stop_process(self.process)


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@dataclass
class LeaderChange:
    """How a leader lease changed hands after its holder was killed (monotonic times)."""

    new: Any
    killed: float
    expired: float  # when the old lease was seen gone (or, if never seen gone, last seen)
    gone_seen: bool
    elected: float


def watch_leader_change(
    read_lease: Callable[[], Any], old: Any, killed: float, timeout: float = 15.0
) -> LeaderChange:
    """Poll the lease every 50 ms until someone other than ``old``'s holder holds it."""
    last_seen_old = killed
    gone_at = None
    while True:
        lease = read_lease()
        now = time.monotonic()
        if lease is not None and lease.node_id != old.node_id:
            expired = gone_at if gone_at is not None else last_seen_old
            return LeaderChange(lease, killed, expired, gone_at is not None, now)
        if lease is None and gone_at is None:
            gone_at = now
        elif lease is not None:
            last_seen_old = now
        assert now < killed + timeout, f"no new leader within {timeout} s of the kill"
        time.sleep(0.05)
