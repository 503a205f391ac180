"""The test project prepared for a server process of its own (daphne or uvicorn).

``tests.api.asgi`` serves it; this makes the environment such a process needs (a SQLite
file the test can share, the NATS URL) and prepares the database with a superuser.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def prepared_project_env(tmp_path: Path, nats_url: str, user: str, password: str) -> dict[str, str]:
    """The environment of a server process for the test project, its database migrated
    and ``user`` created as a superuser."""
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="tests.settings",
        AETHER_TEST_DATABASE=str(tmp_path / "db.sqlite3"),
        AETHER_NATS_URL=nats_url,
        PYTHONUNBUFFERED="1",
    )
    subprocess.run(
        [sys.executable, "-m", "tests.api.asgi", user, password], cwd=ROOT, env=env, check=True
    )
    return env
