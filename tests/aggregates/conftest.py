"""Fixtures of the aggregate tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aether_django import aggregates


@pytest.fixture
def scratch_registry() -> Iterator[None]:
    """Forget the aggregate classes a test declares, so the checks of later tests pass."""
    saved = dict(aggregates._registry)
    yield
    aggregates._registry.clear()
    aggregates._registry.update(saved)
