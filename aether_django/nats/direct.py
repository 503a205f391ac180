"""Direct gets: read stored messages without a consumer.

A single message (an actor's last event, the first event at or after a sequence, a
KV entry) goes through nats-py's public ``JetStreamManager.get_msg(direct=True)``;
nats-py has no API for batched and multi-subject gets, so those are written here:
one request, many answers, ended by a status message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import RawStreamMsg

from .api import direct_get_subject
from .headers import STATUS

__all__ = ["direct_get", "direct_get_batch", "direct_get_into", "direct_get_last"]


# The JetStream context last used on a connection, with its timeout, kept on the
# connection itself (a context refers to its connection, so a table keyed by
# connections would keep them alive): making one costs about 4 µs, a few per cent of
# a head read, and reads mostly use one timeout.
_CONTEXT = "_aether_jetstream"


def _jetstream(nc: Any, timeout: float) -> Any:
    kept = getattr(nc, _CONTEXT, None)
    if kept is not None and kept[0] == timeout:
        return kept[1]
    js = nc.jetstream(timeout=timeout)
    setattr(nc, _CONTEXT, (timeout, js))
    return js


async def direct_get(
    nc: Any,
    stream: str,
    timeout: float,
    *,
    last_by_subject: str | None = None,
    seq: int | None = None,
    next_by_subject: str | None = None,
) -> RawStreamMsg | None:
    """One stored message of ``stream``, or None when there is none.

    ``last_by_subject``: the subject's last message. ``seq`` with ``next_by_subject``:
    the subject's first message at or after ``seq``. Raises nats-py's errors as they
    are: NoRespondersError when the stream (or JetStream) is not there,
    ServiceUnavailableError (503) and APIError (``code`` 408 and others) for the
    server's other answers, TimeoutError.
    """
    js = _jetstream(nc, timeout)
    try:
        if last_by_subject is not None:
            msg: RawStreamMsg = await js.get_msg(stream, subject=last_by_subject, direct=True)
        else:
            msg = await js.get_msg(stream, seq=seq, subject=next_by_subject, direct=True, next=True)
    except nats.js.errors.NotFoundError:
        return None
    return msg


async def direct_get_last(
    nc: Any, stream: str, subject: str, timeout: float
) -> RawStreamMsg | None:
    """The last message on ``subject`` in ``stream``, or None when there is none."""
    return await direct_get(nc, stream, timeout, last_by_subject=subject)


async def direct_get_batch(
    nc: Any, stream: str, request: dict[str, Any], timeout: float
) -> list[Msg]:
    """The messages a batched (or ``multi_last``) direct get returns, up to the
    end-of-batch marker."""
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
        if msg.headers and STATUS in msg.headers:
            if not done.done():
                done.set_result(msg)
        elif not done.done():
            received.append(msg)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        await nc.publish(direct_get_subject(stream), json.dumps(request).encode(), reply=inbox)
        return await asyncio.wait_for(done, timeout)
    finally:
        with contextlib.suppress(nats.errors.Error, OSError):
            await sub.unsubscribe()
