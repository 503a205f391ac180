"""Pure placement: stable hashing, the hash ring, and the shard planner's invariants."""

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aether_django.cluster.hashring import ConsistentHashRing, shard_for, stable_hash
from aether_django.cluster.shards import plan_assignment, shard_counts

NODE = st.text(alphabet="abcdefgh-0123456789", min_size=1, max_size=8)
NODES = st.lists(NODE, min_size=1, max_size=8, unique=True)
SHARDS = st.integers(min_value=1, max_value=300)


def test_the_hash_is_the_same_in_another_process():
    code = (
        "from aether_django.cluster.hashring import shard_for; print(shard_for('order-123', 100))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == shard_for("order-123", 100)


def test_known_values_pin_the_hash_function():
    # Changing the hash would move every actor: these values must never change.
    assert stable_hash("order-123") == 0xDCF14D45C1F90D6E
    assert shard_for("order-123", 100) == 0xDCF14D45C1F90D6E % 100 == 82


@given(st.text(), st.integers(1, 5000))
def test_shards_are_in_range_and_stable(actor_id, num_shards):
    assert 0 <= shard_for(actor_id, num_shards) < num_shards
    assert shard_for(actor_id, num_shards) == shard_for(actor_id, num_shards)


@given(NODES, st.lists(st.text(min_size=1), min_size=1, max_size=50))
def test_ring_removal_moves_only_the_removed_nodes_keys(nodes, keys):
    ring = ConsistentHashRing(nodes)
    before = {k: ring.node_for(k) for k in keys}
    gone = nodes[0]
    ring.remove(gone)
    if not ring.nodes:
        return
    for key, owner in before.items():
        if owner != gone:
            assert ring.node_for(key) == owner


@given(NODES, NODE, st.lists(st.text(min_size=1), min_size=1, max_size=50))
def test_ring_addition_moves_keys_only_to_the_new_node(nodes, new, keys):
    ring = ConsistentHashRing(nodes)
    before = {k: ring.node_for(k) for k in keys}
    ring.add(new)
    for key, owner in before.items():
        assert ring.node_for(key) in (owner, new)


@settings(max_examples=200)
@given(SHARDS, NODES)
def test_plans_are_complete_balanced_and_deterministic(num_shards, nodes):
    plan = plan_assignment(num_shards, nodes)
    assert sorted(plan.assignment) == list(range(num_shards))
    assert set(plan.assignment.values()) <= set(nodes)
    counts = [shard_counts(plan.assignment).get(n, 0) for n in nodes]
    assert max(counts) - min(counts) <= 1
    assert plan_assignment(num_shards, list(reversed(nodes))) == plan


@settings(max_examples=200)
@given(SHARDS, NODES, NODE)
def test_adding_a_node_moves_only_what_rebalancing_needs_from_the_fullest(num_shards, nodes, new):
    if new in nodes:
        return
    before = plan_assignment(num_shards, nodes).assignment
    after = plan_assignment(num_shards, [*nodes, new], before)
    # Every move goes to the new node, and exactly its share moves.
    assert all(after.assignment[s] == new for s in after.moved)
    assert after.moved_count == shard_counts(after.assignment).get(new, 0)
    assert after.moved_count == num_shards // (len(nodes) + 1) or after.moved_count == (
        num_shards // (len(nodes) + 1) + 1
    )
    counts = shard_counts(after.assignment)
    assert max(counts.values()) - min(counts.get(n, 0) for n in [*nodes, new]) <= 1


@settings(max_examples=200)
@given(SHARDS, st.lists(NODE, min_size=2, max_size=8, unique=True))
def test_removing_a_node_moves_only_its_shards(num_shards, nodes):
    before = plan_assignment(num_shards, nodes).assignment
    gone = nodes[0]
    after = plan_assignment(num_shards, nodes[1:], before)
    assert after.moved == frozenset(s for s, n in before.items() if n == gone)


def test_seed_three_nodes_hold_33_33_34_of_100():
    plan = plan_assignment(100, ["node-a", "node-b", "node-c"])
    assert sorted(shard_counts(plan.assignment).values()) == [33, 33, 34]


