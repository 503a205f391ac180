"""A cluster node (``manage.py aether_node``) running ledger projections, on a SQLite file.

    AETHER_TEST_DATABASE=/tmp/db.sqlite3 AETHER_TEST_SOURCE=ns AETHER_TEST_PROJECTIONS=a,b \\
        python -m tests.projections.nodeproc NODE_ID
        python -m tests.projections.nodeproc --manage aether_projections status --json

Declares one ledger projection (tests.projections.app.projections.ledger) of
AETHER_TEST_SOURCE per name in AETHER_TEST_PROJECTIONS (in the database alias
AETHER_TEST_PROJECTION_DATABASE, default "default"), then runs the node, which
prints each change of its state as a JSON line. The file is prepared by
``python -m tests.projections.runnerproc migrate``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from django.conf import settings

# Before setup, so that no connection has read the in-memory default yet.
settings.DATABASES["default"]["NAME"] = os.environ["AETHER_TEST_DATABASE"]
# Several processes on one file: wait for a lock rather than fail at once.
settings.DATABASES["default"]["OPTIONS"] = {"timeout": 20}  # type: ignore[assignment]
# These nodes are the ones that run projections (the suite's settings turn it off).
settings.AETHER["PROJECTIONS_IN_NODES"] = True

import django  # noqa: E402 (after the settings change)

django.setup()

from django.core.management import call_command  # noqa: E402

from tests.projections.app.projections import ledger  # noqa: E402


def declare() -> None:
    """The ledger projections the environment names (the Celery test app uses it too)."""
    source = os.environ["AETHER_TEST_SOURCE"]
    # "pg": the test's PostgreSQL (AETHER_TEST_PG_DATABASE), for checkpoints and rows.
    database = os.environ.get("AETHER_TEST_PROJECTION_DATABASE", "default")
    for name in os.environ["AETHER_TEST_PROJECTIONS"].split(","):
        ledger(source, name, batch_size=int(os.environ.get("BATCH_SIZE", "20")), database=database)


if __name__ == "__main__":
    import logging

    logging.basicConfig(
        level=os.environ.get("AETHER_TEST_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    declare()
    if sys.argv[1] == "--manage":  # another command with the same projections declared
        call_command(*sys.argv[2:])
    else:
        call_command("aether_node", "--node-id", sys.argv[1], "--json")
