"""Small helpers over the JetStream wire API that nats-py does not wrap: direct gets and acks.

Primitives: no Django, no settings. Used by the cluster coordinator; each call
is one request (or one batched request) on a connection the caller supplies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from .errors import InvalidNameError
from .names import validate_namespace
from .patterns import is_exact

__all__ = [
    "ERR_WRONG_LAST_SEQUENCE",
    "JetStreamRefused",
    "direct_get_batch",
    "direct_get_into",
    "direct_get_last",
    "event_namespace",
    "list_event_streams",
    "parse_ack",
]

#: Error code of a write refused because the subject moved on.
ERR_WRONG_LAST_SEQUENCE = 10071


class JetStreamRefused(Exception):
    """The server refused a write; ``code`` is JetStream's error code."""

    def __init__(self, code: int | None, description: str) -> None:
        self.code = code
        self.description = description
        super().__init__(f"{description} (code {code})")


def parse_ack(reply: Msg) -> dict[str, Any]:
    """The publish acknowledgement of ``reply``; JetStreamRefused when it is an error."""
    doc: dict[str, Any] = json.loads(reply.data)
    error = doc.get("error")
    if error:
        raise JetStreamRefused(error.get("err_code"), str(error.get("description")))
    return doc


async def direct_get_last(nc: Any, stream: str, subject: str, timeout: float) -> Msg | None:
    """The last message on ``subject`` in ``stream``, or None when there is none."""
    reply: Msg = await nc.request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", timeout=timeout)
    if reply.headers and reply.headers.get("Status"):
        if reply.headers["Status"] == "404":
            return None
        raise nats.errors.Error(f"direct get answered status {reply.headers['Status']}")
    return reply


async def direct_get_batch(
    nc: Any, stream: str, request: dict[str, Any], timeout: float
) -> list[Msg]:
    """The messages a batched direct get returns (up to the end-of-batch marker)."""
    received: list[Msg] = []
    await direct_get_into(nc, stream, request, timeout, received)
    return received


async def direct_get_into(
    nc: Any, stream: str, request: dict[str, Any], timeout: float, received: list[Msg]
) -> Msg:
    """One batched direct get: append its messages to ``received``; return the status
    message that ends the batch (204 with ``Nats-Num-Pending``, 404, ...).

    Each call has its own reply subject, so a late answer to a call that timed out
    never mixes into another.
    """
    done: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Msg) -> None:
        if msg.headers and "Status" in msg.headers:
            if not done.done():
                done.set_result(msg)
        elif not done.done():
            received.append(msg)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        return await asyncio.wait_for(done, timeout)
    finally:
        with contextlib.suppress(nats.errors.Error, OSError):
            await sub.unsubscribe()


def event_namespace(config: dict[str, Any], subject_prefix: str) -> str | None:
    """The namespace an events stream belongs to, from its metadata (or its subjects)."""
    namespace = (config.get("metadata") or {}).get("aether_namespace")
    if namespace:
        return str(namespace)
    prefix = subject_prefix + "."
    for subject in config.get("subjects") or ():
        if subject.startswith(prefix) and subject.endswith(".*"):
            return str(subject[len(prefix) : -2])
    return None


def _addressable(namespace: str) -> bool:
    """Whether ``namespace`` is a valid name. A stream an earlier release made for a
    spelling refused now ("a__b") cannot be read or written through any API, so the
    listings leave it out rather than offer it and fail on it."""
    try:
        validate_namespace(namespace)
    except InvalidNameError:
        return False
    return True


async def list_event_streams(
    nc: Any, subject_prefix: str, timeout: float, *, pattern: str | None = None
) -> list[tuple[str, str, dict[str, Any]]]:
    """Every events stream under ``subject_prefix``: (stream, namespace, stream info).

    With an exact namespace as ``pattern`` the server lists only that namespace's
    stream; a wildcard pattern still lists them all (the caller matches them).
    """
    found: list[tuple[str, str, dict[str, Any]]] = []
    offset = 0
    subject = f"{subject_prefix}.>"
    if pattern is not None and is_exact(pattern):
        subject = f"{subject_prefix}.{pattern}.*"
    while True:
        request = {"subject": subject, "offset": offset}
        reply = await nc.request(
            "$JS.API.STREAM.LIST", json.dumps(request).encode(), timeout=timeout
        )
        doc = json.loads(reply.data)
        if "error" in doc:
            raise JetStreamRefused(doc["error"].get("err_code"), doc["error"].get("description"))
        streams = doc.get("streams") or []
        for info in streams:
            config = info.get("config") or {}
            namespace = event_namespace(config, subject_prefix)
            if namespace and _addressable(namespace):
                found.append((config["name"], namespace, info))
        offset += len(streams)
        if not streams or offset >= int(doc.get("total") or 0):
            return found