def test_seed_a_fourth_node_moves_about_25():
    three = plan_assignment(100, ["node-a", "node-b", "node-c"]).assignment
    four = plan_assignment(100, ["node-a", "node-b", "node-c", "node-d"], three)
    assert four.moved_count == 25
    assert sorted(shard_counts(four.assignment).values()) == [25, 25, 25, 25]


def test_invalid_arguments():
    with pytest.raises(ValueError):
        plan_assignment(0, ["a"])
    with pytest.raises(ValueError):
        shard_for("x", 0)
    assert plan_assignment(10, []).assignment == {}


@given(NODES, st.text())
def test_the_ring_prefers_every_node_once_starting_with_the_keys_owner(nodes, key):
    ring = ConsistentHashRing(nodes)
    preference = ring.preference(key)
    assert sorted(preference) == sorted(nodes)  # a permutation of the nodes
    assert preference[0] == ring.node_for(key)


@given(NODES, st.text())
def test_without_its_first_choice_a_key_goes_to_its_second(nodes, key):
    ring = ConsistentHashRing(nodes)
    preference = ring.preference(key)
    ring.remove(preference[0])
    assert ring.preference(key) == preference[1:]


def test_virtual_nodes_spread_keys_near_evenly():
    nodes = [f"node-{c}" for c in "abcde"]
    keys = [f"order-{i}" for i in range(10_000)]
    fair = len(keys) / len(nodes)

    def shares(vnodes: int) -> list[int]:
        ring = ConsistentHashRing(nodes, vnodes=vnodes)
        counts = {node: 0 for node in nodes}
        for key in keys:
            counts[ring.node_for(key)] += 1
        return sorted(counts.values())

    many = shares(64)
    # With 64 points per node no node gets far from its fair share ...
    assert many[-1] < 1.5 * fair and many[0] > 0.5 * fair, many
    # ... while one point per node leaves the ring lopsided.
    one = shares(1)
    assert one[-1] - one[0] > many[-1] - many[0], (one, many)


def test_a_ring_needs_at_least_one_virtual_node_per_node():
    with pytest.raises(ValueError):
        ConsistentHashRing(["a"], vnodes=0)
    with pytest.raises(ValueError):
        ConsistentHashRing().node_for("x")
    assert ConsistentHashRing().preference("x") == []


@settings(max_examples=200)
@given(SHARDS, NODES, NODE)
def test_plans_from_a_previous_map_are_deterministic(num_shards, nodes, new):
    before = plan_assignment(num_shards, nodes).assignment
    grown = [*nodes, new]
    assert plan_assignment(num_shards, list(reversed(grown)), before) == plan_assignment(
        num_shards, grown, before
    )
    shrunk = nodes[1:] or [new]
    assert plan_assignment(num_shards, list(reversed(shrunk)), before) == plan_assignment(
        num_shards, shrunk, before
    )


@settings(max_examples=200)
@given(SHARDS, st.lists(NODE, min_size=2, max_size=6, unique=True), st.data())
def test_from_an_unbalanced_map_shards_move_only_from_the_fullest_nodes(num_shards, nodes, data):
    # Any previous map over these nodes, however lopsided.
    owners = data.draw(st.lists(st.sampled_from(nodes), min_size=num_shards, max_size=num_shards))
    previous = dict(enumerate(owners))
    plan = plan_assignment(num_shards, nodes, previous)
    before, after = shard_counts(previous), shard_counts(plan.assignment)
    counts = [after.get(n, 0) for n in nodes]
    assert max(counts) - min(counts) <= 1
    base = num_shards // len(nodes)
    for shard in plan.moved:
        donor, taker = previous[shard], plan.assignment[shard]
        # Only a node above its share gives, only a node below it takes ...
        assert before[donor] > base and after[donor] < before[donor]
        assert before.get(taker, 0) < after[taker]
    # ... and no more moves than balancing needs: each node ends within one of
    # the share, having moved exactly the difference.
    needed = sum(max(0, before.get(n, 0) - after.get(n, 0)) for n in nodes)
    assert plan.moved_count == needed
