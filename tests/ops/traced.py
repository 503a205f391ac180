"""The aggregate of the tracing tests, importable by a node process (``--import``)."""

from __future__ import annotations

from aether_django.aggregates import Aggregate, apply, command
from aether_django.events import Event


class Tally(Aggregate):
    """Counts ticks; each tick is one ``Tick`` event."""

    count: int = 0

    class Meta:
        namespace = "test-traced"

    @command
    def tick(self, by: str = "") -> None:
        self.record("Tick", by=by)

    @apply("Tick")
    def _ticked(self, event: Event) -> None:
        self.count += 1
