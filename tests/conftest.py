"""Shared fixtures: every test session gets one real nats-server (see aether_django.testing);
``server`` is a real ASGI server for tests that speak HTTP or WebSocket."""

import threading
import time
from collections.abc import Iterator

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
