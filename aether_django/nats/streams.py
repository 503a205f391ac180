"""STREAM.INFO requests and the paged stream listing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ..names import addressable_namespace, event_namespace, events_subject_filter
from ..patterns import is_exact
from .api import STREAM_LIST, parse_reply, stream_info_subject

__all__ = ["list_event_streams", "list_streams", "stream_info", "stream_info_raw"]


async def stream_info_raw(
    nc: Any, stream: str, timeout: float, request: dict[str, Any] | None = None
) -> bytes:
    """The undecoded STREAM.INFO reply of ``stream`` (``request`` may ask for subjects:
    ``{"subjects_filter": ..., "offset": ...}``). Callers that read only part of a large
    reply decode it themselves; errors are in the document (see :func:`stream_info`)."""
    payload = json.dumps(request).encode() if request else b""
    reply = await nc.request(stream_info_subject(stream), payload, timeout=timeout)
    data: bytes = reply.data
    return data


async def stream_info(
    nc: Any, stream: str, timeout: float, request: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The STREAM.INFO document of ``stream``; JetStreamRefused when the server refuses."""
    return parse_reply(await stream_info_raw(nc, stream, timeout, request))


async def list_streams(nc: Any, subject: str, timeout: float) -> AsyncIterator[dict[str, Any]]:
    """The info document of every stream with a subject matching ``subject``, one
    STREAM.LIST page (the server's cap per reply) at a time."""
    offset = 0
    while True:
        request = {"subject": subject, "offset": offset}
        doc = parse_reply(
            (await nc.request(STREAM_LIST, json.dumps(request).encode(), timeout=timeout)).data
        )
        streams = doc.get("streams") or []
        for info in streams:
            yield info
        offset += len(streams)
        if not streams or offset >= int(doc.get("total") or 0):
            return


async def list_event_streams(
    nc: Any, subject_prefix: str, timeout: float, *, pattern: str | None = None
) -> list[tuple[str, str, dict[str, Any]]]:
    """Every events stream under ``subject_prefix``: (stream, namespace, stream info).

    Which streams count and which namespace each holds is ``aether_django.names``'
    policy; with an exact namespace as ``pattern`` the server lists only that
    namespace's stream, a wildcard pattern still lists them all.
    """
    found: list[tuple[str, str, dict[str, Any]]] = []
    exact = pattern if pattern is not None and is_exact(pattern) else None
    async for info in list_streams(nc, events_subject_filter(subject_prefix, exact), timeout):
        config = info.get("config") or {}
        namespace = event_namespace(config, subject_prefix)
        if namespace and addressable_namespace(namespace):
            found.append((config["name"], namespace, info))
    return found
