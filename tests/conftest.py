"""Shared fixtures: every test session gets one real nats-server (see aether_django.testing);
``server`` is a real ASGI server for tests that speak HTTP or WebSocket; the "default"
test database is a SQLite file set up as docs/projections.md recommends."""

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from aether_django.testing import find_free_port

# The fixtures aether_nats_server, aether_nats_url and aether_nats_server_factory, and
# aether_postgres and aether_postgres_factory.
pytest_plugins = ["aether_django.testing.pytest_plugin"]


@pytest.fixture(autouse=True, scope="session")
def _session_nats(aether_nats_server):
    """Start the session's nats-server before any test touches a store."""
    return aether_nats_server


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, request):
    """The "pg" alias on the session's PostgreSQL, started only when a collected test uses
    it (pytest-django creates its test database next, with the migrations applied).
    Child processes find that database in AETHER_TEST_PG_DATABASE (tests/settings.py)."""
    # Imported here: a conftest importing the plugin before pytest registers it would
    # keep pytest from rewriting the plugin's asserts.
    from aether_django.testing.pytest_plugin import configure_postgres_alias

    configure_postgres_alias(request, "pg", export="AETHER_TEST_PG_DATABASE")
    use_sqlite_file(request, "default")


#: The production settings docs/projections.md recommends for SQLite, on the test
#: database too: WAL (readers see the last commit while a runner's thread writes), a
#: busy timeout (a writer waits for the lock instead of failing), and transactions that
#: take the write lock when they begin (so a read never has to become a write while
#: another connection writes, which fails at once whatever the timeout).
SQLITE_OPTIONS: dict[str, Any] = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}


def use_sqlite_file(request: pytest.FixtureRequest, alias: str) -> None:
    """Make ``alias``'s test database a SQLite file with :data:`SQLITE_OPTIONS`, in a
    directory of this session's own (in memory, /dev/shm, where there is one).

    Django's default for an in-memory ``NAME`` is an in-memory test database with a
    shared cache, in which a statement that meets a table another connection (a
    runner's thread, a server's thread) is using fails at once with "database table is
    locked": no busy timeout applies there. Only this process's entry changes: the
    child processes of the tests read tests/settings.py afresh and keep their own
    in-memory database (or the file they are given), as before.
    """
    from django.conf import settings

    shm = "/dev/shm"
    directory = tempfile.mkdtemp(
        prefix="aether-tests-", dir=shm if os.access(shm, os.W_OK) else None
    )
    request.addfinalizer(lambda: shutil.rmtree(directory, ignore_errors=True))
    # In place: Django's connection handler holds this very dict, and pytest-django
    # creates the test database (then destroys the file) from its TEST NAME.
    entry: dict[str, Any] = settings.DATABASES[alias]
    entry.setdefault("TEST", {})["NAME"] = os.path.join(directory, f"{alias}.sqlite3")
    entry["OPTIONS"] = {**entry.get("OPTIONS", {}), **SQLITE_OPTIONS}


@pytest.fixture
def server() -> Iterator[str]:
    """uvicorn serving tests.asgi in a thread of this process, so it shares the test
    database and settings; yields its ``host:port``."""
    import uvicorn

    from tests.asgi import application

    port = find_free_port()
    config = uvicorn.Config(
        application, host="127.0.0.1", port=port, log_level="warning", ws="websockets"
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    running.should_exit = True
    thread.join(10)
