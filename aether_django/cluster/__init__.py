"""Cluster primitives: placement, membership, the leader lease and the shard map.

The submodules are primitives that never read settings. The functions here are
the facade that wires them to ``settings.AETHER`` and the process runtime:
``cluster_config()``, ``node_id()`` and ``shard_of(actor_id)``.

Routing commands to an actor's owner and hosting shards moved up to
:mod:`aether_django.sharding` (they run aggregates). The old names
``cluster.send_command``, ``cluster.asend_command``, ``cluster.CommandError``,
``cluster.RemoteDomainError``, ``cluster.ShardUnavailableError`` and the modules
``cluster.routing`` and ``cluster.node`` still work and warn (DeprecationWarning).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ..deprecation import moved_attribute
from ..runtime import node_id
from .coordinator import ClusterConfig, Coordinator, FencedOutError, Lease, NodeInfo, ShardMap
from .hashring import shard_for

__all__ = [
    "ClusterConfig",
    "Coordinator",
    "FencedOutError",
    "Lease",
    "NodeInfo",
    "ShardMap",
    "cluster_config",
    "node_id",
    "shard_of",
]

#: Names that moved to ``aether_django.sharding``, handed on with a warning. They are
#: imported on first use only: sharding runs aggregates, which need Django, and
#: importing this package (say for ``cluster.hashring``) must not.
_MOVED_TO_SHARDING = frozenset(
    {"CommandError", "RemoteDomainError", "ShardUnavailableError", "asend_command", "send_command"}
)


def _sharding() -> ModuleType:
    from .. import sharding

    return sharding


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, name, _sharding, _MOVED_TO_SHARDING)


def cluster_config() -> ClusterConfig:
    """The ClusterConfig that the current settings describe."""
    from ..conf import config_from_settings

    return config_from_settings(ClusterConfig, bucket="CLUSTER_BUCKET")


def shard_of(actor_id: str) -> int:
    """The shard ``actor_id`` belongs to, under the configured ``NUM_SHARDS``."""
    from ..conf import aether_settings

    return shard_for(actor_id, int(aether_settings.NUM_SHARDS))
