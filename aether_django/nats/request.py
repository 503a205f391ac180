"""Request/reply for the hot paths: one reply subscription per connection, no
``asyncio.wait_for``.

nats-py's ``Client.request`` waits for the reply with ``asyncio.wait_for``, which adds a
future, a callback and one more pass of the event loop between the reply's arrival and
the caller's wake-up, and draws two random bytes from the operating system for each
request's token. A save is one request, so that was a noticeable share of its CPU
(docs/performance.md, store figure 1a). :func:`request` does the same exchange with
nats-py's public API only (``subscribe``, ``publish`` with a reply subject): replies
arrive on one wildcard inbox per connection, each request's token is a counter, and
the caller waits on a plain future with a timer.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from .headers import STATUS, STATUS_NO_RESPONDERS

__all__ = ["request"]


class _Replies:
    """The reply inbox of one connection and the requests waiting on it."""

    def __init__(self, nc: Any) -> None:
        self.prefix = nc.new_inbox() + "."
        self.waiting: dict[str, asyncio.Future[Msg]] = {}
        self.tokens = itertools.count()
        self.ready: asyncio.Future[None] | None = None

    async def start(self, nc: Any) -> None:
        await nc.subscribe(self.prefix + "*", cb=self._on_reply, pending_msgs_limit=-1)

    async def _on_reply(self, msg: Msg) -> None:
        future = self.waiting.pop(msg.subject[len(self.prefix) :], None)
        if future is not None and not future.done():
            future.set_result(msg)


_REPLIES: weakref.WeakKeyDictionary[Any, _Replies] = weakref.WeakKeyDictionary()


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


async def request(
    nc: Any,
    subject: str,
    payload: bytes,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> Msg:
    """Send ``payload`` to ``subject`` and return the reply, like ``nc.request``.

    Raises nats-py's errors as ``nc.request`` does: TimeoutError when no reply came
    within ``timeout``, NoRespondersError when no one listens on ``subject``, and
    whatever ``publish`` raises when the message cannot be sent.
    """
    replies = _REPLIES.get(nc)
    if replies is None:
        replies = _REPLIES[nc] = _Replies(nc)
    if replies.ready is None or (replies.ready.done() and replies.ready.exception()):
        # The first request on this connection subscribes; others wait for it.
        replies.ready = asyncio.ensure_future(replies.start(nc))
    if not replies.ready.done():
        await asyncio.shield(replies.ready)
    replies.ready.result()
    loop = asyncio.get_running_loop()
    token = str(next(replies.tokens))
    future: asyncio.Future[Msg] = loop.create_future()
    replies.waiting[token] = future
    try:
        await nc.publish(subject, payload, reply=replies.prefix + token, headers=headers)
        timer = loop.call_later(timeout, _expire, future)
        try:
            msg = await future
        finally:
            timer.cancel()
    finally:
        replies.waiting.pop(token, None)
    if msg.headers and msg.headers.get(STATUS) == STATUS_NO_RESPONDERS:
        raise nats.errors.NoRespondersError
    return msg
