"""The event bus contract, run against both backends: the in-process bus fed by the
in-memory store, and the NATS bus on a real nats-server fed by the JetStream store."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from aether_django.bus.base import BaseEventBus
from aether_django.bus.local import LocalEventBus
from aether_django.bus.nats import NATSEventBus
from aether_django.events import Event
from aether_django.runtime import Runtime
from aether_django.store.jetstream import JetStreamEventStore
from aether_django.store.memory import InMemoryEventStore
from aether_django.testing.contract import EventBusContract

_names = itertools.count()


class TestLocalEventBus(EventBusContract):
    @pytest.fixture
    def make_bus(self) -> Any:
        return lambda **options: LocalEventBus(**options)

    @pytest.fixture
    def make_bus_store(self) -> Any:
        def make(bus: BaseEventBus, namespace: str) -> InMemoryEventStore:
            def publish(ns: str, events: Sequence[Event]) -> None:
                for event in events:
                    bus.publish(ns, event)

            return InMemoryEventStore(namespace, publish=publish)

        return make


class TestNATSEventBus(EventBusContract):
    @pytest.fixture
    def runtime(self, aether_nats_url: str) -> Iterator[Runtime]:
        runtime = Runtime(aether_nats_url)
        yield runtime
        runtime.close()

    @pytest.fixture
    def make_bus(self, runtime: Runtime) -> Any:
        return lambda **options: NATSEventBus(
            runtime=runtime, node_id=f"contract-{next(_names)}", timeout=5, **options
        )

    @pytest.fixture
    def make_bus_store(self, runtime: Runtime) -> Any:
        return lambda bus, namespace: JetStreamEventStore(namespace, runtime=runtime)
