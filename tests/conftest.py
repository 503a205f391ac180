"""Shared fixtures: every test session gets one real nats-server (see aether_django.testing)."""

import pytest

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
