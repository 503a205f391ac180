"""pytest fixtures for projects using aether_django (loaded automatically by pytest).

* ``nats_server`` (session): a real nats-server with JetStream on a free port,
  unless ``AETHER_NATS_URL`` or ``settings.AETHER["NATS_URL"]`` names one. While
  it runs, ``AETHER_NATS_URL`` points at it, so child processes find it too.
* ``nats_url``: its URL.
* ``nats_server_factory``: start further servers (restart and cluster tests);
  each is stopped when the test ends.

Importing this module imports neither Django nor nats.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .server import NatsServer


@dataclass
class ExternalNatsServer:
    """A server this plugin did not start (its URL came from the configuration)."""

    url: str


def _configured_url() -> str | None:
    if os.environ.get("AETHER_NATS_URL"):
        return os.environ["AETHER_NATS_URL"]
    try:
        from django.conf import settings

        if settings.configured:
            url = (getattr(settings, "AETHER", None) or {}).get("NATS_URL")
            return str(url) if url else None
    except ImportError:
        pass
    return None


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
def nats_server() -> Iterator[NatsServer | ExternalNatsServer]:
    """A nats-server with JetStream for the whole test session."""
    configured = _configured_url()
    if configured:
        yield ExternalNatsServer(configured)
        return
    server = NatsServer(name="aether-session").start()
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
        server.close()


@pytest.fixture
def nats_url(nats_server: NatsServer | ExternalNatsServer) -> str:
    """URL of the session's nats-server."""
    return nats_server.url


@pytest.fixture
def nats_server_factory() -> Iterator[Callable[..., NatsServer]]:
    """Start extra nats-servers; all are stopped and removed after the test."""
    servers: list[NatsServer] = []

    def start(**kwargs: Any) -> NatsServer:
        server = NatsServer(**kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
