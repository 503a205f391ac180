"""Planning which node owns which shard: balanced, deterministic, minimal in movement.

Pure: imports neither Django nor nats.

Every node gets ``num_shards // n`` shards or one more (so max - min <= 1). A
shard stays where it is while its owner is alive and within its quota; only
shards of departed nodes and the excess of over-full nodes move, to the nodes
that are short, preferring the node the consistent-hash ring prefers (so the
same shard tends to land on the same node again). The same inputs always give
the same plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .hashring import ConsistentHashRing

__all__ = ["Plan", "plan_assignment", "shard_counts"]


@dataclass(frozen=True, slots=True)
class Plan:
    """A shard map and what changed from the previous one."""

    assignment: dict[int, str]
    moved: frozenset[int]

    @property
    def moved_count(self) -> int:
        return len(self.moved)


def shard_counts(assignment: Mapping[int, str]) -> dict[str, int]:
    """How many shards each node holds."""
    counts: dict[str, int] = {}
    for node in assignment.values():
        counts[node] = counts.get(node, 0) + 1
    return counts


def plan_assignment(
    num_shards: int,
    nodes: Iterable[str],
    previous: Mapping[int, str] | None = None,
    *,
    vnodes: int = 64,
) -> Plan:
    """Assign shards 0..num_shards-1 to ``nodes``, moving as few as possible from ``previous``."""
    if num_shards < 1:
        raise ValueError("num_shards must be at least 1")
    live = sorted(set(nodes))
    previous = dict(previous or {})
    if not live:
        return Plan({}, frozenset(shard for shard in previous if shard < num_shards))
    ring = ConsistentHashRing(live, vnodes=vnodes)

    held: dict[str, list[int]] = {node: [] for node in live}
    orphans: list[int] = []
    for shard in range(num_shards):
        owner = previous.get(shard)
        if owner in held:
            held[owner].append(shard)
        else:
            orphans.append(shard)

    # The nodes that already hold the most get the extra shards: fewer moves.
    base, extra = divmod(num_shards, len(live))
    by_size = sorted(live, key=lambda node: (-len(held[node]), node))
    quota = {node: base + (1 if rank < extra else 0) for rank, node in enumerate(by_size)}

    pool = list(orphans)
    for node in live:
        shards = held[node]
        if len(shards) > quota[node]:
            # Keep the shards the ring gives this node, then the lowest ids.
            shards.sort(key=lambda s: (ring.node_for(f"shard-{s}") != node, s))
            pool.extend(shards[quota[node] :])
            del shards[quota[node] :]

    for shard in sorted(pool):
        room = [node for node in live if len(held[node]) < quota[node]]
        preferred = next((node for node in ring.preference(f"shard-{shard}") if node in room), None)
        target = preferred or max(room, key=lambda n: (quota[n] - len(held[n]), n))
        held[target].append(shard)

    assignment = {shard: node for node, shards in held.items() for shard in shards}
    moved = frozenset(s for s in range(num_shards) if previous.get(s) != assignment[s])
    return Plan(dict(sorted(assignment.items())), moved)
