"""A Django project served by a server process of its own (daphne or uvicorn).

``prepared_project_env`` makes the environment such a process needs for the test project
(``tests.api.asgi``: a SQLite file the test can share, the NATS URL) and prepares its
database with a superuser; ``serving`` runs the server until the test is done.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether_django.testing.processes import ProcessError, served

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


@contextlib.contextmanager
def serving(
    command: list[str],
    env: dict[str, str],
    log: Path,
    ready_url: str,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (a server, output to ``log``) until ``ready_url`` answers 200;
    stop it when the block ends. A server that does not come up fails the test."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(
                served(
                    command,
                    ready_url=ready_url,
                    log=log,
                    env=env,
                    cwd=ROOT,
                    headers=headers,
                    timeout=timeout,
                    what=command[2],
                )
            )
        except ProcessError as exc:
            pytest.fail(str(exc))
        yield server
