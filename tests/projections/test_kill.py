"""Exactly-once effect across crashes: a runner process SIGKILLed mid-batch, again and again,
while events are saved; after a restart the read model is the one a fresh run makes. Two
runner processes at once, and what their metrics add up to."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aether_django.store import get_event_store

from .conftest import save_ticks

ROOT = Path(__file__).resolve().parents[2]


def _rows(db: Path, query: str, *args: object) -> list[tuple]:
    with sqlite3.connect(db, timeout=20) as conn:
        return conn.execute(query, args).fetchall()


def _wait_for_checkpoint(db: Path, name: str, namespace: str, head: int, log: Path) -> None:
    """Until the runners' checkpoint of ``namespace`` reaches ``head`` (60 s at most)."""
    deadline = time.monotonic() + 60
    while True:
        at = _rows(
            db,
            "SELECT sequence FROM aether_django_projectioncheckpoint "
            "WHERE projection = ? AND namespace = ?",
            name,
            namespace,
        )
        if at and at[0][0] >= head:
            return
        assert time.monotonic() < deadline, f"stuck at {at} of {head}: {log.read_text()}"
        time.sleep(0.1)


def _applied(db: Path, name: str) -> list[int]:
    """The stream sequences the test projection's handler recorded, in order."""
    return [
        seq
        for (seq,) in _rows(
            db,
            "SELECT sequence FROM projection_tests_applied WHERE projection = ? ORDER BY sequence",
            name,
        )
    ]


@pytest.mark.slow
def test_sigkill_mid_batch_while_events_are_saved(tmp_path, unique, aether_nats_url):
    namespace = unique("proj-kill")
    name = unique("kill")
    db = tmp_path / "db.sqlite3"
    env = dict(
        os.environ,
        AETHER_TEST_DATABASE=str(db),
        AETHER_NATS_URL=aether_nats_url,
        BATCH_SIZE="20",
        PYTHONUNBUFFERED="1",
    )
    module = [sys.executable, "-m", "tests.projections.runnerproc"]
    subprocess.run([*module, "migrate"], cwd=ROOT, env=env, check=True)
    save_ticks(namespace, 200, actor="history")
    stop = threading.Event()

    def writer() -> None:
        version = 1
        while not stop.is_set():
            save_ticks(namespace, 5, actor="live", first_version=version)
            version += 5
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    rng = random.Random(16)
    kills = 0
    log = tmp_path / "runner.log"
    try:
        with log.open("ab") as out:
            for _ in range(6):
                proc = subprocess.Popen(
                    [*module, "run", namespace, name], cwd=ROOT, env=env, stdout=out, stderr=out
                )
                time.sleep(rng.uniform(1.0, 2.0))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
    finally:
        stop.set()
        thread.join()
    head = get_event_store(namespace).get_info().last_sequence
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*module, "run", namespace, name], cwd=ROOT, env=env, stdout=out, stderr=out
        )
        try:
            _wait_for_checkpoint(db, name, namespace, head, log)
        finally:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
            assert proc.wait(30) == 0, log.read_text()
    applied = _applied(db, name)
    # Every event once: what a fresh run (or a rebuild) of this ledger writes.
    assert kills == 6
    assert applied == list(range(1, head + 1))
    assert "stopped" in log.read_text()


@pytest.mark.slow
def test_two_runner_processes_of_one_projection_leave_the_read_model_exact(
    tmp_path, unique, aether_nats_url
):
    namespace = unique("proj-procs")
    name = unique("procs")
    db = tmp_path / "db.sqlite3"
    env = dict(
        os.environ,
        AETHER_TEST_DATABASE=str(db),
        AETHER_NATS_URL=aether_nats_url,
        BATCH_SIZE="10",
        PYTHONUNBUFFERED="1",
    )
    module = [sys.executable, "-m", "tests.projections.runnerproc"]
    subprocess.run([*module, "migrate"], cwd=ROOT, env=env, check=True)
    save_ticks(namespace, 150, actor="history")
    log = tmp_path / "runners.log"
    with log.open("ab") as out:
        procs = [
            subprocess.Popen(
                [*module, "run", namespace, name], cwd=ROOT, env=env, stdout=out, stderr=out
            )
            for _ in range(2)
        ]
        try:
            save_ticks(namespace, 150, actor="live")
            head = get_event_store(namespace).get_info().last_sequence
            _wait_for_checkpoint(db, name, namespace, head, log)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGINT)
            codes = [proc.wait(30) for proc in procs]
    assert codes == [0, 0], log.read_text()
    applied = _applied(db, name)
    assert applied == list(range(1, head + 1))


READ_METRICS = """
import sys
import tests.projections.runnerproc  # Django on the runners' database file
from aether_django import metrics, views
from tests.projections.app.projections import ledger
assert metrics.MULTIPROCESS
ledger(sys.argv[1], sys.argv[2])
print(metrics.render(views.projection_samples()), end="")
"""


def _sample(text: str, key: str) -> float:
    (value,) = [line.rpartition(" ")[2] for line in text.splitlines() if line.startswith(key + " ")]
    return float(value)


@pytest.mark.slow
def test_metrics_of_two_runner_processes_add_up_to_each_event_once(
    tmp_path, unique, aether_nats_url
):
    """Two runner processes of one projection in multiprocess mode: the events counted
    applied, over both, are the stream's events once each (a batch counts when it
    commits, so the one that lost a compare-and-set counted nothing), and the lag read
    at the scrape is one sample, 0, not a sum of the two runners' views."""
    namespace = unique("proj-mpm")
    name = unique("mpm")
    db = tmp_path / "db.sqlite3"
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = dict(
        os.environ,
        AETHER_TEST_DATABASE=str(db),
        AETHER_NATS_URL=aether_nats_url,
        BATCH_SIZE="10",
        PYTHONUNBUFFERED="1",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    module = [sys.executable, "-m", "tests.projections.runnerproc"]
    subprocess.run([*module, "migrate"], cwd=ROOT, env=env, check=True)
    save_ticks(namespace, 100, actor="history")
    log = tmp_path / "runners.log"
    with log.open("ab") as out:
        procs = [
            subprocess.Popen(
                [*module, "run", namespace, name], cwd=ROOT, env=env, stdout=out, stderr=out
            )
            for _ in range(2)
        ]
        try:
            save_ticks(namespace, 100, actor="live")
            head = get_event_store(namespace).get_info().last_sequence
            _wait_for_checkpoint(db, name, namespace, head, log)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGINT)
            codes = [proc.wait(30) for proc in procs]
    assert codes == [0, 0], log.read_text()
    assert len(list(metrics_dir.glob("counter_*.db"))) >= 2  # one file per runner process
    reader = subprocess.run(
        [sys.executable, "-c", READ_METRICS, namespace, name],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reader.returncode == 0, reader.stderr
    labels = f'namespace="{namespace}",projection="{name}"'
    assert _sample(reader.stdout, f"aether_projection_events_total{{{labels}}}") == head
    assert _sample(reader.stdout, f"aether_projection_lag{{{labels}}}") == 0
    assert _sample(reader.stdout, f'aether_projection_state{{{labels},state="running"}}') == 1
