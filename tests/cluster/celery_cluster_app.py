"""The Celery app of the cluster test: two lines make its workers cluster nodes.

With ``AETHER_TEST_PROBE_PERIOD`` set, the project also has a periodic task of
its own, ``tests.probe``, sent every that many seconds to the ``probe`` queue,
which no worker consumes: the beat tests count its messages there.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import django
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

import tests.aggregates.domain  # noqa: E402, F401  (the aggregates the nodes serve)
from aether_django.tasks import setup_cluster  # noqa: E402

app = Celery("cluster-test", broker=os.environ.get("AETHER_TEST_BROKER_URL"))
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
probe_period = os.environ.get("AETHER_TEST_PROBE_PERIOD")
if probe_period:
    app.conf.beat_schedule = {
        "probe": {
            "task": "tests.probe",
            "schedule": float(probe_period),
            "options": {"queue": "probe"},
        }
    }


def report(change: dict[str, Any]) -> None:
    """Print each change of the node's state as a JSON line, as ``aether_node --json`` does."""
    # The real stdout: Celery redirects sys.stdout to its logger in workers.
    assert sys.__stdout__ is not None
    sys.__stdout__.write(json.dumps(change) + "\n")
    sys.__stdout__.flush()


setup_cluster(app, on_change=report)


@app.task(name="tests.cluster.sleep", ignore_result=True)
def sleep(seconds: float, marker: str = "") -> None:
    """A user task that holds its pool slot (the main thread, with the solo pool)."""
    if marker:
        Path(marker).touch()  # says the task has started, for the test to wait on
    time.sleep(seconds)
    if marker:
        Path(f"{marker}.done").touch()
