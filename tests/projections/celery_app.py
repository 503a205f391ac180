"""A Celery app whose workers are cluster nodes running ledger projections (see nodeproc).

    AETHER_TEST_DATABASE=... AETHER_TEST_SOURCE=... AETHER_TEST_PROJECTIONS=a,b \\
    AETHER_TEST_BROKER_URL=redis://... AETHER_NODE_ID=w1 \\
        celery -A tests.projections.celery_app worker

The worker prints each change of its node's state as a JSON line on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from celery import Celery

from tests.projections.nodeproc import declare  # configures the database, sets Django up

declare()

from aether_django.tasks import setup_cluster  # noqa: E402 (after Django's setup)

app = Celery("projection-placement-test", broker=os.environ.get("AETHER_TEST_BROKER_URL"))
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


def report(change: dict[str, Any]) -> None:
    """Print each change of the node's state as a JSON line, as ``aether_node --json`` does."""
    # The real stdout: Celery redirects sys.stdout to its logger in workers.
    assert sys.__stdout__ is not None
    sys.__stdout__.write(json.dumps(change) + "\n")
    sys.__stdout__.flush()


setup_cluster(app, on_change=report)
