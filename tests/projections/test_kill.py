"""Exactly-once effect across crashes: a runner process SIGKILLed mid-batch, again and again,
while events are saved; after a restart the read model is the one a fresh run makes. Two
runner processes at once, and what their metrics add up to.

Each test runs on a SQLite file the runner processes share with the test (WAL mode),
and on the suite's real PostgreSQL (the "pg" alias; the processes get its settings in
AETHER_TEST_PG_DATABASE)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from aether_django.store import get_event_store

from .conftest import save_ticks

ROOT = Path(__file__).resolve().parents[2]
MODULE = [sys.executable, "-m", "tests.projections.runnerproc"]


@dataclass
class Target:
    """Where the runner processes keep the projection: their environment, and a query
    the test runs there (SQL with %s parameters)."""

    env: dict[str, str]
    rows: Callable[..., list[tuple]]


def sqlite_target(tmp_path: Path, env: dict[str, str]) -> Target:
    """A migrated SQLite file in ``tmp_path`` that the runner processes share (``env``
    is pointed at it)."""
    db = tmp_path / "db.sqlite3"
    env["AETHER_TEST_DATABASE"] = str(db)
    subprocess.run([*MODULE, "migrate"], cwd=ROOT, env=env, check=True)

    def sqlite_rows(query: str, *args: object) -> list[tuple]:
        with sqlite3.connect(db, timeout=20) as conn:
            return conn.execute(query.replace("%s", "?"), args).fetchall()

    return Target(env, sqlite_rows)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param(
            "pg",
            id="pg",
            marks=pytest.mark.django_db(databases=["default", "pg"], transaction=True),
        ),
    ]
)
def target(request, tmp_path, aether_nats_url) -> Iterator[Target]:
    env = dict(os.environ, AETHER_NATS_URL=aether_nats_url, PYTHONUNBUFFERED="1")
    if request.param == "sqlite":
        yield sqlite_target(tmp_path, env)
        return
    # pytest-django has made and migrated the test database the processes use.
    env["AETHER_TEST_PROJECTION_DB"] = "pg"

    def pg_rows(query: str, *args: Any) -> list[tuple]:
        with connections["pg"].cursor() as cursor:
            cursor.execute(query, list(args))
            return cursor.fetchall()

    yield Target(env, pg_rows)


def _wait_for_checkpoint(target: Target, name: str, namespace: str, head: int, log: Path) -> None:
    """Until the runners' checkpoint of ``namespace`` reaches ``head`` (60 s at most)."""
    deadline = time.monotonic() + 60
    while True:
        at = target.rows(
            "SELECT sequence FROM aether_django_projectioncheckpoint "
            "WHERE projection = %s AND namespace = %s",
            name,
            namespace,
        )
        if at and at[0][0] >= head:
            return
        assert time.monotonic() < deadline, f"stuck at {at} of {head}: {log.read_text()}"
        time.sleep(0.1)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _applied(target: Target, name: str) -> list[int]:
    """The stream sequences the test projection's handler recorded, in order."""
    return [
        seq
        for (seq,) in target.rows(
            "SELECT sequence FROM projection_tests_applied WHERE projection = %s ORDER BY sequence",
            name,
        )
    ]


def _race_live_events(log: Path, name: str, namespace: str) -> None:
    """Once both runner processes run, save live events in small steps: each reaches
    both runners at once, so they race for each batch."""
    deadline = time.monotonic() + 30
    while log.read_text().count(f"running {name}") < 2:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    for version in range(1, 251, 5):
        save_ticks(namespace, 5, actor="live", first_version=version)
        time.sleep(0.01)


def _two_racing_runners(
    tmp_path: Path, target: Target, env: dict[str, str], namespace: str, name: str
) -> int:
    """Run two runner processes of ``name`` while live events race to both, until the
    checkpoint reaches the head; stop them (both must exit 0). Returns the head."""
    log = tmp_path / "runners.log"
    with log.open("ab") as out:
        procs = [
            subprocess.Popen(
                [*MODULE, "run", namespace, name], cwd=ROOT, env=env, stdout=out, stderr=out
            )
            for _ in range(2)
        ]
        try:
            _race_live_events(log, name, namespace)
            head = get_event_store(namespace).get_info().last_sequence
            _wait_for_checkpoint(target, name, namespace, head, log)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGINT)
            codes = [proc.wait(30) for proc in procs]
    assert codes == [0, 0], log.read_text()
    return head


@pytest.mark.slow
def test_sigkill_mid_batch_while_events_are_saved(tmp_path, unique, target):
    namespace = unique("proj-kill")
    name = unique("kill")
    marks = tmp_path / "handled"
    env = dict(target.env, BATCH_SIZE="20", HANDLER_MARKS=str(marks))
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
                    [*MODULE, "run", namespace, name], cwd=ROOT, env=env, stdout=out, stderr=out
                )
                time.sleep(rng.uniform(1.0, 2.0))
                # Right after a handler ran: inside a batch, before its commit.
                handled = _size(marks)
                while _size(marks) == handled and proc.poll() is None:
                    time.sleep(0.001)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
    finally:
        stop.set()
        thread.join()
    head = get_event_store(namespace).get_info().last_sequence
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*MODULE, "run", namespace, name], cwd=ROOT, env=env, stdout=out, stderr=out
        )
        try:
            _wait_for_checkpoint(target, name, namespace, head, log)
        finally:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
            assert proc.wait(30) == 0, log.read_text()
    applied = _applied(target, name)
    # Every event once: what a fresh run (or a rebuild) of this ledger writes.
    assert kills == 6
    assert applied == list(range(1, head + 1))
    assert "stopped" in log.read_text()
    # The kills did cut batches: the handlers ran more often than events were applied
    # (the events of a killed batch ran again after the restart).
    assert _size(marks) > len(applied)


@pytest.mark.slow
def test_two_runner_processes_of_one_projection_leave_the_read_model_exact(
    tmp_path, unique, target
):
    namespace = unique("proj-procs")
    name = unique("procs")
    env = dict(target.env, BATCH_SIZE="10")
    save_ticks(namespace, 150, actor="history")
    head = _two_racing_runners(tmp_path, target, env, namespace, name)
    applied = _applied(target, name)
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
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = dict(
        os.environ,
        AETHER_NATS_URL=aether_nats_url,
        BATCH_SIZE="10",
        PYTHONUNBUFFERED="1",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    target = sqlite_target(tmp_path, env)
    save_ticks(namespace, 100, actor="history")
    log = tmp_path / "runners.log"
    head = _two_racing_runners(tmp_path, target, env, namespace, name)
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
    # They did race: one lost a compare-and-set and backed off (and rolled back).
    assert "backing off" in log.read_text()
