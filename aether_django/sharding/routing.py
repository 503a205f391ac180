"""Sending commands to the node that owns an actor's shard, and serving them there.

A command for an actor is a NATS request on ``aether.shard.{n}``, the subject of
the actor's shard; only the shard's owner subscribes to it. The owner runs the
command on its in-memory copy of the aggregate (loaded from snapshot plus
events the first time), saves, and answers with the new state. While a shard
moves there may briefly be no owner (the caller retries until it settles) or
two (each request carries a command id, and a node that finds the command
already stored answers with the stored result instead of running it again;
the store's version check keeps two owners from both writing).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from .. import correlation, tracing
from ..aggregates import (
    Aggregate,
    AggregateDoesNotExist,
    DomainError,
    UpdateRetriesExhausted,
    get_aggregate_class,
)
from ..aio import Runtime
from ..cluster.hashring import shard_for
from ..errors import (
    AetherError,
    SaveOutcomeUnknownError,
    StoreUnavailableError,
    VersionConflictError,
)

#: The logger keeps the name it had before routing moved out of ``cluster/``, so that
#: logging configurations written for it keep working (docs/operations.md).
logger = logging.getLogger("aether_django.cluster.routing")

__all__ = [
    "CommandError",
    "RemoteDomainError",
    "ShardHost",
    "ShardUnavailableError",
    "send",
    "send_request",
]

SHARD_SUBJECT = "aether.shard"


class ShardUnavailableError(AetherError):
    """No node answered for the actor's shard within the timeout (it did not settle)."""


class CommandError(AetherError):
    """The owning node could not run the command (unknown command, bad arguments, ...)."""


class RemoteDomainError(DomainError):
    """The aggregate's rules refused the command on the owning node; nothing was recorded."""


def shard_subject(shard: int) -> str:
    return f"{SHARD_SUBJECT}.{shard}"


async def send(
    runtime: Runtime,
    namespace: str,
    actor_id: str,
    command: str | None = None,
    *,
    num_shards: int,
    timeout: float = 10.0,
    attempt_timeout: float = 2.0,
    command_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
    **arguments: Any,
) -> dict[str, Any]:
    """Run ``command(**arguments)`` on the actor's owner (or just read it, with no command).

    Returns ``{"actor_id", "version", "state", "node", "shard"}`` only once the
    command's events are stored. Retries while nobody owns the shard;
    ShardUnavailableError when that lasts ``timeout`` seconds. When the owner could
    not store the events it raises StoreUnavailableError (nothing was stored) or
    SaveOutcomeUnknownError (they may be stored); CommandError when the command
    failed there for another reason; RemoteDomainError when the aggregate refused it.

    ``command_id`` (a fresh one by default) is stored with the command's events; a
    command sent again with the same id is run at most once, so after one of those
    errors sending it again with the same id is safe.

    ``metadata`` entries are added to the command's events; the correlation and
    causation ids in effect here (:mod:`aether_django.correlation`) travel with the
    command, so the owner's events carry them.
    """
    return await send_request(
        runtime,
        namespace,
        actor_id,
        command,
        arguments,
        num_shards=num_shards,
        timeout=timeout,
        attempt_timeout=attempt_timeout,
        command_id=command_id,
        metadata=metadata,
    )


