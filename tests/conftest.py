"""Shared fixtures: every test session gets one real nats-server (see aether_django.testing)."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _session_nats(nats_server):
    """Start the session's nats-server before any test touches a store."""
    return nats_server
