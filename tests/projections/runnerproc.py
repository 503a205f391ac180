"""A projection runner in a process of its own, on the database the test shares with it.

    AETHER_TEST_DATABASE=/tmp/db.sqlite3 python -m tests.projections.runnerproc migrate
    AETHER_TEST_DATABASE=/tmp/db.sqlite3 python -m tests.projections.runnerproc run SOURCE NAME
    AETHER_TEST_PROJECTION_DB=pg python -m tests.projections.runnerproc run SOURCE NAME

``migrate`` prepares the SQLite file (the tables; WAL mode comes from the settings);
``run`` declares a ledger projection of SOURCE called NAME
(tests.projections.app.projections.ledger) and runs ``manage.py aether_projections
run NAME`` until it is killed or stopped. With
AETHER_TEST_PROJECTION_DB=pg the projection's database is the test's PostgreSQL (its
settings come in AETHER_TEST_PG_DATABASE, see tests/settings.py; pytest-django has
migrated it) instead of the SQLite file.
"""

from __future__ import annotations

import logging
import os
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from django.conf import settings

DATABASE = os.environ.get("AETHER_TEST_PROJECTION_DB", "default")

if DATABASE == "default":
    # Before setup, so that no connection has read the in-memory default yet.
    settings.DATABASES["default"]["NAME"] = os.environ["AETHER_TEST_DATABASE"]
    # The settings docs/projections.md recommends for SQLite: WAL mode (readers and
    # the writer at once), a busy timeout (wait for a lock rather than fail at once),
    # and transactions that take the write lock when they begin.
    settings.DATABASES["default"]["OPTIONS"] = {  # type: ignore[assignment]
        "init_command": "PRAGMA journal_mode=WAL",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }

import django  # noqa: E402 (after the settings change)

django.setup()

# The runner's notes (a lost compare-and-set, a retry) go to the process's log.
logging.basicConfig(level=logging.WARNING, format="%(process)d %(name)s: %(message)s")
logging.getLogger("aether_django.projections").setLevel(logging.INFO)

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from aether_django.events import Event  # noqa: E402
from aether_django.projections import ProjectionContext, on  # noqa: E402
from tests.projections.app.projections import LedgerBase, ledger  # noqa: E402


class MarkingLedger(LedgerBase):
    """A ledger whose handler also appends a byte to the HANDLER_MARKS file (outside the
    transaction, so rolled-back events stay counted) and then takes 2 ms: a batch of 20
    is open for 40 ms, and a kill right after a mark lands inside a batch."""

    class Meta:
        abstract = True

    @on("Tick")
    def tick(self, event: Event, context: ProjectionContext) -> None:
        super().tick(event, context)
        os.write(MARKS, b".")
        time.sleep(0.002)


if os.environ.get("HANDLER_MARKS"):
    MARKS = os.open(os.environ["HANDLER_MARKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)

if __name__ == "__main__":
    if sys.argv[1] == "migrate":
        call_command("migrate", verbosity=0, interactive=False, run_syncdb=True)
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            assert cursor.fetchone()[0] == "wal"
    else:
        source, name = sys.argv[2], sys.argv[3]
        ledger(
            source,
            name,
            base=MarkingLedger if os.environ.get("HANDLER_MARKS") else LedgerBase,
            batch_size=int(os.environ.get("BATCH_SIZE", "20")),
            database=DATABASE,
        )
        call_command("aether_projections", "run", name, "--interval", "0.2")