async def send_request(
    runtime: Runtime,
    namespace: str,
    actor_id: str,
    command: str | None,
    arguments: Mapping[str, Any] | None = None,
    *,
    num_shards: int,
    timeout: float = 10.0,
    attempt_timeout: float = 2.0,
    command_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
    create: bool = True,
) -> dict[str, Any]:
    """:func:`send` with the command's arguments as a mapping (so that no argument name
    is taken by an option), and ``create``.

    With ``create=False`` an actor that has no events is not created by the command:
    AggregateDoesNotExist instead. UpdateRetriesExhausted when the owner met a
    conflicting writer on every attempt. Besides what :func:`send` returns, the answer
    holds ``events`` (each stored event of the command: ``sequence``, ``version``,
    ``event_type``, ``metadata``) and ``replayed``: True when the actor already held
    ``command_id``, so the command was not run again (``version`` is then the version
    of its last event, ``events`` is empty and ``state`` is the actor's state now).
    An owner of an earlier release leaves both out and creates missing actors.
    """
    command_id = command_id or str(uuid.uuid4())
    causes = correlation.current() or correlation.Causes(correlation.new_id(), command_id)
    request = json.dumps(
        {
            "namespace": namespace,
            "actor_id": actor_id,
            "command": command,
            "arguments": dict(arguments or {}),
            "command_id": command_id,
            "metadata": dict(metadata or {}),
            "causes": [causes.correlation_id, causes.causation_id],
            "create": create,
        },
        # Values a serializer made (Decimal, dates) travel as their text.
        default=str,
    ).encode()
    subject = shard_subject(shard_for(actor_id, num_shards))
    what = f"{namespace}/{actor_id}"
    if tracing.enabled and tracing.recording():
        attributes = {
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            "aether.namespace": namespace,
            "aether.actor_id": actor_id,
            "aether.command": command or "",
            "aether.command_id": command_id,
        }
        with tracing.span(f"aether route {namespace}", kind=tracing.CLIENT, attributes=attributes):
            # The owner's span continues this trace (ShardHost._on_request).
            headers: dict[str, str] = {}
            tracing.inject(headers)
            return await _request(
                runtime, actor_id, what, subject, request, timeout, attempt_timeout, headers or None
            )
    return await _request(runtime, actor_id, what, subject, request, timeout, attempt_timeout, None)


