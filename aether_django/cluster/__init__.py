"""Cluster coordination: placement, membership, the leader lease, the shard map and routing.

The submodules are primitives that never read settings. The functions here are
the facade that wires them to ``settings.AETHER`` and the process runtime:
``cluster_config()``, ``node_id()``, ``shard_of(actor_id)``, and
``send_command`` / ``asend_command`` to run a command on an actor's owner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..runtime import node_id
from .coordinator import ClusterConfig, Coordinator, FencedOutError, Lease, NodeInfo, ShardMap
from .hashring import shard_for

if TYPE_CHECKING:
    from .routing import CommandError, RemoteDomainError, ShardUnavailableError

__all__ = [
    "ClusterConfig",
    "CommandError",
    "Coordinator",
    "FencedOutError",
    "Lease",
    "NodeInfo",
    "RemoteDomainError",
    "ShardMap",
    "ShardUnavailableError",
    "asend_command",
    "cluster_config",
    "node_id",
    "send_command",
    "shard_of",
]

#: Names handed on from ``routing``, imported on first use: routing runs aggregates,
#: which need Django, and importing this package (say for ``cluster.hashring``) must not.
_ROUTING_NAMES = frozenset({"CommandError", "RemoteDomainError", "ShardUnavailableError"})


def __getattr__(name: str) -> Any:
    if name in _ROUTING_NAMES:
        from . import routing

        return getattr(routing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cluster_config() -> ClusterConfig:
    """The ClusterConfig that the current settings describe."""
    from ..conf import aether_settings as s

    return ClusterConfig(
        bucket=str(s.CLUSTER_BUCKET),
        heartbeat_interval=float(s.HEARTBEAT_INTERVAL),
        failure_timeout=float(s.FAILURE_TIMEOUT),
        num_shards=int(s.NUM_SHARDS),
        replicas=int(s.REPLICAS),
        timeout=float(s.TIMEOUT),
    )


def shard_of(actor_id: str) -> int:
    """The shard ``actor_id`` belongs to, under the configured ``NUM_SHARDS``."""
    from ..conf import aether_settings

    return shard_for(actor_id, int(aether_settings.NUM_SHARDS))


async def asend_command(
    namespace: str,
    actor_id: str,
    command: str | None = None,
    *,
    command_id: str | None = None,
    **arguments: Any,
) -> dict[str, Any]:
    """Run ``command(**arguments)`` on the node that owns the actor; return its new state.

    Without ``command`` it only reads the actor's state there. Answers only once the
    command's events are stored. Raises RemoteDomainError when the aggregate refuses,
    ShardUnavailableError when no node owns the shard for ``2 * TIMEOUT`` seconds (a
    move that does not settle), StoreUnavailableError or SaveOutcomeUnknownError when
    the owner could not store the events, CommandError when the command failed there.
    Pass the same ``command_id`` to send a command again after one of those errors:
    it is run at most once.
    """
    from ..conf import aether_settings
    from ..runtime import get_runtime
    from .routing import send

    return await send(
        get_runtime(),
        namespace,
        actor_id,
        command,
        num_shards=int(aether_settings.NUM_SHARDS),
        timeout=float(aether_settings.TIMEOUT) * 2,
        command_id=command_id,
        **arguments,
    )


def send_command(
    namespace: str,
    actor_id: str,
    command: str | None = None,
    *,
    command_id: str | None = None,
    **arguments: Any,
) -> dict[str, Any]:
    """Sync twin of :func:`asend_command`."""
    from ..runtime import get_runtime

    return get_runtime().run(
        asend_command(namespace, actor_id, command, command_id=command_id, **arguments)
    )
