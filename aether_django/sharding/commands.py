"""Run an aggregate's command by name: on the shard's owner when the cluster runs, here otherwise.

:func:`run_command` / :func:`arun_command` are what the HTTP API's command endpoints call,
and what any other caller (a task, a process manager, a shell) may call to get the same
result whether or not a cluster runs. The answer is a :class:`CommandResult` either way;
only the latency tells where the command ran.

Where it runs is ``AETHER["COMMAND_ROUTING"]``: ``"never"`` (always here, with
``Model.objects.update``), ``"always"`` (always on the owner, through
:func:`~aether_django.sharding.routing.send_request`), or ``"auto"``: on the owner while
the cluster bucket shows live nodes, here otherwise. The live nodes are read at most
once per ``HEARTBEAT_INTERVAL`` per process (a node that just failed is still routed to
until its heartbeat expires, as for any sender: the send then waits for the shard's next
owner).

A command id the actor already holds is not run again, wherever the command would run;
the result then describes the command as it was first stored (its events, and the
state as of its last event), read back from the store, with ``replayed=True``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ..aggregates import Aggregate, AggregateDoesNotExist, get_aggregate_class
from ..errors import AetherError
from ..events import Event
from .routing import CommandError

__all__ = [
    "ROUTING_MODES",
    "CommandEvent",
    "CommandResult",
    "arun_command",
    "command_routed",
    "run_command",
]

#: The values ``AETHER["COMMAND_ROUTING"]`` may take.
ROUTING_MODES = ("auto", "always", "never")


@dataclasses.dataclass(frozen=True)
class CommandEvent:
    """One event a command stored."""

    sequence: int
    version: int
    event_type: str
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The HTTP API's shape: ``sequence``, ``version``, ``event_type``."""
        return {"sequence": self.sequence, "version": self.version, "event_type": self.event_type}


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """What running a command did: the actor's version and state after it, and its events.

    For a replayed command (its id was already applied) ``version`` is the version of
    its last stored event, ``state`` the state as of that version and ``events`` its
    stored events: the result it had the first time. A command that recorded no events
    leaves no trace of its id, so it is never replayed: it runs again.
    """

    actor_id: str
    version: int
    state: dict[str, Any]
    events: tuple[CommandEvent, ...]
    command_id: str
    replayed: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The HTTP API's answer: ``actor_id``, ``version``, ``state``, ``events``."""
        return {
            "actor_id": self.actor_id,
            "version": self.version,
            "state": self.state,
            "events": [e.as_dict() for e in self.events],
        }


# --- where a command runs --------------------------------------------------------------------

_live_lock = threading.Lock()
#: (bucket, NATS URL) -> (monotonic time the reading expires, whether nodes were alive).
_live: dict[tuple[str, str], tuple[float, bool]] = {}


def _mode() -> str:
    from ..conf import aether_settings

    mode = aether_settings.COMMAND_ROUTING
    if mode not in ROUTING_MODES:
        raise AetherError(
            f"AETHER['COMMAND_ROUTING'] is {mode!r}; it must be one of {', '.join(ROUTING_MODES)}"
        )
    return str(mode)


def _cached_liveness() -> tuple[tuple[str, str], bool | None]:
    from ..conf import aether_settings

    key = (str(aether_settings.CLUSTER_BUCKET), str(aether_settings.NATS_URL))
    with _live_lock:
        found = _live.get(key)
    if found is not None and found[0] > time.monotonic():
        return key, found[1]
    return key, None


def _remember_liveness(key: tuple[str, str], alive: bool) -> bool:
    from ..conf import aether_settings

    with _live_lock:
        _live[key] = (time.monotonic() + float(aether_settings.HEARTBEAT_INTERVAL), alive)
    return alive


async def _read_liveness() -> bool:
    from ..cluster import cluster_config
    from ..cluster.coordinator import Coordinator
    from ..runtime import get_runtime

    coordinator = Coordinator(get_runtime(), "command-router", cluster_config())
    return bool(await coordinator.live_nodes())


async def acommand_routed() -> bool:
    """Async twin of :func:`command_routed`."""
    mode = _mode()
    if mode != "auto":
        return mode == "always"
    key, alive = _cached_liveness()
    if alive is None:
        alive = _remember_liveness(key, await _read_liveness())
    return alive


