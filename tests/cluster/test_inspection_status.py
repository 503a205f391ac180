"""The cluster status every surface reads (metrics, API, admin): its reads of the bucket
are not one snapshot, so it must read them in an order that never shows a leader's
shard map without that leader's lease."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from aether_django import inspection
from aether_django.cluster import cluster_config
from aether_django.cluster.coordinator import Coordinator
from aether_django.runtime import get_runtime


def test_a_status_never_shows_a_new_leaders_map_without_its_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between the status's first and second read, the leader leaves and another node
    takes the lease and writes its map: the status may show the old map or the new
    lease, never the new map with the old (or no) lease."""
    bucket = f"insp_{uuid.uuid4().hex[:8]}"
    with override_settings(AETHER={**settings.AETHER, "CLUSTER_BUCKET": bucket}):
        runtime = get_runtime()
        config = cluster_config()
        a = Coordinator(runtime, "node-a", config)
        b = Coordinator(runtime, "node-b", config)
        runtime.run(a.tick())
        first = runtime.run(a.read_shard_map())
        assert first is not None and set(first.counts()) == {"node-a"}

        async def hand_over() -> None:
            await a.leave()
            await b.tick()

        handed_over: list[bool] = []

        class Racing(Coordinator):
            """The status's coordinator: after its first read, the leadership moves."""

            async def _after_read(self, value: Any) -> Any:
                if not handed_over:
                    handed_over.append(True)
                    await hand_over()
                return value

            async def read_lease(self) -> Any:
                return await self._after_read(await super().read_lease())

            async def read_shard_map(self) -> Any:
                return await self._after_read(await super().read_shard_map())

        monkeypatch.setattr(inspection, "Coordinator", Racing)
        status = inspection.cluster_status()
        assert handed_over
        shard_map, lease = status.shard_map, status.lease
        assert shard_map is not None
        assert lease is not None, f"the map of term {shard_map.term} shown with no lease"
        assert lease.term >= shard_map.term, (lease, shard_map.term)
        # And the hand-over did happen: the next status shows node-b with its map.
        monkeypatch.setattr(inspection, "Coordinator", Coordinator)
        after = inspection.cluster_status()
        assert after.lease is not None and after.lease.node_id == "node-b"
        assert after.shard_map is not None and set(after.shard_map.counts()) == {"node-b"}
