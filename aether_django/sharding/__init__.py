"""Sharding: routing a command to the node that owns an actor's shard, and hosting shards.

This is the model layer's half of the cluster: serving a command loads an aggregate
class from the registry and runs its command method, so it sits above the cluster
primitives (membership, lease, shard map) it builds on.

* :mod:`.routing`: ``send`` (a command as a NATS request on the shard's subject) and
  ``ShardHost`` (the owner's side: load, run, save, answer).
* :mod:`.node`: ``ClusterNode``, the driver that ``manage.py aether_node`` and the
  Celery worker run (heartbeat, lease, shard map, and the shards it hosts).
* :mod:`.commands`: ``run_command`` / ``arun_command``, a command by name on the
  shard's owner when the cluster runs (``AETHER["COMMAND_ROUTING"]``), here otherwise,
  with the same result either way.

The functions here are the facade that wires routing to ``settings.AETHER`` and the
process runtime: ``send_command`` / ``asend_command`` run a command on an actor's owner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .commands import (
    CommandEvent,
    CommandResult,
    acommand_routed,
    arun_command,
    command_routed,
    run_command,
)
from .routing import CommandError, RemoteDomainError, ShardUnavailableError

__all__ = [
    "CommandError",
    "CommandEvent",
    "CommandResult",
    "RemoteDomainError",
    "ShardUnavailableError",
    "acommand_routed",
    "arun_command",
    "asend_command",
    "command_routed",
    "run_command",
    "send_command",
]


async def asend_command(
    namespace: str,
    actor_id: str,
    command: str | None = None,
    *,
    command_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
    **arguments: Any,
) -> dict[str, Any]:
    """Run ``command(**arguments)`` on the node that owns the actor; return its new state.

    Without ``command`` it only reads the actor's state there. Answers only once the
    command's events are stored. Raises RemoteDomainError when the aggregate refuses,
    ShardUnavailableError when no node owns the shard for ``2 * TIMEOUT`` seconds (a
    move that does not settle), StoreUnavailableError or SaveOutcomeUnknownError when
    the owner could not store the events, CommandError when the command failed there.
    Pass the same ``command_id`` to send a command again after one of those errors:
    it is run at most once. ``metadata`` entries are added to the command's events.
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
        metadata=metadata,
        **arguments,
    )


def send_command(
    namespace: str,
    actor_id: str,
    command: str | None = None,
    *,
    command_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
    **arguments: Any,
) -> dict[str, Any]:
    """Sync twin of :func:`asend_command`."""
    from ..runtime import get_runtime

    return get_runtime().run(
        asend_command(
            namespace, actor_id, command, command_id=command_id, metadata=metadata, **arguments
        )
    )