def command_routed() -> bool:
    """Whether :func:`run_command` sends commands to their shard's owner now
    (``COMMAND_ROUTING``; for ``"auto"``, whether the cluster has live nodes)."""
    mode = _mode()
    if mode != "auto":
        return mode == "always"
    key, alive = _cached_liveness()
    if alive is None:
        from ..runtime import get_runtime

        alive = _remember_liveness(key, get_runtime().run(_read_liveness()))
    return alive


def forget_liveness() -> None:
    """Read the cluster's live nodes again on the next command (tests, and after a
    change of settings)."""
    with _live_lock:
        _live.clear()


# --- running it ----------------------------------------------------------------------------------


def _model(namespace: str, command: str) -> type[Aggregate]:
    model = get_aggregate_class(namespace)
    if model is None:
        raise CommandError(f"no aggregate class is registered for namespace {namespace!r}")
    if command not in model._meta.commands:
        raise CommandError(
            f"{command!r} is not a command of {model.__name__} ({namespace!r}); mark the "
            "method with @command or list it in Meta.commands"
        )
    return model


def _call(command: str, arguments: Mapping[str, Any]) -> Any:
    def run(obj: Aggregate) -> Any:
        return getattr(obj, command)(**arguments)

    return run


def _events(events: list[Event]) -> tuple[CommandEvent, ...]:
    return tuple(
        CommandEvent(e.sequence or 0, e.version, e.event_type, dict(e.metadata)) for e in events
    )


def _answered_events(answer: Mapping[str, Any]) -> tuple[CommandEvent, ...] | None:
    raw = answer.get("events")
    if not isinstance(raw, list):
        return None  # an owner of an earlier release: read them from the store
    return tuple(
        CommandEvent(
            int(e.get("sequence") or 0),
            int(e["version"]),
            str(e["event_type"]),
            dict(e.get("metadata") or {}),
        )
        for e in raw
    )


def _command_run(events: list[Event], command_id: str, version: int) -> list[Event]:
    """The events of ``command_id`` that end at ``version`` (one command's events are
    stored together, as one atomic batch)."""
    run: list[Event] = []
    for event in reversed([e for e in events if e.version <= version]):
        if event.command_id != command_id:
            break
        run.append(event)
    return run[::-1]


#: Versions read before a replayed command's last event, at first, to find its first.
_LOOK_BACK = 16


def _replayed(
    model: type[Aggregate], actor_id: str, command_id: str, version: int, replayed: bool = True
) -> CommandResult:
    if version == 0:  # an actor with no events (a command that recorded none)
        return CommandResult(actor_id, 0, model(actor_id).get_snapshot_state(), (), command_id)
    store = model.get_store()
    start = max(0, version - _LOOK_BACK)
    while True:
        window = [e for e in store.get_events(actor_id, start) if e.version <= version]
        run = _command_run(window, command_id, version)
        if start == 0 or len(run) < len(window):
            break
        start = max(0, start - 16 * _LOOK_BACK)  # the whole window was the command's
    obj = model.objects.get(actor_id, at_version=version)
    return CommandResult(
        actor_id, version, obj.get_snapshot_state(), _events(run), command_id, replayed
    )


async def _areplayed(
    model: type[Aggregate], actor_id: str, command_id: str, version: int, replayed: bool = True
) -> CommandResult:
    if version == 0:  # an actor with no events (a command that recorded none)
        return CommandResult(actor_id, 0, model(actor_id).get_snapshot_state(), (), command_id)
    store = model.get_store()
    start = max(0, version - _LOOK_BACK)
    while True:
        window = [e for e in await store.aget_events(actor_id, start) if e.version <= version]
        run = _command_run(window, command_id, version)
        if start == 0 or len(run) < len(window):
            break
        start = max(0, start - 16 * _LOOK_BACK)
    obj = await model.objects.aget(actor_id, at_version=version)
    return CommandResult(
        actor_id, version, obj.get_snapshot_state(), _events(run), command_id, replayed
    )


#: A command's result to read from the store: the version of its last event, and
#: whether it was a repeat of a command id applied before.
_FromStore = tuple[int, bool]


def _local_result(obj: Aggregate, command_id: str) -> CommandResult | _FromStore:
    """The result of a command update() ran, or where to read it from the store."""
    if obj.command_replayed:
        version = obj.recorded_version(command_id)
        assert version is not None  # update() found it there
        return version, True
    return CommandResult(
        obj.actor_id,
        obj.version,
        obj.get_snapshot_state(),
        _events(obj.saved_events),
        command_id,
    )