async def _request(
    runtime: Runtime,
    actor_id: str,
    what: str,
    subject: str,
    request: bytes,
    timeout: float,
    attempt_timeout: float,
    headers: dict[str, str] | None,
) -> dict[str, Any]:
    """Send ``request`` until the shard's owner answers; its answer, or the error it means."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempt = 0
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise ShardUnavailableError(
                f"no node answered for {what} on {subject} within {timeout}s"
            )
        try:
            nc = await runtime.connection()
            reply: Msg = await nc.request(
                subject, request, timeout=min(attempt_timeout, remaining), headers=headers
            )
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError):
            # The shard is moving (or its owner just died): wait for the new owner.
            await asyncio.sleep(min(0.05 * 2**attempt, 0.5, max(remaining, 0)))
            attempt += 1
            continue
        doc: dict[str, Any] = json.loads(reply.data)
        error = doc.get("error")
        if error:
            if error.get("type") == "domain":
                raise RemoteDomainError(error["message"])
            message = error.get("message", "the command failed")
            if error.get("type") == "not_found":
                raise AggregateDoesNotExist(message)
            if error.get("type") == "conflict":
                raise UpdateRetriesExhausted(actor_id, int(error.get("attempts") or 0))
            if error.get("type") == "unknown":
                raise SaveOutcomeUnknownError(message)
            if error.get("type") == "unavailable":
                raise StoreUnavailableError(message)
            raise CommandError(message)
        return doc


class ShardHost:
    """Serves the commands of the shards this node owns, keeping hot actors in memory."""

    def __init__(self, runtime: Runtime, node_id: str, *, cache_size: int = 10_000) -> None:
        self.runtime = runtime
        self.node_id = node_id
        self.cache_size = cache_size
        self._subscriptions: dict[int, Any] = {}
        # (namespace, actor id) -> (shard, aggregate), least recently used first.
        self._actors: OrderedDict[tuple[str, str], tuple[int, Aggregate]] = OrderedDict()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.served = 0

    @property
    def shards(self) -> list[int]:
        return sorted(self._subscriptions)

    async def own(self, shards: set[int]) -> tuple[set[int], set[int]]:
        """Serve exactly ``shards`` from now on; return (gained, lost)."""
        nc = await self.runtime.connection()
        current = set(self._subscriptions)
        gained, lost = shards - current, current - shards
        for shard in sorted(lost):
            sub = self._subscriptions.pop(shard)
            await sub.unsubscribe()
        if lost:
            # Actors of lost shards may be changed by their new owner: forget them.
            for key in [k for k, (shard, _) in self._actors.items() if shard in lost]:
                del self._actors[key]
        for shard in sorted(gained):
            self._subscriptions[shard] = await nc.subscribe(
                shard_subject(shard), cb=self._on_request
            )
        return gained, lost

    async def stop(self) -> None:
        await self.own(set())

    async def _on_request(self, msg: Msg) -> None:
        if not (tracing.enabled and tracing.recording()):
            await self._serve(msg)
            return
        # A SERVER span continuing the sender's trace (its CLIENT span is the parent).
        with tracing.span(
            "aether route",
            kind=tracing.SERVER,
            parent=tracing.carried(msg.headers) or {},
            attributes={"messaging.system": "nats", "messaging.destination.name": msg.subject},
        ):
            await self._serve(msg)

    async def _serve(self, msg: Msg) -> None:
        try:
            doc = json.loads(msg.data)
            namespace, actor_id = doc["namespace"], doc["actor_id"]
        except (ValueError, KeyError, TypeError):
            await msg.respond(
                json.dumps({"error": {"type": "bad", "message": "bad request"}}).encode()
            )
            return
        if tracing.enabled:
            tracing.describe(
                f"aether route {namespace}",
                {
                    "aether.namespace": str(namespace),
                    "aether.actor_id": str(actor_id),
                    "aether.command": str(doc.get("command") or ""),
                    "aether.node": self.node_id,
                },
            )
        key = (namespace, actor_id)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one command at a time per actor on this node
            try:
                reply = json.dumps(await self._run(msg, doc)).encode()
            except Exception as exc:
                # Whatever went wrong (loading, a store error, a bug, state that is not
                # JSON), the caller gets an answer instead of waiting for its timeout,
                # and the actor's copy in memory, which may be half-changed, is dropped.
                self._forget(namespace, actor_id)
                reply = json.dumps(self._failure(exc, doc)).encode()
        await msg.respond(reply)

    def _failure(self, exc: Exception, doc: dict[str, Any]) -> dict[str, Any]:
        """Log a command that could not be completed and say why in the reply."""
        what = f"{doc.get('command') or 'read'} on {doc['namespace']}/{doc['actor_id']}"
        logger.error(
            "node %s: %s (command id %s) failed",
            self.node_id,
            what,
            doc.get("command_id"),
            exc_info=exc,
            extra={
                "node": self.node_id,
                "namespace": doc["namespace"],
                "actor_id": doc["actor_id"],
                "command": doc.get("command"),
                "command_id": doc.get("command_id"),
            },
        )
        if isinstance(exc, SaveOutcomeUnknownError):
            kind = "unknown"
            message = (
                f"{what}: the save was not confirmed and the history does not show it yet; "
                "send it again with the same command id"
            )
        elif isinstance(exc, StoreUnavailableError):
            kind = "unavailable"
            message = f"{what}: nothing was stored ({exc}); send it again with the same command id"
        else:
            kind = "failed"
            message = f"{what} failed on node {self.node_id}: {type(exc).__name__}: {exc}"
        return {"error": {"type": kind, "message": message}}

    async def _run(self, msg: Msg, doc: dict[str, Any]) -> dict[str, Any]:
        namespace, actor_id = doc["namespace"], doc["actor_id"]
        model = get_aggregate_class(namespace)
        if model is None:
            return {"error": {"type": "bad", "message": f"no aggregate for {namespace!r}"}}
        command = doc.get("command")
        arguments = doc.get("arguments") or {}
        command_id = doc.get("command_id")
        metadata = _string_map(doc.get("metadata"))
        # Senders of earlier releases say nothing: they expect a missing actor created.
        create = doc.get("create", True) is not False
        causes = doc.get("causes")
        if not (isinstance(causes, list) and len(causes) == 2 and all(map(_is_text, causes))):
            causes = [correlation.new_id(), command_id or correlation.new_id()]
        if command is not None and (
            not isinstance(command, str) or command not in model._meta.commands
        ):
            # Only declared commands: any other method (save, set_snapshot_state, a
            # helper) would let a message on the shard's subject bypass the aggregate's
            # rules.
            return {
                "error": {
                    "type": "bad",
                    "message": f"{command!r} is not a command of {model.__name__} "
                    f"({namespace!r}); mark the method with @command or list it in "
                    "Meta.commands",
                }
            }
        shard = int(msg.subject.rsplit(".", 1)[1])
        for _attempt in range(20):
            # The actor leaves the cache while a command runs on it and returns only
            # once its state is known to match the store: a command that fails half-way
            # or a save that fails leaves nothing behind that a retry could mistake
            # for done.
            actor = await self._take(model, actor_id)
            if command is None:
                self._remember(model, actor, shard)
                return self._answer(actor, shard)
            done = actor.recorded_version(command_id) if command_id else None
            if done is not None:
                # A command this actor's history already holds (its node died before
                # answering, or two nodes owned the shard for a moment): answer with the
                # version it was stored at, without running it again.
                self._remember(model, actor, shard)
                return {**self._answer(actor, shard), "version": done, "replayed": True}
            if not create and actor.version == 0:
                return {
                    "error": {
                        "type": "not_found",
                        "message": f"no {model.__name__} with actor id {actor_id!r}",
                    }
                }
            try:
                with (
                    correlation.use(causes[0], causes[1]),
                    actor.command_context(command_id, metadata),
                ):
                    getattr(actor, command)(**arguments)
            except DomainError as exc:
                return {"error": {"type": "domain", "message": str(exc)}}
            except (TypeError, ValueError) as exc:
                return {"error": {"type": "bad", "message": f"{command}: {exc}"}}
            try:
                await actor.asave()
            except VersionConflictError:
                # Another owner (during a move) or writer got there first: reload. If it
                # was this very command, the reloaded history says so (recorded_version
                # above) and it is answered without running again.
                continue
            except SaveOutcomeUnknownError:
                # The events may be stored. Only the history can say: reload, and answer
                # "done" if it holds the command; otherwise the caller must ask again.
                if command_id and await self._stored(model, actor_id, command_id, shard):
                    continue
                raise
            self._remember(model, actor, shard)
            self.served += 1
            return {**self._answer(actor, shard), "events": _stored(actor.saved_events)}
        return {
            "error": {"type": "conflict", "message": "too many conflicting writers", "attempts": 20}
        }

    async def _take(self, model: type[Aggregate], actor_id: str) -> Aggregate:
        """The actor, out of the cache (or loaded; a new one if it has no events)."""
        cached = self._actors.pop((model._meta.namespace or "", actor_id), None)
        if cached is not None:
            return cached[1]
        # Arrived with its shard (or first use): replay from snapshot plus events.
        try:
            actor: Aggregate = await model.objects.aget(actor_id)
        except AggregateDoesNotExist:
            actor = model(actor_id)
        return actor

    async def _stored(
        self, model: type[Aggregate], actor_id: str, command_id: str, shard: int
    ) -> bool:
        """Whether the stored history holds ``command_id`` (then the actor is cached)."""
        try:
            actor = await model.objects.aget(actor_id)
        except AggregateDoesNotExist:
            return False
        except AetherError:
            return False  # cannot tell: the caller hears that the outcome is unknown
        if actor.recorded_version(command_id) is None:
            return False
        self._remember(model, actor, shard)
        return True

    def _remember(self, model: type[Aggregate], actor: Aggregate, shard: int) -> None:
        if shard not in self._subscriptions:
            return  # the shard was lost while the command ran: its next owner may change it
        if model._meta.personal_data:
            # Its plain state would outlive a forget() of its subject (docs/privacy.md).
            return
        key = (model._meta.namespace or "", actor.actor_id)
        self._actors[key] = (shard, actor)
        self._actors.move_to_end(key)
        if len(self._actors) > self.cache_size:
            self._actors.popitem(last=False)

    def _forget(self, namespace: str, actor_id: str) -> None:
        self._actors.pop((namespace, actor_id), None)

    def _answer(self, actor: Aggregate, shard: int) -> dict[str, Any]:
        return {
            "actor_id": actor.actor_id,
            "version": actor.version,
            "state": actor.get_snapshot_state(),
            "node": self.node_id,
            "shard": shard,
        }


def _stored(events: list[Any]) -> list[dict[str, Any]]:
    """What an answer says about each stored event of a command."""
    return [
        {
            "sequence": e.sequence,
            "version": e.version,
            "event_type": e.event_type,
            "metadata": dict(e.metadata),
        }
        for e in events
    ]


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _string_map(value: object) -> dict[str, str]:
    """A request's event metadata, kept only if it is a map of strings (the wire format's)."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
