"""The seed's success conditions for capabilities 5, 6 and 7, with nodes as OS processes.

Each node is ``manage.py aether_node`` (heartbeat 1 s, failure timeout 3 s, 100 shards).
The test process watches the cluster through a Coordinator of its own and sends
commands to actors through the routing layer. Names follow
shared/seed/aether-capabilities.md.
"""

from __future__ import annotations

import time
import uuid

import pytest

from aether_django.cluster import send_command, shard_of
from aether_django.cluster.coordinator import ClusterConfig, Coordinator
from aether_django.runtime import Runtime

from ..aggregates.domain import Order
from .nodes import NodeProcess, wait_until

pytestmark = pytest.mark.slow

HEARTBEAT = 1.0
FAILURE_TIMEOUT = 3.0


class Cluster:
    """Node processes sharing one fresh bucket, and an observer in the test process."""

    def __init__(self, nats_url: str) -> None:
        self.bucket = f"cluster_{uuid.uuid4().hex[:8]}"
        self.runtime = Runtime(nats_url)
        self.observer = Coordinator(
            self.runtime, "observer", ClusterConfig(bucket=self.bucket, num_shards=100)
        )
        self.nodes: dict[str, NodeProcess] = {}

    def start(self, *names: str) -> None:
        for name in names:
            self.nodes[name] = NodeProcess(name, self.bucket)

    def run(self, coro):
        return self.runtime.run(coro)

    def lease(self):
        return self.run(self.observer.read_lease())

    def shard_map(self):
        return self.run(self.observer.read_shard_map())

    def alive(self):
        return self.run(self.observer.alive_nodes())

    def settled(self, names) -> object:
        """The map once it spreads over exactly ``names`` and every node serves its part."""
        shard_map = self.shard_map()
        if shard_map is None or set(shard_map.counts()) != set(names):
            return None
        for name in names:
            if self.nodes[name].last.get("map_revision") != shard_map.revision:
                return None
        return shard_map

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.runtime.close()


@pytest.fixture
def cluster(nats_url, monkeypatch):
    c = Cluster(nats_url)
    monkeypatch.setenv("AETHER_TEST_CLUSTER_BUCKET", c.bucket)
    yield c
    c.close()


@pytest.fixture
def three(cluster):
    cluster.start("node-a", "node-b", "node-c")
    wait_until(lambda: cluster.settled(["node-a", "node-b", "node-c"]), 20)
    return cluster


# --- Capability 5: coordinate cluster topology ---------------------------------------


def test_c5_1_three_nodes_start_and_one_is_elected_leader(cluster):
    started = time.monotonic()
    cluster.start("node-a", "node-b", "node-c")
    lease = wait_until(cluster.lease, 15)
    elected_after = time.monotonic() - started
    assert lease.node_id in {"node-a", "node-b", "node-c"}
    print(f"\nleader {lease.node_id} elected {elected_after:.1f}s after start (incl. start-up)")


def test_c5_2_the_lease_renews_and_all_nodes_see_the_same_leader(three):
    first = three.lease()
    time.sleep(3 * HEARTBEAT)
    later = three.lease()
    assert later.node_id == first.node_id and later.term == first.term
    assert later.revision > first.revision  # renewed
    wait_until(lambda: {n.last.get("leader") for n in three.nodes.values()} == {first.node_id}, 5)


def test_c5_3_and_4_when_the_leader_stops_a_new_one_is_elected_in_time(three):
    old = three.lease()
    three.nodes[old.node_id].kill()
    killed = time.monotonic()
    new = wait_until(
        lambda: (lease := three.lease()) and lease.node_id != old.node_id and lease, 15
    )
    took = time.monotonic() - killed
    assert new.term > old.term
    # The lease lives FAILURE_TIMEOUT after its last renewal; a successor follows
    # within two heartbeat intervals of it expiring.
    assert took <= FAILURE_TIMEOUT + 2 * HEARTBEAT + 1.0, took
    print(f"\nnew leader {new.node_id} {took:.1f}s after the old one died")


def test_c5_5_a_rejoining_node_catches_up_with_the_cluster(three):
    three.nodes["node-c"].kill()
    wait_until(lambda: three.settled(["node-a", "node-b"]), 15)
    three.nodes["node-c"].start()  # same id, new process
    shard_map = wait_until(lambda: three.settled(["node-a", "node-b", "node-c"]), 15)
    leader = three.lease().node_id
    wait_until(lambda: three.nodes["node-c"].last.get("leader") == leader, 5)
    assert three.nodes["node-c"].last["shards"] == shard_map.counts()["node-c"]


# --- Capability 6: distribute actors across cluster nodes ----------------------------------


