"""Start node processes (tests.bus.node) and talk to them from tests."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from aether_django.testing.processes import stop_process

ROOT = Path(__file__).resolve().parents[2]


def handled_ids(path: Path) -> list[str]:
    """The event ids a node process wrote to ``path``, one a line, as it handled them."""
    return path.read_text().split() if path.exists() else []


def wait_for_lines(path: Path, count: int, timeout: float) -> list[str]:
    """``handled_ids(path)`` once it holds ``count`` ids, or when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while len(handled_ids(path)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return handled_ids(path)


class Node:
    """One node process: send commands, collect its output lines."""

    def __init__(self, name: str) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": str(ROOT), "AETHER_NODE_ID": name}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.bus.node"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict] = queue.Queue()
        self.deliveries: dict[str, list[dict]] = {}
        #: label -> the error that ended that subscription, as the node printed it.
        self.endings: dict[str, dict] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))

    def send(self, **command) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def wait_for(self, key: str, timeout: float = 30.0) -> dict:
        """The next reply that has ``key``; deliveries seen meanwhile are kept."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no {key!r} reply; stderr: {self.stderr()}")
            try:
                doc = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self._keep(doc)
            if key in doc:
                return doc

    def subscribe(self, label: str, pattern: str, **options) -> None:
        self.send(cmd="subscribe", label=label, pattern=pattern, **options)
        self.wait_for("ready")

    def save(self, namespace: str, actor_id: str, versions: list[int], **options) -> list[str]:
        return self.save_timed(namespace, actor_id, versions, **options)[0]

    def save_timed(
        self, namespace: str, actor_id: str, versions: list[int], **options
    ) -> tuple[list[str], float]:
        """Save; return the ids and the node's ``time.monotonic()`` just before saving."""
        self.send(cmd="save", namespace=namespace, actor_id=actor_id, versions=versions, **options)
        reply = self.wait_for("saved")
        return reply["saved"], reply["started"]

    def received(self, label: str, count: int, timeout: float = 10.0) -> list[dict]:
        """Wait until ``label`` has ``count`` deliveries; return them."""
        deadline = time.monotonic() + timeout
        while len(self.deliveries.get(label, [])) < count and time.monotonic() < deadline:
            try:
                doc = self.lines.get(timeout=0.05)
            except queue.Empty:
                continue
            self._keep(doc)
        return list(self.deliveries.get(label, []))

    def _keep(self, doc: dict) -> None:
        if "label" in doc:
            self.deliveries.setdefault(doc["label"], []).append(doc)
        if "ended" in doc:
            self.endings[doc["ended"]] = doc

    def ending(self, label: str, timeout: float = 10.0) -> dict | None:
        """The error that ended subscription ``label``; None if it did not end in time."""
        deadline = time.monotonic() + timeout
        while label not in self.endings and time.monotonic() < deadline:
            self.received("\0never", 1, timeout=0.05)
        return self.endings.get(label)

    def settle(self, wait: float = 0.5) -> None:
        """Collect whatever arrives within ``wait`` seconds."""
        self.received("\0never", 1, timeout=wait)

    def exit(self) -> None:
        self.send(cmd="exit")
        self.wait_for("bye")
        self.process.wait(10)

    def kill(self) -> None:
        stop_process(self.process, sig=signal.SIGKILL)

    def stderr(self) -> str:
        if self.process.poll() is None:
            return "(running)"
        assert self.process.stderr is not None
        return self.process.stderr.read()[-2000:]
