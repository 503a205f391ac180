"""The store contract, run against InMemoryEventStore."""

import pytest

from aether_django.store import InMemoryEventStore
from aether_django.testing.contract import EventStoreContract


class TestInMemoryEventStore(EventStoreContract):
    @pytest.fixture
    def make_store(self):
        return InMemoryEventStore
