"""Shared fixtures: every test session gets one real nats-server (see aether_django.testing)."""

import pytest

# The fixtures aether_nats_server, aether_nats_url and aether_nats_server_factory.
pytest_plugins = ["aether_django.testing.pytest_plugin"]


@pytest.fixture(autouse=True, scope="session")
def _session_nats(aether_nats_server):
    """Start the session's nats-server before any test touches a store."""
    return aether_nats_server
