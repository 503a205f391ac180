"""Stable hashing of actor ids to shards, and a consistent-hash ring with virtual nodes.

Pure: imports neither Django nor nats. The hash is the first 8 bytes of BLAKE2b
(big-endian), which every process and every language computes the same way;
Python's ``hash()`` is salted per process and must never be used for placement.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

__all__ = ["ConsistentHashRing", "shard_for", "stable_hash"]


def stable_hash(key: str) -> int:
    """A 64-bit hash of ``key`` that is the same in every process and language."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def shard_for(actor_id: str, num_shards: int) -> int:
    """The shard (0 .. num_shards-1) that ``actor_id`` belongs to."""
    if num_shards < 1:
        raise ValueError("num_shards must be at least 1")
    return stable_hash(actor_id) % num_shards


class ConsistentHashRing:
    """Nodes placed on a ring at ``vnodes`` points each; a key belongs to the next point.

    Adding or removing a node only moves the keys between its points and their
    predecessors, about 1/n of them.
    """

    def __init__(self, nodes: Iterable[str] = (), *, vnodes: int = 64) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        self.vnodes = vnodes
        self._points: list[int] = []
        self._owners: list[str] = []
        self._nodes: set[str] = set()
        for node in nodes:
            self.add(node)

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(self._nodes)

    def add(self, node: str) -> None:
        if node in self._nodes:
            return
        self._nodes.add(node)
        for i in range(self.vnodes):
            point = stable_hash(f"{node}#{i}")
            index = bisect.bisect(self._points, point)
            self._points.insert(index, point)
            self._owners.insert(index, node)

    def remove(self, node: str) -> None:
        if node not in self._nodes:
            return
        self._nodes.discard(node)
        keep = [(p, o) for p, o in zip(self._points, self._owners, strict=True) if o != node]
        self._points = [p for p, _ in keep]
        self._owners = [o for _, o in keep]

    def node_for(self, key: str) -> str:
        """The node owning ``key``; ValueError on an empty ring."""
        if not self._points:
            raise ValueError("the ring has no nodes")
        index = bisect.bisect(self._points, stable_hash(key)) % len(self._points)
        return self._owners[index]

    def preference(self, key: str) -> list[str]:
        """Every node, in the order the ring prefers them for ``key``."""
        if not self._points:
            return []
        start = bisect.bisect(self._points, stable_hash(key))
        seen: list[str] = []
        for offset in range(len(self._points)):
            owner = self._owners[(start + offset) % len(self._points)]
            if owner not in seen:
                seen.append(owner)
                if len(seen) == len(self._nodes):
                    break
        return seen
