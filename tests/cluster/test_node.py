"""The cluster driver's pace: its own clock (aether_node) or an outside one (Celery beat).

In-process against a real nats-server, with a 0.3 s heartbeat interval; the
``clock`` event stands for beat's tick reaching the worker.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from aether_django.cluster.coordinator import ClusterConfig
from aether_django.runtime import Runtime
from aether_django.sharding.node import LATE_AFTER, ClusterNode

INTERVAL = 0.3


class Recorder(ClusterNode):
    """A ClusterNode that notes when each of its ticks starts (loop time)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ticks: list[float] = []

    async def tick(self) -> dict[str, Any]:
        self.ticks.append(asyncio.get_running_loop().time())
        return await super().tick()


@pytest.fixture
def runtime(aether_nats_url: str) -> Iterator[Runtime]:
    r = Runtime(aether_nats_url)
    yield r
    r.close()


def _node(runtime: Runtime) -> Recorder:
    config = ClusterConfig(
        bucket=f"cluster_{uuid.uuid4().hex[:8]}",
        heartbeat_interval=INTERVAL,
        failure_timeout=1.0,
        num_shards=10,
    )
    return Recorder(runtime, "n1", config)


def _gaps(ticks: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in itertools.pairwise(ticks)]


def test_without_a_clock_the_node_ticks_once_per_interval(runtime: Runtime) -> None:
    node = _node(runtime)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(node.run(stop))
        await asyncio.sleep(10 * INTERVAL + 0.05)
        stop.set()
        await task

    runtime.run(main())
    assert len(node.ticks) == 11, node.ticks
    assert all(0.8 * INTERVAL <= gap <= 1.2 * INTERVAL for gap in _gaps(node.ticks))


def test_with_a_clock_the_node_ticks_on_it_drops_bursts_and_falls_back_when_it_is_late(
    runtime: Runtime,
) -> None:
    node = _node(runtime)
    marks: dict[str, int] = {}

    async def main() -> None:
        stop, clock = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(node.run(stop, clock))
        await asyncio.sleep(0.05)  # the first tick runs at once
        # The clock paces it: one tick per clock tick, whatever the interval says.
        marks["paced"] = len(node.ticks)
        for _ in range(5):
            await asyncio.sleep(0.85 * INTERVAL)
            clock.set()
        await asyncio.sleep(0.05)
        marks["paced"] = len(node.ticks) - marks["paced"]
        # A burst: ten ticks within half an interval are one round.
        await asyncio.sleep(0.7 * INTERVAL)
        before = len(node.ticks)
        for _ in range(10):
            clock.set()
            await asyncio.sleep(0.005)
        marks["burst"] = len(node.ticks) - before
        # Silence: the node ticks on its own, LATE_AFTER intervals apart.
        before = len(node.ticks)
        await asyncio.sleep(4 * LATE_AFTER * INTERVAL + 0.05)
        marks["silent"] = len(node.ticks) - before
        stop.set()
        await task

    runtime.run(main())
    assert marks["paced"] == 5, (marks, _gaps(node.ticks))
    assert marks["burst"] == 1, (marks, _gaps(node.ticks))
    assert marks["silent"] == 4, (marks, _gaps(node.ticks))
    assert node.late_ticks >= 4 and node.skipped_ticks >= 9
    silent = _gaps(node.ticks)[-3:]
    assert all(0.9 * LATE_AFTER * INTERVAL <= gap <= 1.2 * LATE_AFTER * INTERVAL for gap in silent)
