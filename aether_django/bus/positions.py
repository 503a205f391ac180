"""Where a durable subscription has got to: its positions in the KV bucket ``aether_bus_positions``.

For each stream it reads, a durable subscription named ``name`` keeps the last
stream sequence its subscriber handled, with the ids of the last
:data:`RECENT_IDS` events handled there, under the key ``name.<stream>``
(``{"seq": n, "ids": [...]}``; a bare sequence is the older format, still read).
A position is saved as soon as it changes (while one save is on its way, later
ones wait and are saved together), and once more when the subscription stops.
The key ``name.since`` says when the subscription first started: a namespace it
has no position for is read from then on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from ..events import format_timestamp, parse_timestamp
from .base import Start

# The NATS bus logs under one documented name (docs/operations.md), whichever part logs.
logger = logging.getLogger("aether_django.bus.nats")

#: KV bucket holding the positions of durable subscriptions.
POSITIONS_BUCKET = "aether_bus_positions"
#: Ids of the last events a durable subscription handled, kept per stream with
#: its position, so an event delivered again after a resume is skipped.
RECENT_IDS = 100


class DurablePositions:
    """The saved positions and recently handled event ids of one durable subscription."""

    def __init__(self, name: str, *, start: Start, replicas: int, timeout: float) -> None:
        self.name = name
        self.start = start
        self.replicas = replicas
        self.timeout = timeout
        #: Stream -> the last sequence handled there.
        self.positions: dict[str, int] = {}
        # Stream -> the ids of the last events handled there (saved with the position);
        # _recent_ids is their union, for lookups.
        self._recent: dict[str, collections.deque[str]] = {}
        self._recent_ids: set[str] = set()
        self._written: dict[str, int] = {}
        self._dirty = asyncio.Event()
        self._kv: KeyValue | None = None
        self._saving: asyncio.Task[None] | None = None
        self._stopped = False
        #: When the subscription first started (None on its very first start, when
        #: the requested start applies as it is).
        self.since: datetime | None = None

    def _key(self, stream: str) -> str:
        return f"{self.name}.{stream}"

    async def open(self, nc: Any) -> None:
        """Open (or make) the bucket and learn when the subscription first started."""
        js = nc.jetstream(timeout=self.timeout)
        try:
            self._kv = await js.key_value(POSITIONS_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await js.create_key_value(
                    KeyValueConfig(
                        bucket=POSITIONS_BUCKET,
                        description="positions of aether_django durable subscriptions",
                        history=1,
                        replicas=self.replicas,
                        direct=True,
                    )
                )
            self._kv = await js.key_value(POSITIONS_BUCKET)
        self.since = await self._first_start(self._kv)

    async def _first_start(self, kv: KeyValue) -> datetime | None:
        key = f"{self.name}.since"
        try:
            entry = await kv.get(key)
            return parse_timestamp((entry.value or b"").decode())
        except (nats.js.errors.KeyNotFoundError, ValueError):
            pass
        start = self.start
        since = start if isinstance(start, datetime) else datetime.now(UTC)
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await kv.create(key, format_timestamp(since).encode())
        return None

    async def load(self, nc: Any, stream: str) -> int | None:
        """The saved position in ``stream``; the ids handled there are skipped from now on."""
        # Asked of the bucket by name: a stream may be found while open() is on its way.
        kv = await nc.jetstream(timeout=self.timeout).key_value(POSITIONS_BUCKET)
        try:
            entry = await kv.get(self._key(stream))
        except nats.js.errors.KeyNotFoundError:
            return None
        position, handled = _parse_position(entry.value or b"")
        recent = self._recent[stream] = collections.deque(handled, maxlen=RECENT_IDS)
        self._recent_ids.update(recent)
        return position

    def handled(self, event_id: str) -> bool:
        """Whether the event was handled already (delivered again after a resume)."""
        return event_id in self._recent_ids

    def took(self, stream: str, sequence: int, event_id: str) -> None:
        """The subscriber has handled this event: it is the position to save now."""
        self.positions[stream] = sequence
        recent = self._recent.setdefault(stream, collections.deque(maxlen=RECENT_IDS))
        if len(recent) == RECENT_IDS:
            self._recent_ids.discard(recent[0])
        recent.append(event_id)
        self._recent_ids.add(event_id)
        self._dirty.set()

    def start_saving(self) -> None:
        """Save each handled position as soon as it changes, until :meth:`stop`."""
        self._saving = asyncio.get_running_loop().create_task(self._save())

    async def _save(self) -> None:
        # Checked as well as cancelled: a cancellation that comes as a request is
        # answered can be lost (asyncio.wait_for in Python 3.11).
        while not self._stopped:
            await self._dirty.wait()
            self._dirty.clear()
            await self.write()

    async def write(self) -> None:
        """Save the positions that changed since they were saved last (server-confirmed)."""
        kv = self._kv
        if kv is None:
            return  # stopped before the bucket was opened: nothing was handled
        for stream, seq in list(self.positions.items()):
            if self._written.get(stream) == seq:
                continue
            value = json.dumps({"seq": seq, "ids": list(self._recent.get(stream, ()))})
            try:
                await kv.put(self._key(stream), value.encode())
                self._written[stream] = seq
            except (TimeoutError, nats.errors.Error):
                logger.warning("could not save the position of %s", self._key(stream))

    async def stop(self) -> None:
        """Stop saving as positions change, and save what changed since the last save."""
        self._stopped = True
        if self._saving is not None:
            self._saving.cancel()
            # Ended before the last write, and before its loop may stop.
            await asyncio.wait([self._saving])
        await self.write()


def _parse_position(raw: bytes) -> tuple[int | None, list[str]]:
    """A saved position: ``{"seq": n, "ids": [...]}``, or a bare sequence (older format)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None, []
    if isinstance(doc, int) and not isinstance(doc, bool):
        return doc, []
    if not isinstance(doc, dict):
        return None, []
    seq, ids = doc.get("seq"), doc.get("ids")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None, []
    return seq, [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []
