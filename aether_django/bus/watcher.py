"""Which event streams a subscription reads: the streams its pattern and ``readable`` cover.

A :class:`StreamWatcher` finds them three ways, so that a namespace created while a
wildcard subscription runs is covered too: the first listing, JetStream's
stream-created advisories (subscribed to before that listing, so no stream falls
between the two), and a rescan every :data:`RESCAN_INTERVAL` seconds for streams
whose advisory was missed (a reconnect, a server that did not send it). Each stream
it finds is handed to ``on_stream``; streams found twice are left to ``on_stream``
to skip. It also notes each stream's largest message size, which bounds what the
NATS client must be allowed to queue for a consumer of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from nats.aio.msg import Msg

from ..names import event_namespace
from ..nats.api import STREAM_CREATED_ADVISORIES, JetStreamRefused
from ..nats.streams import list_event_streams, stream_info
from ..patterns import matches

# The NATS bus logs under one documented name (docs/operations.md), whichever part logs.
logger = logging.getLogger("aether_django.bus.nats")

#: Seconds between rescans for namespaces created while advisories were missed.
RESCAN_INTERVAL = 10.0

#: Called with (stream, namespace, created_later, last sequence when listed, if known).
OnStream = Callable[[str, str, bool, int | None], Awaitable[None]]


class StreamWatcher:
    """Discovers the event streams of the namespaces that ``pattern`` and ``readable`` cover."""

    def __init__(
        self,
        *,
        subject_prefix: str,
        timeout: float,
        pattern: str,
        readable: frozenset[str] | None,
        on_stream: OnStream,
        known: Callable[[str], bool],
    ) -> None:
        self.subject_prefix = subject_prefix
        self.timeout = timeout
        self.pattern = pattern
        # Only namespaces matching one of these are read (None: every match of pattern).
        self.readable = readable
        self._on_stream = on_stream
        # Whether a stream is read already: its advisory needs no stream info then.
        self._known = known
        #: Stream -> its max_msg_size, for the streams that set one.
        self.largest: dict[str, int] = {}
        self._nc: Any = None
        self._advisories: Any = None
        self._rescans: asyncio.Task[None] | None = None
        self._stopped = False

    def covers(self, namespace: str) -> bool:
        """Whether ``namespace`` is read: the pattern and ``readable`` match it."""
        if not matches(self.pattern, namespace):
            return False
        return self.readable is None or any(matches(p, namespace) for p in self.readable)

    async def listen(self, nc: Any) -> None:
        """Hear of streams created from now on; call before :meth:`scan`."""
        self._nc = nc
        self._advisories = await nc.subscribe(STREAM_CREATED_ADVISORIES, cb=self._on_created)

    async def scan(self) -> None:
        """Hand over the streams there are now, then rescan now and then until stopped."""
        for stream, namespace, last_seq in await self.list_streams():
            await self._on_stream(stream, namespace, False, last_seq)
        self._rescans = asyncio.get_running_loop().create_task(self._rescan())

    async def list_streams(self) -> list[tuple[str, str, int]]:
        """(stream, namespace, last sequence) of each covered stream there is now."""
        streams = await list_event_streams(
            self._nc, self.subject_prefix, self.timeout, pattern=self.pattern
        )
        for stream, _, info in streams:
            self._note_largest(stream, info.get("config") or {})
        return [
            (stream, namespace, int((info.get("state") or {}).get("last_seq") or 0))
            for stream, namespace, info in streams
            if self.covers(namespace)
        ]

    def _note_largest(self, stream: str, config: Mapping[str, Any]) -> None:
        largest = config.get("max_msg_size")
        if isinstance(largest, int) and largest > 0:
            self.largest[stream] = largest

    async def _on_created(self, msg: Msg) -> None:
        try:
            stream = json.loads(msg.data).get("stream", "")
        except ValueError:
            return
        if not stream.endswith("_events") or self._known(stream):
            return
        try:
            info = await stream_info(self._nc, stream, self.timeout)
        except JetStreamRefused:
            return  # deleted again already, or not ours to read
        config = info.get("config") or {}
        self._note_largest(stream, config)
        namespace = event_namespace(config, self.subject_prefix)
        if namespace and self.covers(namespace):
            await self._on_stream(stream, namespace, True, None)

    async def _rescan(self) -> None:
        while not self._stopped:
            await asyncio.sleep(RESCAN_INTERVAL)
            try:
                for stream, namespace, _ in await self.list_streams():
                    await self._on_stream(stream, namespace, True, None)
            except Exception:
                logger.debug("stream rescan failed", exc_info=True)

    async def stop(self) -> None:
        """Stop listening and rescanning."""
        self._stopped = True
        if self._rescans is not None:
            self._rescans.cancel()
            await asyncio.wait([self._rescans])
        if self._advisories is not None:
            with contextlib.suppress(Exception):
                await self._advisories.unsubscribe()
