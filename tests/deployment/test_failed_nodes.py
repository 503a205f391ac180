"""What docs/deployment.md says about the ids of stopped nodes, on a real nats-server.

A node id stays in the cluster bucket as ``failed`` once the node stops, owns no
shard, and is removed by a KV purge of its ``members.<id>`` key, which any NATS KV
client can send (``nats kv purge aether_cluster members.<id>``; here nats-py's).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from aether_django.cluster.coordinator import ClusterConfig, Coordinator
from aether_django.runtime import Runtime


@pytest.fixture
def cluster(aether_nats_url: str) -> Iterator[Callable[[str], Coordinator]]:
    """Make coordinators sharing a fresh bucket, each with its own connection."""
    bucket = f"cluster_{uuid.uuid4().hex[:8]}"
    runtimes: list[Runtime] = []

    def make(node_id: str) -> Coordinator:
        runtime = Runtime(aether_nats_url)
        runtimes.append(runtime)
        config = ClusterConfig(
            bucket=bucket, heartbeat_interval=0.2, failure_timeout=1.0, num_shards=100
        )
        return Coordinator(runtime, node_id, config)

    yield make
    for runtime in runtimes:
        runtime.close()


async def statuses(coordinator: Coordinator) -> dict[str, str]:
    return {node.node_id: node.status for node in await coordinator.nodes()}


async def test_a_stopped_nodes_id_stays_failed_owns_no_shard_and_a_kv_purge_removes_it(
    cluster: Callable[[str], Coordinator],
) -> None:
    # A worker restarts under a new default id (host name plus a random suffix).
    before, after = cluster("worker-1-aaaa"), cluster("worker-1-bbbb")
    await before.heartbeat()
    await before.leave()
    await after.heartbeat()
    assert await statuses(after) == {"worker-1-aaaa": "failed", "worker-1-bbbb": "alive"}

    # The leader plans over alive nodes only: the old id gets no shard.
    assert await after.elect_or_renew() is not None
    await after.rebalance()
    shard_map = await after.read_shard_map()
    assert shard_map is not None
    assert shard_map.counts() == {"worker-1-bbbb": 100}

    # The purge the deployment page gives, through a plain KV client.
    nc = await after.runtime.connection()
    bucket = await nc.jetstream().key_value(after.config.bucket)
    await bucket.purge("members.worker-1-aaaa")
    assert await statuses(after) == {"worker-1-bbbb": "alive"}

    # Purging the id of a node that still runs costs nothing: its next heartbeat
    # writes it again.
    await bucket.purge("members.worker-1-bbbb")
    await after.heartbeat()
    assert await statuses(after) == {"worker-1-bbbb": "alive"}
