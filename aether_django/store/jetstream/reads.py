"""Reads: the head cache, direct gets, the version seek, replays and pages of events.

Every read uses JetStream's direct get API (no consumer to create and delete): the
actor's last message for its head, batched gets for replays and pages. Each actor's
head (last sequence, version and event id) is kept in an LRU: it only saves a read
before a write, since a stale entry makes the server refuse the write and the
writer reads again.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import RawStreamMsg

from ... import names, tracing
from ...errors import EventStoreError, ReplayError, StoreUnavailableError
from ...events import Event, ReplayResult, decode_event
from ...nats import headers as hdr
from ...nats.direct import direct_get, direct_get_batch, direct_get_into
from ..base import check_from_version, check_limit, check_page, check_stream_read
from .common import HDR_VERSION, NoStream, Place
from .provisioning import Provisioner
from .retry import ATTEMPT_TIMEOUT, TRANSIENT, Retrier

__all__ = ["REPLAY_CHUNK", "Head", "Reader"]

#: Messages asked for per batched direct get during replay.
REPLAY_CHUNK = 4096
#: Messages a read of the whole stream decodes before it lets the event loop run.
DECODE_SLICE = 256


class Head(NamedTuple):
    """Where an actor's history ends: sequence, version and id of its last event."""

    sequence: int
    version: int
    last_id: str | None = None


def head_of(msg: Msg | RawStreamMsg, actor_id: str) -> tuple[int, int | None]:
    """A message's stream sequence and event version (None when it is corrupt)."""
    headers = msg.headers or {}
    seq = int(headers[hdr.SEQUENCE])
    version_text = headers.get(HDR_VERSION)
    if version_text is not None:
        try:
            return seq, int(version_text)
        except ValueError:
            pass
    try:
        return seq, decode_event(msg.data or b"", sequence=seq, actor_id=actor_id).version
    except ReplayError:
        return seq, None


def _sequence(msg: Msg) -> int:
    return int((msg.headers or {})[hdr.SEQUENCE])


