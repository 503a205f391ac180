"""The beat lease: which of several ``celery beat`` processes sends the schedule.

The same technique as the leader lease (:mod:`.coordinator`), on the key
``beat`` of the cluster bucket: the lease is created only if absent (expecting
the subject's last sequence), with a per-message TTL, and renewed by its holder
with a compare-and-set on its revision. The revision is the fencing token: a
holder that was paused and whose lease was taken meanwhile learns so from its
next renewal, which the server refuses, before it sends anything.

JetStream counts per-message TTLs in whole seconds (a ``1500ms`` TTL expires
after one second), so the lease's TTL is rounded up to whole seconds here.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from dataclasses import dataclass

from ..aio import Runtime
from ..nats import headers as hdr
from ..nats.api import ERR_WRONG_LAST_SEQUENCE, JetStreamRefused, parse_ack
from .coordinator import ClusterConfig, Coordinator

logger = logging.getLogger(__name__)

__all__ = ["BEAT_KEY", "RUNS_KEY", "BeatHolder", "BeatLease"]

#: The key of the beat lease in the cluster bucket.
BEAT_KEY = "beat"
#: When each schedule entry was last sent (epoch seconds by entry name), so that
#: a beat taking over continues the schedule instead of starting it afresh.
RUNS_KEY = "beat.runs"


@dataclass(frozen=True, slots=True)
class BeatHolder:
    """The beat lease as last read: who holds it, since when, and its revision."""

    beat_id: str
    revision: int
    term: int
    since: float


class BeatLease:
    """One beat's part in the beat lease: take it when free, renew it while held.

    Every method is one or two round trips. ``ttl`` is rounded up to whole
    seconds (the server's unit for message TTLs).
    """

    def __init__(
        self,
        runtime: Runtime,
        beat_id: str,
        config: ClusterConfig | None = None,
        *,
        ttl: float = 2.0,
    ) -> None:
        self.beat_id = beat_id
        self.config = config or ClusterConfig()
        self.ttl = float(max(1, math.ceil(ttl - 1e-9)))
        # The bucket's stream and its raw put/get; the node id is not used.
        self._bucket = Coordinator(runtime, beat_id, self.config)
        #: The lease while this beat holds it (as of its last renewal), else None.
        self.held: BeatHolder | None = None

    async def read(self) -> BeatHolder | None:
        """The current holder, or None when the lease is free."""
        return (await self._read())[0]

    async def _read(self) -> tuple[BeatHolder | None, int]:
        doc, revision = await self._bucket.read_record(BEAT_KEY)
        if doc is None:
            return None, revision
        holder = BeatHolder(
            beat_id=str(doc["beat_id"]),
            revision=revision,
            term=int(doc.get("term") or revision),
            since=float(doc.get("since", 0)),
        )
        return holder, revision

    def _lost(self, held: BeatHolder) -> None:
        """The server refused a write fenced by ``held``: another beat holds the lease."""
        self.held = None
        logger.warning(
            "beat %s lost the beat lease (term %s)",
            self.beat_id,
            held.term,
            extra={"beat": self.beat_id, "term": held.term},
        )

    def _doc(self, term: int | None, since: float) -> bytes:
        return json.dumps({"beat_id": self.beat_id, "term": term, "since": since}).encode()

    async def acquire_or_renew(self) -> BeatHolder | None:
        """Renew the lease if this beat holds it, take it if it is free; return the holder.

        ``self.held`` is set when this beat holds the lease afterwards, None
        otherwise. A renewal the server refuses (the lease expired and someone
        took it, or it was released) means this beat no longer holds it. When
        this returns the lease as held, it was written by this call.
        """
        return await self._acquire_or_renew(adopt=True)

    async def _acquire_or_renew(self, *, adopt: bool) -> BeatHolder | None:
        held = self.held
        if held is not None:
            try:
                revision = await self._bucket._put(
                    BEAT_KEY, self._doc(held.term, held.since), expected=held.revision, ttl=self.ttl
                )
            except JetStreamRefused as exc:
                if exc.code != ERR_WRONG_LAST_SEQUENCE:
                    raise
                self._lost(held)
            else:
                self.held = BeatHolder(self.beat_id, revision, held.term, held.since)
                return self.held
        current, last = await self._read()
        if current is not None and current.beat_id == self.beat_id and adopt:
            # This beat's own lease: a renewal was stored but its reply was lost.
            # Beat ids are unique per process, so nobody else wrote it. Renewed at
            # once, since it is unknown how long ago it was written.
            self.held = current
            return await self._acquire_or_renew(adopt=False)
        if current is not None:
            return current
        since = time.time()
        try:
            revision = await self._bucket._put(
                BEAT_KEY, self._doc(None, since), expected=last, ttl=self.ttl
            )
        except JetStreamRefused as exc:
            if exc.code != ERR_WRONG_LAST_SEQUENCE:
                raise
            return await self.read()  # another beat took it first
        self.held = BeatHolder(self.beat_id, revision, revision, since)
        logger.info(
            "beat %s holds the beat lease (term %s)",
            self.beat_id,
            revision,
            extra={"beat": self.beat_id, "term": revision},
        )
        return self.held

    async def renew_with_runs(self, runs: dict[str, float]) -> BeatHolder | None:
        """Renew the lease and store ``runs`` in one atomic batch, fenced by the lease.

        Returns the lease as renewed, or None (and ``self.held`` is None) when
        this beat no longer holds it: then nothing was stored.
        """
        held = self.held
        if held is None:
            return None
        nc = await self._bucket._nc()
        batch = uuid.uuid4().hex
        await nc.publish(
            self._bucket._key(BEAT_KEY),
            self._doc(held.term, held.since),
            headers={
                hdr.BATCH_ID: batch,
                hdr.BATCH_SEQUENCE: "1",
                hdr.EXPECTED_LAST_SUBJECT_SEQUENCE: str(held.revision),
                hdr.TTL: f"{int(self.ttl)}s",
            },
        )
        reply = await nc.request(
            self._bucket._key(RUNS_KEY),
            json.dumps(runs, sort_keys=True).encode(),
            timeout=self.config.timeout,
            headers={hdr.BATCH_ID: batch, hdr.BATCH_SEQUENCE: "2", hdr.BATCH_COMMIT: "1"},
        )
        try:
            seq = parse_ack(reply.data).seq
        except JetStreamRefused as exc:
            if exc.code != ERR_WRONG_LAST_SEQUENCE:
                raise
            self._lost(held)
            return None
        self.held = BeatHolder(self.beat_id, seq - 1, held.term, held.since)
        return self.held

    async def read_runs(self) -> dict[str, float]:
        """The send times the active beat last stored (empty when none were)."""
        await self._bucket.setup()
        msg = await self._bucket._get(RUNS_KEY)
        if msg is None or not msg.data:
            return {}
        try:
            doc = json.loads(msg.data)
        except ValueError:
            return {}
        return {str(name): float(at) for name, at in doc.items()} if isinstance(doc, dict) else {}

    async def release(self) -> None:
        """Give the lease up at once if this beat holds it, so a standby takes over."""
        held, self.held = self.held, None
        if held is None:
            return
        nc = await self._bucket._nc()
        await nc.request(
            self._bucket._key(BEAT_KEY),
            b"",
            timeout=self.config.timeout,
            headers={
                hdr.KV_OPERATION: "PURGE",
                hdr.ROLLUP: "sub",
                hdr.EXPECTED_LAST_SUBJECT_SEQUENCE: str(held.revision),
            },
        )
