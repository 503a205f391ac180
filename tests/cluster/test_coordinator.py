"""Membership, leader lease with fencing, and the shard map, on a real nats-server (in-process)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from django.test import override_settings

from aether_django.cluster import cluster_config
from aether_django.cluster.coordinator import (
    ClusterConfig,
    Coordinator,
    FencedOutError,
    ShardMap,
)
from aether_django.conf import DEFAULTS
from aether_django.nats.api import ERR_WRONG_LAST_SEQUENCE, JetStreamRefused
from aether_django.runtime import Runtime


@pytest.fixture
def cluster(aether_nats_url):
    """Make coordinators sharing a fresh bucket, each with its own connection."""
    bucket = f"cluster_{uuid.uuid4().hex[:8]}"
    runtimes = []

    def make(node_id: str, **config) -> Coordinator:
        runtime = Runtime(aether_nats_url)
        runtimes.append(runtime)
        settings: dict[str, Any] = {
            "heartbeat_interval": 0.2,
            "failure_timeout": 1.0,
            "num_shards": 100,
        }
        settings.update(config)
        return Coordinator(runtime, node_id, ClusterConfig(bucket=bucket, **settings))

    yield make
    for runtime in runtimes:
        runtime.close()


async def test_heartbeats_make_nodes_alive_and_silence_makes_them_failed(cluster):
    a, b, observer = cluster("node-a"), cluster("node-b"), cluster("observer")
    await a.heartbeat()
    await b.heartbeat()
    assert await observer.alive_nodes() == ["node-a", "node-b"]
    silent_since = time.monotonic()
    for i in range(8):  # only b keeps beating
        await b.heartbeat()
        await asyncio.sleep(0.2)
        if i == 1 and time.monotonic() - silent_since < 0.7:
            # Silent for less than the failure timeout (1 s): still alive.
            assert await observer.alive_nodes() == ["node-a", "node-b"]
    assert await observer.alive_nodes() == ["node-b"]
    statuses = {n.node_id: n.status for n in await observer.nodes()}
    assert statuses == {"node-a": "failed", "node-b": "alive"}


async def test_one_leader_and_everyone_sees_it(cluster):
    nodes = [cluster(f"node-{c}") for c in "abc"]
    leases = await asyncio.gather(*(n.elect_or_renew() for n in nodes))
    holders = {lease.node_id for lease in leases if lease is not None}
    assert len(holders) == 1
    assert sum(n.is_leader for n in nodes) == 1
    again = await asyncio.gather(*(n.elect_or_renew() for n in nodes))
    assert {lease.node_id for lease in again} == holders
    assert len({lease.term for lease in again}) == 1


async def test_the_lease_expires_and_another_node_takes_over(cluster):
    a, b = cluster("node-a"), cluster("node-b")
    first = await a.elect_or_renew()
    assert first is not None and first.node_id == "node-a"
    for _ in range(3):
        await asyncio.sleep(0.2)
        assert (await a.elect_or_renew()).node_id == "node-a"  # renewing keeps it
        assert (await b.elect_or_renew()).node_id == "node-a"
    # a stops renewing; within the TTL plus one interval b holds it, in a later term.
    for _ in range(20):
        await asyncio.sleep(0.2)
        lease = await b.elect_or_renew()
        if lease.node_id == "node-b":
            break
    assert lease.node_id == "node-b" and lease.term > first.term


async def test_a_node_whose_renewals_stop_no_longer_leads_once_its_lease_can_have_expired(
    cluster,
):
    # A node whose rounds fail (NATS away, a stuck process) keeps believing it leads
    # until its next round; leads_now must not, or two nodes "lead" at once.
    a, b = cluster("node-a"), cluster("node-b")
    await a.elect_or_renew()
    assert a.is_leader and a.leads_now
    deadline = time.monotonic() + 5
    while (await b.elect_or_renew()).node_id != "node-b":
        assert time.monotonic() < deadline, "b never took the expired lease"
        await asyncio.sleep(0.1)
    assert b.leads_now
    assert a.is_leader  # the stale belief: its next round (or fenced write) corrects it
    assert not a.leads_now
    await a.elect_or_renew()
    assert not a.is_leader and not a.leads_now


async def test_a_deposed_leaders_shard_map_write_is_refused(cluster):
    a, b = cluster("node-a"), cluster("node-b")
    await a.heartbeat()
    await b.heartbeat()
    await a.elect_or_renew()
    assert (await a.rebalance()) is not None
    a_map = await a.read_shard_map()
    assert a_map is not None and set(a_map.assignment.values()) == {"node-a", "node-b"}

    # a "pauses" past its lease; b becomes leader and writes a new map.
    stale_lease = a.lease
    while (await b.elect_or_renew()).node_id != "node-b":
        await b.heartbeat()
        await asyncio.sleep(0.2)
    await b.heartbeat()
    await b.rebalance()
    b_map = await b.read_shard_map()
    assert b_map.assignment == {s: "node-b" for s in range(100)}  # a's beat expired

    # a wakes up still believing it leads, and writes with its old lease.
    a.lease = stale_lease
    stale = ShardMap(100, {s: "node-a" for s in range(100)}, term=stale_lease.term)
    with pytest.raises(FencedOutError):
        await a.write_shard_map(stale, a_map.revision)
    with pytest.raises(FencedOutError):  # even when it knows the map's latest revision
        a.lease = stale_lease
        await a.write_shard_map(stale, b_map.revision)
    assert (await b.read_shard_map()).assignment == b_map.assignment
    assert (await a.elect_or_renew()).node_id == "node-b"  # and it follows


async def test_rebalancing_is_balanced_and_moves_little(cluster):
    nodes = {c: cluster(f"node-{c}") for c in "abcd"}
    leader = nodes["a"]
    for c in "abc":
        await nodes[c].heartbeat()
    await leader.elect_or_renew()
    await leader.rebalance()
    three = await leader.read_shard_map()
    assert sorted(three.counts().values()) == [33, 33, 34]

    await nodes["d"].heartbeat()
    plan = await leader.rebalance()
    assert plan.moved_count == 25
    four = await leader.read_shard_map()
    assert sorted(four.counts().values()) == [25, 25, 25, 25] and four.moved == 25
    assert all(four.assignment[s] == "node-d" for s in plan.moved)


async def test_leaving_releases_the_lease_at_once(cluster):
    a, b = cluster("node-a"), cluster("node-b")
    await a.heartbeat()
    await a.elect_or_renew()
    await a.leave()
    assert await b.alive_nodes() == []
    lease = await b.elect_or_renew()
    assert lease.node_id == "node-b"


def test_the_defaults_are_one_second_heartbeats_three_second_failures_and_1024_shards():
    expected = (1.0, 3.0, 1024, "aether_cluster")
    assert (
        DEFAULTS["HEARTBEAT_INTERVAL"],
        DEFAULTS["FAILURE_TIMEOUT"],
        DEFAULTS["NUM_SHARDS"],
        DEFAULTS["CLUSTER_BUCKET"],
    ) == expected
    default = ClusterConfig()
    assert (
        default.heartbeat_interval,
        default.failure_timeout,
        default.num_shards,
        default.bucket,
    ) == expected
    with override_settings(AETHER={}):  # a project that sets none of them
        configured = cluster_config()
    assert configured == default


async def test_a_lease_renewal_with_an_out_of_date_revision_is_refused(cluster):
    a, b = cluster("node-a"), cluster("node-b")
    held = await a.elect_or_renew()
    assert held is not None and held.node_id == "node-a"
    # Behind a's back the lease moves on (as when it expired and b took it).
    await b._put("leader", b._lease_doc(None, time.time()), expected=held.revision, ttl=1.0)
    # a's renewal, still expecting the revision it knew, is refused by the server ...
    with pytest.raises(JetStreamRefused) as refused:
        await a._put("leader", a._lease_doc(held.term, held.since), expected=held.revision)
    assert refused.value.code == ERR_WRONG_LAST_SEQUENCE
    assert (await b.read_lease()).node_id == "node-b"
    # ... and renewing through the coordinator leaves a following b, not leading.
    assert (await a.elect_or_renew()).node_id == "node-b"
    assert not a.is_leader