class Reader:
    """Reads one namespace's events and keeps its actors' heads."""

    def __init__(self, place: Place, retry: Retrier, provisioner: Provisioner) -> None:
        self.place = place
        self.retry = retry
        self.provisioner = provisioner
        self.config = retry.config
        # A process-local hint of each actor's head. It only saves a read before a
        # write: a stale entry makes the server refuse the write, and we re-read.
        self.heads: OrderedDict[str, Head] = OrderedDict()

    # --- heads --------------------------------------------------------------
    def remember(self, actor_id: str, head: Head) -> None:
        heads = self.heads
        heads[actor_id] = head
        heads.move_to_end(actor_id)
        if len(heads) > self.config.head_cache_size:
            heads.popitem(last=False)

    async def read_head(self, actor_id: str, deadline: float) -> Head:
        """Read the actor's last event's sequence and version from the server."""
        msg = await self.direct_get(deadline, last_by_subject=self.place.subject_for(actor_id))
        if msg is None:
            head = Head(0, 0)
        else:
            seq, version = head_of(msg, actor_id)
            if version is None:
                # The last message is corrupt: the version is that of the last clean one.
                result = await self.replay(actor_id, 0, deadline)
                version = max((e.version for e in result.events), default=0)
            head = Head(seq, version, (msg.headers or {}).get(hdr.MSG_ID))
        self.remember(actor_id, head)
        return head

    async def latest_version(self, actor_id: str) -> int:
        names.validate_actor_id(actor_id)
        deadline = self.retry.deadline()
        if not await self.provisioner.stream_exists(deadline):
            return 0
        return (await self.read_head(actor_id, deadline)).version

    async def latest_versions(self, actor_ids: Sequence[str]) -> dict[str, int]:
        """Each actor's current version from one batched read of their last messages."""
        versions = {actor_id: 0 for actor_id in actor_ids}
        deadline = self.retry.deadline()
        if not actor_ids or not await self.provisioner.stream_exists(deadline):
            return versions
        by_subject = {self.place.subject_for(actor_id): actor_id for actor_id in actor_ids}
        request = {"multi_last": list(by_subject), "batch": len(by_subject)}
        nc = await self.retry.runtime.connection()
        for msg in await direct_get_batch(nc, self.place.stream, request, self.config.timeout):
            actor_id = by_subject.get((msg.headers or {}).get(hdr.SUBJECT, ""))
            if actor_id is not None:
                version = head_of(msg, actor_id)[1]
                if version is None:  # a corrupt last message: ask the slow way
                    version = (await self.read_head(actor_id, deadline)).version
                versions[actor_id] = version
        return versions

    # --- single messages ----------------------------------------------------
    async def direct_get(
        self,
        deadline: float,
        *,
        last_by_subject: str | None = None,
        seq: int | None = None,
        next_by_subject: str | None = None,
        stream: str | None = None,
    ) -> RawStreamMsg | None:
        """One direct get (see ``nats.direct.direct_get``) on the stream, or on ``stream``;
        None when there is no such message or stream."""
        stream = stream or self.place.stream

        async def once(nc: Any, wait: float) -> RawStreamMsg | None:
            return await direct_get(
                nc,
                stream,
                wait,
                last_by_subject=last_by_subject,
                seq=seq,
                next_by_subject=next_by_subject,
            )

        while True:
            try:
                return await self.retry.retrying(deadline, "direct get", once)
            except nats.errors.NoRespondersError:
                if stream != self.place.stream:
                    raise NoStream from None
                # Either the stream does not exist, or JetStream is restarting.
                if not await self.provisioner.recheck_stream(deadline):
                    return None
            except nats.js.errors.APIError as exc:
                # 503 (ServiceUnavailableError) is retried by retrying() already.
                if exc.code != int(hdr.STATUS_TIMEOUT):
                    raise EventStoreError(
                        f"direct get on {stream!r} answered status {exc.code}"
                    ) from None
            await self.retry.pause(deadline, 0, "direct get")

    async def first_at_or_after(
        self, subject: str, seq: int, deadline: float
    ) -> RawStreamMsg | None:
        return await self.direct_get(deadline, seq=seq, next_by_subject=subject)

    async def seek(self, actor_id: str, from_version: int, head: Head, deadline: float) -> int:
        """The stream sequence of the actor's first event with version >= from_version.

        Binary search over stream sequences: versions grow with sequence along one
        subject, so this costs about log2(stream length) small reads instead of
        reading every earlier event.
        """
        subject = self.place.subject_for(actor_id)
        best, lo, hi = head.sequence, 1, head.sequence - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            msg = await self.first_at_or_after(subject, mid, deadline)
            if msg is None:
                break
            seq, version = head_of(msg, actor_id)
            if seq >= best:
                hi = mid - 1
            elif version is None or version >= from_version:
                # A corrupt message is kept in range so replay reports it.
                best, hi = seq, mid - 1
            else:
                lo = seq + 1
        return best

    async def _start(self, actor_id: str, from_version: int, deadline: float) -> int | None:
        """The stream sequence to read ``actor_id`` from for ``from_version`` on, or
        None when the actor has no event that recent."""
        if from_version <= 1:
            return 1
        head = await self.read_head(actor_id, deadline)
        if head.sequence == 0 or head.version < from_version:
            return None
        return await self.seek(actor_id, from_version, head, deadline)

    # --- batches of messages ------------------------------------------------
    async def get_chunk(
        self,
        subject: str,
        start: int,
        deadline: float,
        received: list[Msg],
        size: int,
        max_bytes: int | None = None,
    ) -> Msg:
        """One batched direct get: append the messages to ``received``, return the status.

        With ``max_bytes`` the server stops once it has sent that many bytes (the
        message that reaches it included).
        """
        timeout = min(self.retry.remaining(deadline), ATTEMPT_TIMEOUT * 2)
        if timeout <= 0:
            raise nats.errors.TimeoutError
        nc = await self.retry.runtime.connection()
        request: dict[str, Any] = {"seq": start, "next_by_subj": subject, "batch": size}
        if max_bytes is not None:
            request["max_bytes"] = max_bytes
        return await direct_get_into(nc, self.place.stream, request, timeout, received)

    async def _batch_get(
        self, subject: str, start: int, deadline: float, most: int | None = None
    ) -> list[Msg]:
        """Every message of ``subject`` from stream sequence ``start`` on (or the first
        ``most`` of them), in order.

        Asks for chunks with batched direct gets. Each attempt has its own reply
        subject, so a late answer to an attempt that timed out is ignored.
        """
        received: list[Msg] = []
        attempt = 0
        while True:
            mark = len(received)
            size = REPLAY_CHUNK if most is None else min(REPLAY_CHUNK, most - mark)
            if size <= 0:
                return received
            try:
                status_msg = await self.get_chunk(subject, start, deadline, received, size)
            except TRANSIENT:
                del received[mark:]
                await self.retry.pause(deadline, attempt, "replay")
                attempt += 1
                continue
            status = status_msg.headers.get("Status") if status_msg.headers else None
            if status == "503":
                raise NoStream
            if status == "404" or len(received) == mark:
                return received
            if status != "204":
                raise EventStoreError(f"replay of {self.place.stream!r} got status {status}")
            pending = int((status_msg.headers or {}).get(hdr.NUM_PENDING, "0") or 0)
            if pending <= 0:
                return received
            start = _sequence(received[-1]) + 1

    # --- events -------------------------------------------------------------
    async def read(
        self, actor_id: str, from_version: int, after_sequence: int, limit: int | None
    ) -> ReplayResult:
        """``get_events_with_errors`` with its arguments checked."""
        names.validate_actor_id(actor_id)
        check_from_version(from_version)
        check_limit(limit)
        deadline = self.retry.deadline()
        if not await self.provisioner.stream_exists(deadline):
            return ReplayResult([], [])
        return await self.replay(
            actor_id, from_version, deadline, max(0, int(after_sequence)), limit
        )

    async def replay(
        self,
        actor_id: str,
        from_version: int,
        deadline: float,
        after_sequence: int = 0,
        limit: int | None = None,
    ) -> ReplayResult:
        """The actor's events from ``from_version`` on (after ``after_sequence`` when
        given), with the messages that did not decode as errors."""
        subject = self.place.subject_for(actor_id)
        if after_sequence > 0:
            start: int | None = after_sequence + 1  # the caller knows where: no search
        else:
            start = await self._start(actor_id, from_version, deadline)
        if start is None:
            return ReplayResult([], [])
        events: list[Event] = []
        errors: list[ReplayError] = []
        while True:
            # With a limit, read no more than is still wanted; older versions before
            # from_version may come first, so go on until enough are in.
            most = None if limit is None else limit - len(events) - len(errors)
            try:
                msgs = await self._batch_get(subject, start, deadline, most)
            except NoStream:
                if not await self.provisioner.recheck_stream(deadline):
                    return ReplayResult([], [])
                raise StoreUnavailableError("JetStream did not answer the replay") from None
            for msg in msgs:
                headers = msg.headers or {}
                seq = int(headers[hdr.SEQUENCE])
                version_text = headers.get(HDR_VERSION)
                if version_text and version_text.isdigit() and int(version_text) < from_version:
                    continue
                try:
                    event = decode_event(
                        msg.data,
                        sequence=seq,
                        actor_id=actor_id,
                        trace_context=tracing.carried(headers) if tracing.enabled else None,
                    )
                except ReplayError as exc:
                    errors.append(exc)
                    continue
                if event.version >= from_version:
                    events.append(event)
            if limit is None or most is None:
                return ReplayResult(events, errors)
            if len(msgs) < most or len(events) + len(errors) >= limit:
                return ReplayResult(events, errors)
            start = _sequence(msgs[-1]) + 1

    async def events_page(
        self, actor_id: str, from_version: int, limit: int, max_bytes: int
    ) -> tuple[list[Event], bool]:
        """A page of at most ``limit`` events and ``max_bytes`` encoded bytes (at least
        one event), and whether more follow.

        Each batched get asks the server for no more than the bytes still wanted, and
        the server stops once it has sent that much; so a page costs its own bytes plus
        at most one event, whatever ``limit`` says, even when events are large.
        """
        names.validate_actor_id(actor_id)
        check_from_version(from_version)
        check_page(limit, max_bytes)
        deadline = self.retry.deadline()
        if not await self.provisioner.stream_exists(deadline):
            return [], False
        subject = self.place.subject_for(actor_id)
        start = await self._start(actor_id, from_version, deadline)
        if start is None:
            return [], False
        events: list[Event] = []
        used = attempt = 0
        while True:
            received: list[Msg] = []
            try:
                status_msg = await self.get_chunk(
                    subject,
                    start,
                    deadline,
                    received,
                    min(REPLAY_CHUNK, limit + 1 - len(events)),
                    max_bytes=max(1, max_bytes - used),
                )
            except TRANSIENT:
                await self.retry.pause(deadline, attempt, "page of events")
                attempt += 1
                continue
            headers = status_msg.headers or {}
            status = headers.get("Status")
            if status == "404" or not received:
                return events, False
            if status == "503":
                raise StoreUnavailableError("JetStream did not answer the read of a page")
            if status != "204":
                raise EventStoreError(f"page of {self.place.stream!r} got status {status}")
            for msg in received:
                used += len(msg.data)
                if len(events) == limit or (events and used > max_bytes):
                    return events, True  # this one is the next page's
                event = decode_event(
                    msg.data,
                    sequence=_sequence(msg),
                    actor_id=actor_id,
                    trace_context=tracing.carried(msg.headers) if tracing.enabled else None,
                )
                if event.version >= from_version:
                    events.append(event)
            if int(headers.get(hdr.NUM_PENDING, "0") or 0) <= 0:
                return events, False
            start = _sequence(received[-1]) + 1

    async def stream_events(
        self, after_sequence: int, limit: int, max_bytes: int | None
    ) -> list[Event]:
        """The namespace's events after ``after_sequence`` in stream order (see
        ``EventStore.aget_stream_events``): batched direct gets with the namespace's
        wildcard subject as ``next_by_subj``, so every actor's events come in one pass."""
        check_stream_read(after_sequence, limit, max_bytes)
        deadline = self.retry.deadline()
        if not await self.provisioner.stream_exists(deadline):
            return []
        subject = self.place.all_subjects
        cut = len(self.place.subject_prefix) + 1
        events: list[Event] = []
        start, used, attempt = after_sequence + 1, 0, 0
        while len(events) < limit:
            received: list[Msg] = []
            try:
                status_msg = await self.get_chunk(
                    subject,
                    start,
                    deadline,
                    received,
                    min(REPLAY_CHUNK, limit - len(events)),
                    max_bytes=None if max_bytes is None else max(1, max_bytes - used),
                )
            except TRANSIENT:
                await self.retry.pause(deadline, attempt, "read of the stream")
                attempt += 1
                continue
            headers = status_msg.headers or {}
            status = headers.get("Status")
            if status == "404" or not received:
                return events
            if status == "503":
                raise StoreUnavailableError("JetStream did not answer the read of the stream")
            if status != "204":
                raise EventStoreError(f"read of {self.place.stream!r} got status {status}")
            for index, msg in enumerate(received):
                if index % DECODE_SLICE == DECODE_SLICE - 1:
                    # A chunk takes tens of milliseconds to decode: let the loop's other
                    # work (the process's saves, live deliveries, the reader's own
                    # caller handing a batch to its database thread) run in between.
                    await asyncio.sleep(0)
                msg_headers = msg.headers or {}
                seq = int(msg_headers[hdr.SEQUENCE])
                used += len(msg.data)
                if events and max_bytes is not None and used > max_bytes:
                    return events
                try:
                    actor_id = names.actor_id_from_token(msg_headers.get(hdr.SUBJECT, "")[cut:])
                except ValueError:  # not a token the store writes: the event's own id
                    actor_id = ""
                try:
                    events.append(
                        decode_event(
                            msg.data,
                            sequence=seq,
                            actor_id=actor_id,
                            trace_context=(
                                tracing.carried(msg_headers) if tracing.enabled else None
                            ),
                        )
                    )
                except ReplayError:
                    # Never passed over: the events before it now, the error to the
                    # read that starts at it.
                    if events:
                        return events
                    raise
            if int(headers.get(hdr.NUM_PENDING, "0") or 0) <= 0:
                return events
            if max_bytes is not None and used >= max_bytes:
                return events
            start = _sequence(received[-1]) + 1
        return events