def _routed_result(
    answer: Mapping[str, Any], actor_id: str, command_id: str
) -> CommandResult | _FromStore:
    """The result of a command its owner ran, or where to read it from the store (a
    repeat, or an owner of an earlier release, whose answer lists no events)."""
    version = int(answer["version"])
    events = _answered_events(answer)
    if answer.get("replayed") or events is None:
        return version, bool(answer.get("replayed"))
    return CommandResult(actor_id, version, dict(answer["state"]), events, command_id)


def _send_options(
    command_id: str, metadata: Mapping[str, str] | None, create: bool
) -> dict[str, Any]:
    from ..conf import aether_settings

    return {
        "num_shards": int(aether_settings.NUM_SHARDS),
        "timeout": float(aether_settings.TIMEOUT) * 2,
        "command_id": command_id,
        "metadata": metadata,
        "create": create,
    }


async def arun_command(
    namespace: str,
    actor_id: str,
    command: str,
    arguments: Mapping[str, Any] | None = None,
    *,
    command_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
    create: bool = False,
) -> CommandResult:
    """Run ``command(**arguments)`` on the actor of ``namespace``'s aggregate class, on the
    shard's owner when the cluster runs (``COMMAND_ROUTING``), here otherwise.

    Returns once the command's events are stored. ``command_id`` (a fresh one by
    default) is stored with them; a command id the actor already holds among its latest
    ``Meta.command_window`` commands is not run again, and the result is the one it
    had (``replayed=True``). ``metadata`` entries are added to every event the command
    records. Without ``create`` an actor with no events raises the class's
    ``DoesNotExist``.

    Raises DomainError (RemoteDomainError when it ran on the owner) when the aggregate
    refuses, UpdateRetriesExhausted when every attempt met a conflicting writer,
    CommandError for a namespace with no aggregate class, a name that is not one of its
    commands, or a command that failed on its owner; ShardUnavailableError,
    StoreUnavailableError or SaveOutcomeUnknownError as :func:`asend_command` does.
    """
    from .routing import send_request

    model = _model(namespace, command)
    command_id = command_id or str(uuid.uuid4())
    arguments = dict(arguments or {})
    outcome: CommandResult | _FromStore
    if await acommand_routed():
        from ..runtime import get_runtime

        try:
            answer = await send_request(
                get_runtime(),
                namespace,
                actor_id,
                command,
                arguments,
                **_send_options(command_id, metadata, create),
            )
        except AggregateDoesNotExist as exc:
            raise model.DoesNotExist(str(exc)) from None  # as a local update raises it
        outcome = _routed_result(answer, actor_id, command_id)
    else:
        obj = await model.objects.aupdate(
            actor_id,
            _call(command, arguments),
            create=create,
            command_id=command_id,
            metadata=metadata,
        )
        outcome = _local_result(obj, command_id)
    if isinstance(outcome, CommandResult):
        return outcome
    return await _areplayed(model, actor_id, command_id, *outcome)


def run_command(
    namespace: str,
    actor_id: str,
    command: str,
    arguments: Mapping[str, Any] | None = None,
    *,
    command_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
    create: bool = False,
) -> CommandResult:
    """Sync twin of :func:`arun_command` (a local command runs in the calling thread,
    through ``Model.objects.update``)."""
    from .routing import send_request

    model = _model(namespace, command)
    command_id = command_id or str(uuid.uuid4())
    arguments = dict(arguments or {})
    outcome: CommandResult | _FromStore
    if command_routed():
        from ..runtime import get_runtime

        try:
            answer = get_runtime().run(
                send_request(
                    get_runtime(),
                    namespace,
                    actor_id,
                    command,
                    arguments,
                    **_send_options(command_id, metadata, create),
                )
            )
        except AggregateDoesNotExist as exc:
            raise model.DoesNotExist(str(exc)) from None
        outcome = _routed_result(answer, actor_id, command_id)
    else:
        obj = model.objects.update(
            actor_id,
            _call(command, arguments),
            create=create,
            command_id=command_id,
            metadata=metadata,
        )
        outcome = _local_result(obj, command_id)
    if isinstance(outcome, CommandResult):
        return outcome
    return _replayed(model, actor_id, command_id, *outcome)
