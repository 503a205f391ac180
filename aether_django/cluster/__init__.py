"""Cluster coordination: placement (pure), membership, leader lease, shard map, routing."""
