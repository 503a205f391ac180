"""The metrics as prometheus-client keeps them: many threads of one process, several
processes (multiprocess mode), the default collectors and the cluster figures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid
import warnings
from pathlib import Path

import pytest

from aether_django import metrics

ROOT = Path(__file__).resolve().parents[2]


def sample(text: str, key: str) -> float:
    """The value of the exposition line that starts with ``key`` and a space."""
    (value,) = [line.rpartition(" ")[2] for line in text.splitlines() if line.startswith(key + " ")]
    return float(value)


def test_many_threads_incrementing_at_once_lose_no_update():
    namespace = f"thr-{uuid.uuid4().hex[:8]}"
    threads, rounds = 16, 5_000
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()  # every thread increments at the same time
        for _ in range(rounds):
            metrics.SAVES.inc(namespace=namespace)
            metrics.SAVE_CONFLICTS.inc(2, namespace=namespace)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    text = metrics.render()
    assert sample(text, f'aether_saves_total{{namespace="{namespace}"}}') == threads * rounds
    assert (
        sample(text, f'aether_save_conflicts_total{{namespace="{namespace}"}}')
        == 2 * threads * rounds
    )


WRITER = """
from aether_django import metrics
for _ in range({count}):
    metrics.SAVES.inc(namespace="{namespace}")
    metrics.SAVE_SECONDS.observe(0.003)
"""

READER = """
from aether_django import metrics
assert metrics.MULTIPROCESS
print(metrics.render({metrics.CLUSTER_READABLE: [({}, 1)]}), end="")
"""


def run_python(code: str, directory: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_in_multiprocess_mode_the_exposition_adds_up_every_process(tmp_path):
    namespace = f"mp-{uuid.uuid4().hex[:8]}"
    # Two worker processes write at the same time, then a third serves the scrape.
    writers = [
        run_python(WRITER.format(count=count, namespace=namespace), tmp_path)
        for count in (300, 700)
    ]
    for writer in writers:
        writer.communicate(timeout=60)
        assert writer.returncode == 0
    assert len(list(tmp_path.glob("*.db"))) >= 2  # one file of values per writer
    reader = run_python(READER, tmp_path)
    text, _ = reader.communicate(timeout=60)
    assert reader.returncode == 0
    assert sample(text, f'aether_saves_total{{namespace="{namespace}"}}') == 1000
    assert sample(text, "aether_save_seconds_count") == 1000
    assert sample(text, 'aether_save_seconds_bucket{le="0.0025"}') == 0
    assert sample(text, 'aether_save_seconds_bucket{le="0.005"}') == 1000
    assert sample(text, "aether_cluster_readable") == 1
    # The process figures would be those of whichever worker answered: left out.
    assert "process_cpu_seconds_total" not in text


def test_a_single_process_exposition_has_the_process_and_python_figures():
    text = metrics.render()
    assert sample(text, "process_cpu_seconds_total") > 0
    assert "# TYPE python_gc_collections_total counter" in text
    assert "python_info{" in text


def test_a_cluster_figure_is_only_what_was_read_at_the_scrape():
    text = metrics.render({metrics.CLUSTER_SHARDS: [({"node": "n-1"}, 60), ({"node": "n-2"}, 40)]})
    assert sample(text, 'aether_cluster_shards{node="n-1"}') == 60
    assert sample(text, 'aether_cluster_shards{node="n-2"}') == 40
    # Not read at this scrape: the family is there, with no sample.
    assert "# TYPE aether_cluster_leader gauge" in text and "aether_cluster_leader{" not in text
    with pytest.warns(DeprecationWarning, match="read from the cluster bucket"):
        metrics.NODES.set(3, status="alive")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert "aether_cluster_nodes{" not in metrics.render()
