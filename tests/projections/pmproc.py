"""A process manager's runner in a process of its own, on the database the test shares with it.

    AETHER_TEST_DATABASE=/tmp/db.sqlite3 python -m tests.projections.pmproc SOURCE NAME TARGET
    AETHER_TEST_PROJECTION_DB=pg python -m tests.projections.pmproc SOURCE NAME TARGET

Declares a relay called NAME (tests.projections.app.process.relay) from SOURCE to a
Counter aggregate of the namespace TARGET and runs ``manage.py aether_projections run
NAME`` until it is stopped, or kills itself: RELAY_KILL_AFTER=n sends it SIGKILL right
after its n-th applied command, before that batch's checkpoint commits. RELAY_MARKS
names a file that gets "a" per applied command and "r" per command the target actor
already held. The database settings are tests.projections.runnerproc's (imported first).
"""

from __future__ import annotations

import os
import sys

from django.core.management import call_command

from tests.projections import runnerproc  # Django on the test's database
from tests.projections.app.process import configure_from_environment, counter, relay

if __name__ == "__main__":
    source, name, target = sys.argv[1:4]
    configure_from_environment()
    relay(
        source,
        name,
        counter(target),
        batch_size=int(os.environ.get("BATCH_SIZE", "10")),
        database=runnerproc.DATABASE,
    )
    call_command("aether_projections", "run", name, "--interval", "0.2")
