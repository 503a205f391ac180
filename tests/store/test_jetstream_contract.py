"""The store contract, run against JetStreamEventStore on a real nats-server."""

import pytest

from aether_django.conf import store_config
from aether_django.runtime import get_runtime
from aether_django.store.jetstream import JetStreamEventStore
from aether_django.testing.contract import EventStoreContract


class TestJetStreamEventStore(EventStoreContract):
    @pytest.fixture
    def make_store(self, aether_nats_server):
        def make(namespace):
            return JetStreamEventStore(namespace, runtime=get_runtime(), config=store_config())

        return make