def test_c6_1_three_nodes_hold_100_shards_33_33_34(three):
    assert sorted(three.shard_map().counts().values()) == [33, 33, 34]


def test_c6_2_and_3_order_123_always_maps_to_one_shard_and_is_served_by_its_owner(three):
    shard = shard_of("order-123")
    owner = three.shard_map().owner(shard)
    Order.objects.update("order-123", lambda o: None, create=True)  # nothing recorded
    for _ in range(3):
        answer = send_command("test-orders", "order-123")
        assert (answer["shard"], answer["node"]) == (shard, owner)


def test_c6_4_a_fourth_node_takes_about_25_shards_and_the_rest_stay(three):
    before = three.shard_map()
    three.start("node-d")
    after = wait_until(lambda: three.settled(["node-a", "node-b", "node-c", "node-d"]), 15)
    moved = [s for s in range(100) if before.owner(s) != after.owner(s)]
    assert len(moved) == 25 and after.moved == 25
    assert all(after.owner(s) == "node-d" for s in moved)


def test_c6_5_removing_a_node_moves_only_its_shards(three):
    before = three.shard_map()
    three.nodes["node-a"].stop()
    after = wait_until(lambda: three.settled(["node-b", "node-c"]), 15)
    moved = {s for s in range(100) if before.owner(s) != after.owner(s)}
    assert moved == set(before.shards_of("node-a"))
    assert sorted(after.counts().values()) == [50, 50]


# --- Capability 7: recover from node failures ------------------------------------------------


def test_c7_1_to_5_a_killed_nodes_shards_and_actors_come_back_elsewhere(three):
    # Actors spread over every node, each with acknowledged events.
    actors = [f"order-{uuid.uuid4().hex[:6]}-{i}" for i in range(30)]
    acknowledged: dict[str, int] = {}
    for actor in actors:
        send_command("test-orders", actor, "place", customer="ann")
        answer = send_command("test-orders", actor, "add_line", sku="x", quantity=1, price_cents=5)
        acknowledged[actor] = answer["version"]
    shard_map = three.shard_map()
    victim = shard_map.owner(shard_of(actors[0]))
    victims_shards = set(shard_map.shards_of(victim))  # 1. node holds these shards
    on_victim = [a for a in actors if shard_of(a) in victims_shards]

    three.nodes[victim].kill()  # ... and dies
    killed = time.monotonic()
    survivors = [n for n in three.nodes if n != victim]
    # 2. the leader detects the failure (its heartbeat expires) ...
    wait_until(lambda: victim not in three.alive(), 10)
    # 3. ... and its shards are reassigned within 5 seconds
    new_map = wait_until(lambda: three.settled(survivors), 10)
    reassigned = time.monotonic() - killed
    assert all(new_map.owner(s) in survivors for s in victims_shards)
    assert reassigned <= FAILURE_TIMEOUT + 5.0, reassigned
    # 4. the actors replay from JetStream on their new homes, 5. with nothing lost
    for actor in on_victim:
        answer = send_command("test-orders", actor)
        assert answer["node"] in survivors
        assert answer["version"] == acknowledged[actor]
        assert answer["state"]["lines"] == [{"sku": "x", "quantity": 1, "price_cents": 5}]
        after = send_command("test-orders", actor, "pay")
        assert after["version"] == acknowledged[actor] + 1
    print(f"\n{victim} killed: shards reassigned after {reassigned:.1f}s")


def test_split_brain_a_paused_leader_is_replaced_fenced_and_follows(three):
    actor = f"order-{uuid.uuid4().hex[:6]}"
    send_command("test-orders", actor, "place", customer="ann")
    old = three.lease()
    paused = three.nodes[old.node_id]
    paused.pause()
    try:
        new = wait_until(
            lambda: (lease := three.lease()) and lease.node_id != old.node_id and lease, 15
        )
        others = [n for n in three.nodes if n != old.node_id]
        wait_until(lambda: three.settled(others), 10)
        # Commands keep working while the old leader sleeps.
        send_command("test-orders", actor, "add_line", sku="y", quantity=1, price_cents=1)
    finally:
        paused.resume()
    # It wakes believing it leads; its first map write is refused by the fence.
    wait_until(lambda: paused.last.get("fenced", 0) >= 1, 10)
    wait_until(lambda: paused.last.get("leader") == new.node_id, 10)
    wait_until(lambda: three.settled(list(three.nodes)), 15)
    assert three.lease().node_id == new.node_id
    # No version was ever accepted twice.
    versions = [e.version for e in Order.get_store().get_events(actor)]
    assert versions == sorted(set(versions)) == [1, 2]
