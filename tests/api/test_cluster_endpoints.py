"""cluster/ and cluster/shards/ while two real nodes run.

Each node is ``manage.py aether_node`` in a process of its own (as in tests/cluster),
on a cluster bucket of this test's own, which the API is pointed at. Once the nodes
have elected a leader, spread the shards and each reported the shards it serves,
the two endpoints must describe exactly that.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from aether_django.cluster import cluster_config

from ..cluster.nodes import NodeProcess, wait_until

pytestmark = pytest.mark.slow

API = "/api/aether"
NODES = ("api-node-a", "api-node-b")
#: Starting two Django processes and settling normally takes a few seconds; only a
#: cluster that never settles reaches this.
SETTLE_TIMEOUT = 90.0


@pytest.fixture
def running_nodes(aether_nats_server):
    """Two node processes sharing a fresh bucket; the API reads the same bucket."""
    bucket = f"cluster_{uuid.uuid4().hex[:8]}"
    nodes = [NodeProcess(name, bucket) for name in NODES]
    try:
        with override_settings(AETHER={**settings.AETHER, "CLUSTER_BUCKET": bucket}):
            yield nodes
    finally:
        for node in nodes:
            node.stop()


def test_cluster_and_shards_describe_the_running_nodes(callers, running_nodes):
    staff = callers["staff"]

    def settled() -> tuple[dict[str, Any], dict[str, Any], float] | None:
        """Both answers, once both nodes are alive, the map spreads over them, and each
        node's heartbeat reports the shards the map gives it (under one term)."""
        cluster = staff.get(f"{API}/cluster/")
        shards = staff.get(f"{API}/cluster/shards/")
        answered_at = time.time()
        assert cluster.status_code == shards.status_code == 200
        nodes = {n["node_id"]: n for n in cluster.data["nodes"]}
        if sorted(nodes) != sorted(NODES) or shards.data["term"] != cluster.data["term"]:
            return None
        if any(n["status"] != "alive" for n in nodes.values()):
            return None
        if shards.data["counts"] != {name: n["shard_count"] for name, n in nodes.items()}:
            return None
        return cluster.json(), shards.json(), answered_at

    cluster, shards, answered_at = wait_until(settled, SETTLE_TIMEOUT, interval=0.5)
    config = cluster_config()

    assert cluster["leader"] in NODES
    assert isinstance(cluster["term"], int) and cluster["term"] >= 1
    assert cluster["num_shards"] == shards["num_shards"] == config.num_shards == 100
    for node in cluster["nodes"]:
        assert set(node) == {"node_id", "status", "last_heartbeat", "shard_count"}
        assert node["status"] == "alive"
        # Alive means heard from within the failure timeout (1 s for the time the
        # heartbeat took to be stored after it was stamped).
        assert answered_at - config.failure_timeout - 1.0 <= node["last_heartbeat"]
        assert node["last_heartbeat"] <= answered_at
        assert node["shard_count"] == shards["counts"][node["node_id"]]

    # Every shard is mapped to one of the running nodes, and the counts agree with
    # the map and are balanced.
    assert set(shards["shards"]) == {str(shard) for shard in range(config.num_shards)}
    assert set(shards["shards"].values()) == set(NODES)
    assert Counter(shards["shards"].values()) == shards["counts"]
    assert sorted(shards["counts"].values()) == [50, 50]
    assert shards["term"] == cluster["term"]
