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
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

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
    stop it when the block ends."""
    with log.open("wb") as output:
        server = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                tail = log.read_text()[-3000:]
                pytest.fail(f"{command[2]} exited ({server.returncode}):\n{tail}")
            try:
                request = urllib.request.Request(ready_url, headers=headers or {})
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        break
            except (OSError, ValueError):  # not listening yet, or not answering 200 yet
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{command[2]} did not answer {ready_url} within {timeout:.0f} s")
            time.sleep(0.1)
        yield server
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
