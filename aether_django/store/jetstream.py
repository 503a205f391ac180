"""The JetStream event store: one stream per namespace, one subject per actor.

Safety comes from the server, not from this process:

* every save carries ``Nats-Expected-Last-Subject-Sequence`` (the stream sequence
  of the actor's last event), so two writers anywhere cannot both append after
  the same event;
* several events of one save go in one atomic batch (all or nothing);
* ``Nats-Msg-Id`` is the event id, so a publish repeated after a lost ack is
  recognised instead of stored twice.

Reads use JetStream's direct get API (no consumer to create and delete): the
actor's last message for its head, and batched gets for replay.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar, overload

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RawStreamMsg,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from .. import metrics, names
from ..errors import (
    EventStoreError,
    NamespaceCollisionError,
    PayloadTooLargeError,
    ReplayError,
    SaveOutcomeUnknownError,
    StoreConfigurationError,
    StoreUnavailableError,
    VersionConflictError,
)
from ..events import (
    ActorSnapshot,
    Event,
    ReplayResult,
    decode_event,
    decode_snapshot,
    encode_event,
    encode_snapshot,
    validate_event,
    with_sequence,
)
from ..nats import api
from ..nats import headers as hdr
from ..nats.direct import direct_get, direct_get_batch, direct_get_into
from ..nats.request import request
from ..nats.streams import list_event_streams, stream_info_raw
from .base import (
    ActorPage,
    AsyncFirstEventStore,
    NamespaceInfo,
    Runtime,
    StoreConfig,
    actor_order,
    check_batch,
    check_from_version,
    check_limit,
    check_page,
    check_snapshot,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["JetStreamEventStore"]

#: Header duplicating the event's version, so heads and seeks need no JSON decoding.
HDR_VERSION = "Aether-Version"
#: Stream metadata key recording which namespace a stream belongs to.
META_NAMESPACE = names.META_NAMESPACE

#: Messages asked for per batched direct get during replay.
_REPLAY_CHUNK = 4096
#: Longest a single attempt waits before it is retried within the operation's deadline.
_ATTEMPT_TIMEOUT = 1.0

# Errors after which the same request may simply be sent again.
_TRANSIENT = (
    nats.errors.TimeoutError,
    asyncio.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.js.errors.ServiceUnavailableError,
    OSError,
)


class _Head(NamedTuple):
    """Where an actor's history ends: sequence, version and id of its last event."""

    sequence: int
    version: int
    last_id: str | None = None


class _Tokens(Sequence[str]):
    """The subject tokens of one STREAM.INFO reply, in order, decoded as far as read.

    nats-server writes the subjects map with Go's JSON encoder, which orders map keys,
    so the reply's keys already come sorted; a page near the front then decodes a
    page's worth of a reply that may hold 100,000 subjects, instead of all of it.
    Should a key ever come out of order, every key is decoded and sorted instead.
    """

    _KEY = re.compile(rb'"((?:[^"\\]|\\.)*)":')

    def __init__(self, raw: bytes, start: int, end: int, prefix: str) -> None:
        self._raw, self._end = raw, end
        self._prefix = len(prefix.encode())
        self._keys = self._KEY.finditer(raw, start, end)
        # Every key is followed by '":' once: a count without decoding any.
        self._count = raw.count(b'":', start, end)
        self._decoded: list[str] = []

    def _token(self, key: bytes) -> str:
        text = json.loads(b'"' + key + b'"') if b"\\" in key else key.decode()
        return str(text)[self._prefix :]

    def _fill(self, n: int) -> None:
        decoded = self._decoded
        for match in self._keys:
            token = self._token(match.group(1))
            if decoded and token < decoded[-1]:
                # Not in order after all: decode the rest and sort everything.
                rest = [self._token(m.group(1)) for m in self._keys]
                self._decoded = sorted([*decoded, token, *rest])
                self._count = len(self._decoded)
                return
            decoded.append(token)
            if len(decoded) >= n:
                return

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            stop = index.indices(self._count)[1]
            self._fill(stop)
            return self._decoded[index]
        if index < 0:
            index += self._count
        self._fill(index + 1)
        return self._decoded[index]


class _Window(NamedTuple):
    """Part of a stream's subject listing, sorted, as one STREAM.INFO reply gave it."""

    #: The stream's (number of subjects, first sequence) when read: while both stay the
    #: same, no actor came or went (history is only appended to, or aged out from the
    #: front), so the window still holds.
    key: tuple[int, int]
    #: The rank of ``tokens[0]`` in the whole sorted listing.
    offset: int
    tokens: Sequence[str]
    #: Subjects in the whole listing.
    total: int
    #: The stream's last sequence when read: new actors have their first event after it.
    last_seq: int


#: Messages (and bytes of them) a kept window reads to learn the actors created since it
#: was read; beyond that, the window is read again instead.
_CATCH_UP_MESSAGES = 1000
_CATCH_UP_BYTES = 4 * 1024 * 1024


#: Listing windows kept, by (runtime, stream), least recently used first. A window holds
#: up to the server's cap of subjects per reply (100,000), so only a few are kept.
_WINDOWS: OrderedDict[tuple[int, str], _Window] = OrderedDict()
_WINDOWS_KEPT = 4
_WINDOWS_LOCK = threading.Lock()


class _WrongLastSequence(Exception):
    """The server refused a write because the actor's subject moved on."""


class _DuplicateBatch(Exception):
    """The server refused a batch because its ids are already stored."""


class _NoStream(Exception):
    """The stream (or bucket) does not exist, or JetStream is not answering."""


class _NotSent(Exception):
    """A write was refused before it left this process: nothing can have been stored."""


class _Ambiguous(Exception):
    """A write was sent but no answer came: it may or may not be stored."""


class JetStreamEventStore(AsyncFirstEventStore):
    """Event store for one namespace on NATS JetStream.

    ``runtime`` supplies the NATS connection of the running loop and the bridge
    for sync calls (normally ``aether_django.runtime.get_runtime()``).
    """

    def __init__(
        self, namespace: str, *, runtime: Runtime, config: StoreConfig | None = None
    ) -> None:
        self.namespace = names.validate_namespace(namespace)
        self.runtime = runtime
        self.config = config or StoreConfig()
        self.stream_name = names.stream_name(namespace)
        self.bucket_name = names.snapshot_bucket(namespace)
        self._subject_prefix = f"{self.config.subject_prefix}.{namespace}"
        # A process-local hint of each actor's head. It only saves a read before a
        # write: a stale entry makes the server refuse the write, and we re-read.
        self._heads: OrderedDict[str, _Head] = OrderedDict()
        self._stream_verified = False
        #: The stream was verified once in this process (a later "not found" is then
        #: more likely a cluster re-electing than a missing stream).
        self._stream_seen = False
        self._bucket_ready = False

    def __repr__(self) -> str:
        return f"<JetStreamEventStore namespace={self.namespace!r} stream={self.stream_name!r}>"

    # --- names --------------------------------------------------------------
    def subject_for(self, actor_id: str) -> str:
        """The subject that holds ``actor_id``'s events."""
        return f"{self._subject_prefix}.{names.actor_token(actor_id)}"

    def _snapshot_subject(self, actor_id: str) -> str:
        return api.kv_key_subject(self.bucket_name, names.actor_token(actor_id))

    # --- plumbing -----------------------------------------------------------
    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.config.timeout

    def _remaining(self, deadline: float) -> float:
        return deadline - asyncio.get_running_loop().time()

    async def _pause(self, deadline: float, attempt: int, what: str) -> None:
        """Back off before another attempt, or give up when the deadline has passed."""
        remaining = self._remaining(deadline)
        if remaining <= 0:
            raise StoreUnavailableError(
                f"NATS did not answer within {self.config.timeout}s ({what}, "
                f"namespace {self.namespace!r})"
            )
        await asyncio.sleep(min(0.02 * (2**attempt), 0.5, remaining))

    async def _request(
        self,
        subject: str,
        payload: bytes,
        deadline: float,
        headers: dict[str, str] | None = None,
    ) -> Msg:
        """One request/reply; raise StoreUnavailableError once the deadline passes.

        Transient failures are retried, so only use this for requests that are
        safe to repeat (reads, and writes whose repetition the caller resolves).
        """

        async def once(nc: Any, wait: float) -> Msg:
            try:
                reply: Msg = await nc.request(subject, payload, timeout=wait, headers=headers)
            except nats.errors.NoRespondersError:
                raise _NoStream from None
            return reply

        result: Msg = await self._retrying(deadline, f"request to {subject}", once)
        return result

    async def _js_call(self, deadline: float, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a JetStream management method, retrying transient failures."""

        async def once(nc: Any, wait: float) -> Any:
            return await getattr(nc.jetstream(timeout=wait), method)(*args, **kwargs)

        return await self._retrying(deadline, method, once)

    async def _retrying(
        self, deadline: float, what: str, once: Callable[[Any, float], Awaitable[T]]
    ) -> T:
        """Run ``once(connection, attempt_timeout)`` until it succeeds or the deadline passes."""
        attempt = 0
        while True:
            timeout = min(self._remaining(deadline), _ATTEMPT_TIMEOUT)
            try:
                if timeout <= 0:
                    raise nats.errors.TimeoutError
                return await once(await self.runtime.connection(), timeout)
            except _TRANSIENT:
                await self._pause(deadline, attempt, what)
                attempt += 1

    # --- stream and bucket --------------------------------------------------
    def _stream_config(self) -> StreamConfig:
        cfg = self.config
        return StreamConfig(
            name=self.stream_name,
            description=f"aether_django events of namespace {self.namespace}",
            subjects=[f"{self._subject_prefix}.*"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType(cfg.storage),
            num_replicas=cfg.replicas,
            max_age=cfg.max_age or None,
            max_bytes=cfg.max_bytes,
            # Room for our headers on top of the largest event we accept.
            max_msg_size=cfg.max_event_bytes + 4096,
            discard=DiscardPolicy.NEW,
            duplicate_window=cfg.duplicate_window,
            deny_delete=cfg.immutable,
            deny_purge=cfg.immutable,
            allow_direct=True,
            allow_atomic=True,
            metadata={META_NAMESPACE: self.namespace},
        )

    def _verify(self, info: Any) -> None:
        owner = (info.config.metadata or {}).get(META_NAMESPACE)
        if owner is not None and owner != self.namespace:
            raise NamespaceCollisionError(
                f"stream {self.stream_name!r} belongs to namespace {owner!r}, not "
                f"{self.namespace!r}; rename one of them"
            )
        if not info.config.allow_direct or not info.config.allow_atomic:
            raise StoreConfigurationError(
                f"stream {self.stream_name!r} exists without direct get or atomic batches; "
                "enable allow_direct and allow_atomic on it (nats stream edit) or recreate it"
            )
        self._stream_verified = True
        self._stream_seen = True

    async def _stream_exists(self, deadline: float) -> bool:
        """Whether the namespace's stream exists (and is ours); cached once true."""
        if self._stream_verified:
            return True
        try:
            info = await self._js_call(deadline, "stream_info", self.stream_name)
        except nats.js.errors.NotFoundError:
            return False
        self._verify(info)
        return True

    async def _ensure_stream(self, deadline: float) -> None:
        """Create the namespace's stream on first write."""
        if await self._stream_exists(deadline):
            return
        try:
            info = await self._js_call(deadline, "add_stream", self._stream_config())
        except nats.js.errors.BadRequestError as exc:
            # Another process may have created it a moment ago; use theirs.
            if not await self._stream_exists(deadline):
                if self._stream_seen:
                    # It existed a moment ago: while a JetStream cluster re-elects, the
                    # stream can be "not found" and creating it refused ("no suitable
                    # peers for placement"). An outage, not a configuration error.
                    raise StoreUnavailableError(
                        f"stream {self.stream_name!r} is not available ({exc.description}); "
                        "nothing was stored"
                    ) from None
                raise StoreConfigurationError(
                    f"cannot create stream {self.stream_name!r}: {exc.description}"
                ) from None
            return
        except nats.js.errors.APIError as exc:
            raise StoreConfigurationError(
                f"cannot create stream {self.stream_name!r}: {exc.description}"
            ) from None
        self._verify(info)
        logger.info("created stream %s for namespace %s", self.stream_name, self.namespace)

    async def _ensure_bucket(self, deadline: float) -> None:
        if self._bucket_ready:
            return
        await self._ensure_stream(deadline)
        cfg = self.config
        try:
            await self._js_call(deadline, "key_value", self.bucket_name)
        except nats.js.errors.BucketNotFoundError:
            try:
                await self._js_call(
                    deadline,
                    "create_key_value",
                    KeyValueConfig(
                        bucket=self.bucket_name,
                        description=f"aether_django snapshots of namespace {self.namespace}",
                        history=1,
                        storage=StorageType(cfg.storage),
                        replicas=cfg.replicas,
                        max_value_size=cfg.max_event_bytes + 4096,
                        # Snapshots are read with direct get, like events.
                        direct=True,
                    ),
                )
            except nats.js.errors.BadRequestError:
                # Created concurrently by someone else: fine if it now exists.
                await self._js_call(deadline, "key_value", self.bucket_name)
        self._bucket_ready = True

    # --- reading ------------------------------------------------------------
    async def _direct_get(
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
        stream = stream or self.stream_name

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
                return await self._retrying(deadline, "direct get", once)
            except nats.errors.NoRespondersError:
                if stream != self.stream_name:
                    raise _NoStream from None
                # Either the stream does not exist, or JetStream is restarting.
                self._stream_verified = False
                if not await self._stream_exists(deadline):
                    return None
            except nats.js.errors.APIError as exc:
                # 503 (ServiceUnavailableError) is retried by _retrying already.
                if exc.code != int(hdr.STATUS_TIMEOUT):
                    raise EventStoreError(
                        f"direct get on {stream!r} answered status {exc.code}"
                    ) from None
            await self._pause(deadline, 0, "direct get")

    def _head_of(self, msg: Msg | RawStreamMsg, actor_id: str) -> tuple[int, int | None]:
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

    async def _read_head(self, actor_id: str, deadline: float) -> _Head:
        """Read the actor's last event's sequence and version from the server."""
        msg = await self._direct_get(deadline, last_by_subject=self.subject_for(actor_id))
        if msg is None:
            head = _Head(0, 0)
        else:
            seq, version = self._head_of(msg, actor_id)
            if version is None:
                # The last message is corrupt: the version is that of the last clean one.
                result = await self._replay(actor_id, 0, deadline)
                version = max((e.version for e in result.events), default=0)
            head = _Head(seq, version, (msg.headers or {}).get(hdr.MSG_ID))
        self._remember(actor_id, head)
        return head

    def _remember(self, actor_id: str, head: _Head) -> None:
        heads = self._heads
        heads[actor_id] = head
        heads.move_to_end(actor_id)
        if len(heads) > self.config.head_cache_size:
            heads.popitem(last=False)

    async def _first_at_or_after(
        self, subject: str, seq: int, deadline: float
    ) -> RawStreamMsg | None:
        return await self._direct_get(deadline, seq=seq, next_by_subject=subject)

    async def _seek(self, actor_id: str, from_version: int, head: _Head, deadline: float) -> int:
        """The stream sequence of the actor's first event with version >= from_version.

        Binary search over stream sequences: versions grow with sequence along one
        subject, so this costs about log2(stream length) small reads instead of
        reading every earlier event.
        """
        subject = self.subject_for(actor_id)
        best, lo, hi = head.sequence, 1, head.sequence - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            msg = await self._first_at_or_after(subject, mid, deadline)
            if msg is None:
                break
            seq, version = self._head_of(msg, actor_id)
            if seq >= best:
                hi = mid - 1
            elif version is None or version >= from_version:
                # A corrupt message is kept in range so replay reports it.
                best, hi = seq, mid - 1
            else:
                lo = seq + 1
        return best

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
            size = _REPLAY_CHUNK if most is None else min(_REPLAY_CHUNK, most - mark)
            if size <= 0:
                return received
            try:
                status_msg = await self._get_chunk(subject, start, deadline, received, size)
            except _TRANSIENT:
                del received[mark:]
                await self._pause(deadline, attempt, "replay")
                attempt += 1
                continue
            status = status_msg.headers.get("Status") if status_msg.headers else None
            if status == "503":
                raise _NoStream
            if status == "404" or len(received) == mark:
                return received
            if status != "204":
                raise EventStoreError(f"replay of {self.stream_name!r} got status {status}")
            pending = int((status_msg.headers or {}).get(hdr.NUM_PENDING, "0") or 0)
            if pending <= 0:
                return received
            start = int(received[-1].headers[hdr.SEQUENCE]) + 1  # type: ignore[index]

    async def _get_chunk(
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
        timeout = min(self._remaining(deadline), _ATTEMPT_TIMEOUT * 2)
        if timeout <= 0:
            raise nats.errors.TimeoutError
        nc = await self.runtime.connection()
        request: dict[str, Any] = {"seq": start, "next_by_subj": subject, "batch": size}
        if max_bytes is not None:
            request["max_bytes"] = max_bytes
        return await direct_get_into(nc, self.stream_name, request, timeout, received)

    async def _replay(
        self,
        actor_id: str,
        from_version: int,
        deadline: float,
        after_sequence: int = 0,
        limit: int | None = None,
    ) -> ReplayResult:
        subject = self.subject_for(actor_id)
        start = 1
        if after_sequence > 0:
            start = after_sequence + 1  # the caller knows where to start: no search
        elif from_version > 1:
            head = await self._read_head(actor_id, deadline)
            if head.sequence == 0 or head.version < from_version:
                return ReplayResult([], [])
            start = await self._seek(actor_id, from_version, head, deadline)
        events: list[Event] = []
        errors: list[ReplayError] = []
        while True:
            # With a limit, read no more than is still wanted; older versions before
            # from_version may come first, so go on until enough are in.
            most = None if limit is None else limit - len(events) - len(errors)
            try:
                msgs = await self._batch_get(subject, start, deadline, most)
            except _NoStream:
                self._stream_verified = False
                if not await self._stream_exists(deadline):
                    return ReplayResult([], [])
                raise StoreUnavailableError("JetStream did not answer the replay") from None
            for msg in msgs:
                headers = msg.headers or {}
                seq = int(headers[hdr.SEQUENCE])
                version_text = headers.get(HDR_VERSION)
                if version_text and version_text.isdigit() and int(version_text) < from_version:
                    continue
                try:
                    event = decode_event(msg.data, sequence=seq, actor_id=actor_id)
                except ReplayError as exc:
                    errors.append(exc)
                    continue
                if event.version >= from_version:
                    events.append(event)
            if limit is None or most is None:
                return ReplayResult(events, errors)
            if len(msgs) < most or len(events) + len(errors) >= limit:
                return ReplayResult(events, errors)
            start = int(msgs[-1].headers[hdr.SEQUENCE]) + 1  # type: ignore[index]

    async def aget_events_page(
        self, actor_id: str, from_version: int = 0, *, limit: int, max_bytes: int
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
        deadline = self._deadline()
        if not await self._stream_exists(deadline):
            return [], False
        subject = self.subject_for(actor_id)
        start = 1
        if from_version > 1:
            head = await self._read_head(actor_id, deadline)
            if head.sequence == 0 or head.version < from_version:
                return [], False
            start = await self._seek(actor_id, from_version, head, deadline)
        events: list[Event] = []
        used = attempt = 0
        while True:
            received: list[Msg] = []
            try:
                status_msg = await self._get_chunk(
                    subject,
                    start,
                    deadline,
                    received,
                    min(_REPLAY_CHUNK, limit + 1 - len(events)),
                    max_bytes=max(1, max_bytes - used),
                )
            except _TRANSIENT:
                await self._pause(deadline, attempt, "page of events")
                attempt += 1
                continue
            headers = status_msg.headers or {}
            status = headers.get("Status")
            if status == "404" or not received:
                return events, False
            if status == "503":
                raise StoreUnavailableError("JetStream did not answer the read of a page")
            if status != "204":
                raise EventStoreError(f"page of {self.stream_name!r} got status {status}")
            for msg in received:
                seq = int((msg.headers or {})[hdr.SEQUENCE])
                used += len(msg.data)
                if len(events) == limit or (events and used > max_bytes):
                    return events, True  # this one is the next page's
                event = decode_event(msg.data, sequence=seq, actor_id=actor_id)
                if event.version >= from_version:
                    events.append(event)
            if int(headers.get(hdr.NUM_PENDING, "0") or 0) <= 0:
                return events, False
            start = int((received[-1].headers or {})[hdr.SEQUENCE]) + 1

    # --- public async API ---------------------------------------------------
    async def aget_events_with_errors(
        self, actor_id: str, from_version: int = 0, *, after_sequence: int = 0
    ) -> ReplayResult:
        return await self._read(actor_id, from_version, after_sequence, None)

    async def _read(
        self, actor_id: str, from_version: int, after_sequence: int, limit: int | None
    ) -> ReplayResult:
        names.validate_actor_id(actor_id)
        check_from_version(from_version)
        check_limit(limit)
        deadline = self._deadline()
        if not await self._stream_exists(deadline):
            return ReplayResult([], [])
        return await self._replay(
            actor_id, from_version, deadline, max(0, int(after_sequence)), limit
        )

    async def aget_events(
        self,
        actor_id: str,
        from_version: int = 0,
        *,
        after_sequence: int = 0,
        limit: int | None = None,
    ) -> list[Event]:
        events, errors = await self._read(actor_id, from_version, after_sequence, limit)
        if errors:
            raise errors[0]
        return events

    async def aget_latest_version(self, actor_id: str) -> int:
        names.validate_actor_id(actor_id)
        deadline = self._deadline()
        if not await self._stream_exists(deadline):
            return 0
        return (await self._read_head(actor_id, deadline)).version

    async def asave_event(self, event: Event) -> Event:
        # The common case, spared the checks that only a batch needs.
        validate_event(event)
        return (await self._save_checked([event], [self._encode(event)]))[0]

    async def asave_events(self, events: Sequence[Event]) -> list[Event]:
        batch = check_batch(events)
        if not batch:
            return []
        return await self._save_checked(batch, [self._encode(event) for event in batch])

    async def _save_checked(self, batch: list[Event], payloads: list[bytes]) -> list[Event]:
        """Save a validated, encoded batch; count it and turn unanswered attempts that
        ran out of time into SaveOutcomeUnknownError."""
        # Expected sequences of attempts that were sent but never answered.
        unknown_after: set[int] = set()
        started = time.perf_counter()
        try:
            stored = await self._save(batch, payloads, unknown_after)
        except VersionConflictError:
            metrics.SAVE_CONFLICTS.inc(namespace=self.namespace)
            raise
        except StoreUnavailableError as exc:
            if unknown_after:
                raise SaveOutcomeUnknownError(
                    f"NATS did not confirm the save of {len(batch)} event(s) of actor "
                    f"{batch[0].actor_id!r} within {self.config.timeout}s; it may have been "
                    "stored. Saving the same events again is safe."
                ) from exc
            raise
        metrics.SAVES.inc(namespace=self.namespace)
        metrics.SAVE_SECONDS.observe(time.perf_counter() - started)
        return stored

    async def _save(
        self, batch: list[Event], payloads: list[bytes], unknown_after: set[int]
    ) -> list[Event]:
        actor_id = batch[0].actor_id
        attempted = batch[0].version
        deadline = self._deadline()
        if not self._stream_verified:
            await self._ensure_stream(deadline)

        head = self._heads.get(actor_id)
        fresh = head is None
        if head is None:
            head = await self._read_head(actor_id, deadline)
        attempt = 0
        while True:
            if attempted <= head.version:
                if not fresh:
                    # The hint may be stale; only the server's answer may refuse a save.
                    head, fresh = await self._read_head(actor_id, deadline), True
                    continue
                if head.last_id == batch[-1].id and head.version == batch[-1].version:
                    # A repeat of the save that wrote the actor's last events:
                    # answer with what is stored instead of storing it again.
                    return await self._stored_by_id(batch, deadline)
                found = await self._find_unanswered(batch, unknown_after, deadline)
                if found is not None:
                    return found
                raise VersionConflictError(actor_id, attempted, head.version)
            try:
                last_seq, duplicate = await self._publish(batch, payloads, head.sequence, deadline)
            except _WrongLastSequence:
                found = await self._find_unanswered(batch, unknown_after, deadline)
                if found is not None:
                    return found
                head, fresh = await self._read_head(actor_id, deadline), True
                continue
            except _NotSent:
                await self._pause(deadline, attempt, "save")
                attempt += 1
                continue
            except _Ambiguous:
                unknown_after.add(head.sequence)
                await self._pause(deadline, attempt, "save")
                attempt += 1
                continue
            except _DuplicateBatch:
                return await self._stored_by_id(batch, deadline)
            if duplicate:
                # The server already holds this event id (a retry of a save that
                # succeeded): answer with what is stored, never store it twice.
                return await self._stored_by_id(batch, deadline)
            self._remember(actor_id, _Head(last_seq, batch[-1].version, batch[-1].id))
            first_seq = last_seq - len(batch) + 1
            return [with_sequence(event, first_seq + i) for i, event in enumerate(batch)]

    async def _find_unanswered(
        self, batch: list[Event], unknown_after: set[int], deadline: float
    ) -> list[Event] | None:
        """Whether one of the unanswered attempts was stored after all."""
        for after in sorted(unknown_after):
            found = await self._find_stored(batch, after, deadline)
            if found is not None:
                return found
        return None

    def _encode(self, event: Event) -> bytes:
        raw = encode_event(event)
        if len(raw) > self.config.max_event_bytes:
            raise PayloadTooLargeError(len(raw), self.config.max_event_bytes)
        return raw

    async def _publish(
        self, batch: list[Event], payloads: list[bytes], expected: int, deadline: float
    ) -> tuple[int, bool]:
        """Send one attempt; return (sequence of the last event, was it a duplicate)."""
        subject = self.subject_for(batch[0].actor_id)
        batch_id = uuid.uuid4().hex if len(batch) > 1 else None
        timeout = min(self._remaining(deadline), _ATTEMPT_TIMEOUT)
        if timeout <= 0:
            raise StoreUnavailableError(f"NATS did not answer within {self.config.timeout}s (save)")
        try:
            nc = await self.runtime.connection()
        except _TRANSIENT:
            raise _NotSent from None
        if not nc.is_connected:
            # Never queue a write while disconnected: it could land after we gave up.
            raise _NotSent
        try:
            if batch_id is None:
                # One event: a plain publish with the expected sequence, no batch headers.
                event = batch[0]
                headers = {
                    hdr.MSG_ID: event.id,
                    HDR_VERSION: str(event.version),
                    hdr.EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected),
                }
                reply = await request(nc, subject, payloads[0], timeout, headers)
            else:
                reply = await self._publish_batch(
                    nc, subject, batch_id, batch, payloads, expected, timeout
                )
        except nats.errors.OutboundBufferLimitError:
            # Refused before queueing (the connection dropped): a batch without its
            # commit is discarded by the server, so nothing can be stored.
            raise _NotSent from None
        except (TimeoutError, nats.errors.TimeoutError):
            raise _Ambiguous from None
        except nats.errors.NoRespondersError:
            # The stream vanished or JetStream is restarting; nothing was stored.
            self._stream_verified = False
            await self._pause(deadline, 0, "save")
            await self._ensure_stream(deadline)
            raise _WrongLastSequence from None
        except _TRANSIENT:
            # Not sent, or the connection broke while sending: treat as unknown.
            raise _Ambiguous from None
        return self._parse_ack(reply)

    @staticmethod
    async def _publish_batch(
        nc: Any,
        subject: str,
        batch_id: str,
        batch: list[Event],
        payloads: list[bytes],
        expected: int,
        timeout: float,
    ) -> Msg:
        """Send an atomic batch; the expected sequence rides on its first message and
        the server answers only the last (the commit)."""
        last = len(batch)
        for i, (event, payload) in enumerate(zip(batch, payloads, strict=True), start=1):
            headers = {
                hdr.MSG_ID: event.id,
                HDR_VERSION: str(event.version),
                hdr.BATCH_ID: batch_id,
                hdr.BATCH_SEQUENCE: str(i),
            }
            if i == 1:
                headers[hdr.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected)
            if i < last:
                await nc.publish(subject, payload, headers=headers)
                continue
            headers[hdr.BATCH_COMMIT] = "1"
            return await request(nc, subject, payload, timeout, headers)
        raise AssertionError("an empty batch is never published")

    def _parse_ack(self, reply: Msg) -> tuple[int, bool]:
        try:
            return api.parse_ack(reply.data)
        except api.JetStreamRefused as exc:
            if exc.code == api.ERR_WRONG_LAST_SEQUENCE:
                raise _WrongLastSequence from None
            if exc.code == api.ERR_BATCH_DUPLICATE_ID:
                raise _DuplicateBatch from None
            if exc.code == api.ERR_MESSAGE_TOO_LARGE:
                raise PayloadTooLargeError(0, self.config.max_event_bytes) from None
            if exc.code is None:
                raise EventStoreError(f"{exc.description} to a save") from None
            raise EventStoreError(
                f"JetStream refused the save: {exc.description} (code {exc.code})"
            ) from None

    async def _find_stored(
        self, batch: list[Event], after: int, deadline: float
    ) -> list[Event] | None:
        """After an unanswered attempt: did that attempt land right after ``after``?"""
        msg = await self._first_at_or_after(
            self.subject_for(batch[0].actor_id), after + 1, deadline
        )
        if msg is None or (msg.headers or {}).get(hdr.MSG_ID) != batch[0].id:
            return None
        # An atomic batch occupies consecutive sequences.
        first = int(msg.headers[hdr.SEQUENCE])  # type: ignore[index]
        last = _Head(first + len(batch) - 1, batch[-1].version, batch[-1].id)
        self._remember(batch[0].actor_id, last)
        return [with_sequence(e, first + i) for i, e in enumerate(batch)]

    async def _stored_by_id(self, batch: list[Event], deadline: float) -> list[Event]:
        """The stored copies of a batch whose ids the server already holds."""
        result = await self._replay(batch[0].actor_id, batch[0].version, deadline)
        stored = {e.id: e for e in result.events}
        found = [stored.get(event.id) for event in batch]
        if any(e is None for e in found):
            raise EventStoreError(
                "some of these event ids are already stored and some are not; "
                "event ids must be unique"
            )
        return [e for e in found if e is not None]

    async def aget_actor_ids(self) -> list[str]:
        """Every actor with events, from the stream's per-subject counts (paged by the server)."""
        deadline = self._deadline()
        if not await self._stream_exists(deadline):
            return []
        prefix = self._subject_prefix + "."
        tokens: list[str] = []
        while True:
            request = {"subjects_filter": prefix + "*", "offset": len(tokens)}
            doc = self._stream_info_doc(await self._stream_info_raw(request, deadline))
            state = doc.get("state") or {}
            page = list((state.get("subjects") or {}).keys())
            tokens += [subject[len(prefix) :] for subject in page]
            total = int(doc.get("total") or 0)
            if not page or len(tokens) >= total:
                break
        return sorted(names.actor_id_from_token(token) for token in tokens)

    async def aget_actor_page(self, after: str | None, limit: int, *, at: int = 0) -> ActorPage:
        """Up to ``limit`` actor ids after ``after``, in subject-token order.

        The server sorts the stream's subjects and answers from a rank on (``offset``),
        up to its cap per reply. A page reads one such window, positioned by ``at``
        (the rank of the previous page's last id) and checked against ``after``;
        the window is kept, so the pages that follow cost one small STREAM.INFO
        (is the listing unchanged?) and a slice. New actors are added to it from the
        events stored since (a bounded read); actors aged out make it read again.
        """
        check_page(limit, 1)
        deadline = self._deadline()
        if not await self._stream_exists(deadline):
            return ActorPage([], None)
        after_token = None if after is None else actor_order(after)
        slot = (id(self.runtime), self.stream_name)
        with _WINDOWS_LOCK:
            window = _WINDOWS.get(slot)
        start = None
        if window is not None:
            window = await self._refresh(window, deadline)
        if window is not None:
            start = self._start_in(window, after_token, limit)
        if window is None or start is None:
            window, start = await self._locate(after_token, limit, max(0, at), deadline)
        with _WINDOWS_LOCK:
            _WINDOWS[slot] = window
            _WINDOWS.move_to_end(slot)
            while len(_WINDOWS) > _WINDOWS_KEPT:
                _WINDOWS.popitem(last=False)
        page = window.tokens[start : start + limit]
        last_rank = window.offset + start + len(page) - 1
        more = last_rank + 1 < window.total
        return ActorPage(
            [names.actor_id_from_token(token) for token in page], last_rank if more else None
        )

    @staticmethod
    def _start_in(window: _Window, after_token: str | None, limit: int) -> int | None:
        """Where the page after ``after_token`` starts in ``window``, or None when the
        window does not hold that page (it starts before the window, or runs past it)."""
        if after_token is None:
            start = 0
            if window.offset > 0:
                return None
        else:
            if window.offset > 0 and (not window.tokens or window.tokens[0] > after_token):
                return None
            start = bisect.bisect_right(window.tokens, after_token)
        if start + limit > len(window.tokens) and window.offset + len(window.tokens) < window.total:
            return None
        return start

    async def _locate(
        self, after_token: str | None, limit: int, at: int, deadline: float
    ) -> tuple[_Window, int]:
        """Read the window that holds the page after ``after_token``, starting at rank
        ``at`` and moving only when the listing changed since ``at`` was given."""
        offset = at if after_token is not None else 0
        back = limit
        while True:
            window = await self._read_window(offset, deadline)
            start = self._start_in(window, after_token, limit)
            if start is not None:
                return window, start
            if window.offset > 0 and (
                not window.tokens or (after_token is not None and window.tokens[0] > after_token)
            ):
                # Actors before the cursor are gone (aged out): its rank moved back.
                offset, back = max(0, offset - back), back * 4
            else:
                # The page runs past this reply (the server caps one): read on from the
                # cursor, which is in this window.
                assert after_token is not None
                offset = window.offset + max(0, bisect.bisect_right(window.tokens, after_token) - 1)
                if offset == window.offset:
                    return window, bisect.bisect_right(window.tokens, after_token)

    async def _refresh(self, window: _Window, deadline: float) -> _Window | None:
        """``window`` brought up to date, or None when it must be read again.

        Actors only come (their first event is appended) or go (history aged out from
        the front, which moves the first sequence). When only new ones came, their
        first events lie after the window's last sequence: reading those (up to
        _CATCH_UP_MESSAGES) finds them, and they are put in their places.
        """
        state = (await self._stream_info({}, deadline)).get("state") or {}
        subjects, first_seq = int(state.get("num_subjects", 0)), int(state.get("first_seq", 0))
        last_seq = int(state.get("last_seq", 0))
        if (subjects, first_seq) == window.key:
            return window
        new = subjects - window.key[0]
        whole = window.offset == 0 and len(window.tokens) >= window.total
        # Only a window of the whole listing can tell a new actor from an old one
        # outside it; only a listing that lost none (same first sequence) can be patched.
        if first_seq != window.key[1] or new < 0 or not whole:
            return None
        prefix = self._subject_prefix + "."
        received: list[Msg] = []
        try:
            await self._get_chunk(
                prefix + "*",
                window.last_seq + 1,
                deadline,
                received,
                _CATCH_UP_MESSAGES,
                max_bytes=_CATCH_UP_BYTES,
            )
        except _TRANSIENT:
            return None
        tokens, found = list(window.tokens), 0
        for msg in received:
            subject = (msg.headers or {}).get(hdr.SUBJECT, "")
            token = subject[len(prefix) :]
            place = bisect.bisect_left(tokens, token)
            if not subject.startswith(prefix) or tokens[place : place + 1] == [token]:
                continue  # an actor already listed
            tokens.insert(place, token)
            found += 1
            if found == new:
                # Every new actor is found; no other can hide further on.
                return _Window((subjects, first_seq), 0, tokens, len(tokens), last_seq)
        return None

    async def _stream_info(self, request: dict[str, Any], deadline: float) -> dict[str, Any]:
        return self._stream_info_doc(await self._stream_info_raw(request, deadline))

    async def _stream_info_raw(self, request: dict[str, Any], deadline: float) -> bytes:
        """The undecoded STREAM.INFO reply (retried until the deadline)."""

        async def once(nc: Any, wait: float) -> bytes:
            return await stream_info_raw(nc, self.stream_name, wait, request)

        try:
            return await self._retrying(deadline, "stream info", once)
        except nats.errors.NoRespondersError:
            raise StoreUnavailableError("JetStream did not answer the stream info") from None

    @staticmethod
    def _stream_info_doc(raw: bytes) -> dict[str, Any]:
        try:
            return api.parse_reply(raw)
        except api.JetStreamRefused as exc:
            raise EventStoreError(f"stream info failed: {exc.description}") from None

    @staticmethod
    def _key_of(doc: dict[str, Any]) -> tuple[int, int]:
        state = doc.get("state") or {}
        return int(state.get("num_subjects", 0)), int(state.get("first_seq", 0))

    async def _read_window(self, offset: int, deadline: float) -> _Window:
        prefix = self._subject_prefix + "."
        request = {"subjects_filter": prefix + "*", "offset": offset}
        raw = await self._stream_info_raw(request, deadline)
        # The subjects map is most of the reply (about 2.6 MB at 100,000 actors): the
        # rest is decoded as JSON, the map's keys only as far as pages read them.
        start = raw.find(b'"subjects":{')
        if start < 0:
            doc, tokens = self._stream_info_doc(raw), _Tokens(b"", 0, 0, prefix)
        else:
            start += len(b'"subjects":')
            # Keys are subjects and values counts: no brace inside the map.
            end = raw.index(b"}", start) + 1
            doc = self._stream_info_doc(raw[:start] + b"{}" + raw[end:])
            tokens = _Tokens(raw, start, end, prefix)
        total = int(doc.get("total") or 0) or len(tokens)
        last_seq = int((doc.get("state") or {}).get("last_seq", 0))
        return _Window(self._key_of(doc), offset, tokens, total, last_seq)

    async def aensure(self, *, create: bool = True) -> list[str]:
        """Make sure the stream and snapshot bucket exist and are usable; return what was done.

        With ``create=False`` only check; raises StoreConfigurationError or
        NamespaceCollisionError when something is wrong.
        """
        deadline = self._deadline()
        done: list[str] = []
        if not await self._stream_exists(deadline):
            if not create:
                raise StoreConfigurationError(f"stream {self.stream_name!r} does not exist")
            await self._ensure_stream(deadline)
            done.append(f"created stream {self.stream_name}")
        try:
            await self._js_call(deadline, "key_value", self.bucket_name)
        except nats.js.errors.BucketNotFoundError:
            if not create:
                raise StoreConfigurationError(
                    f"snapshot bucket {self.bucket_name!r} does not exist"
                ) from None
            await self._ensure_bucket(deadline)
            done.append(f"created bucket {self.bucket_name}")
        info = await self._js_call(deadline, "stream_info", self.stream_name)
        drift = self._drift(info.config)
        if drift:
            # Existing streams are never changed here: a replica or storage change is
            # an operator's decision (nats stream edit), not a side effect of a check.
            raise StoreConfigurationError(
                f"stream {self.stream_name!r} differs from the settings: {'; '.join(drift)}"
            )
        return done

    def _drift(self, actual: StreamConfig) -> list[str]:
        """How an existing stream's settings differ from what this store would create."""
        wanted = self._stream_config()
        drift = []
        for name, label in (
            ("num_replicas", "replicas"),
            ("storage", "storage"),
            ("max_msg_size", "largest message"),
        ):
            have, want = getattr(actual, name), getattr(wanted, name)
            have = getattr(have, "value", have)  # StorageType -> "file" / "memory"
            want = getattr(want, "value", want)
            if have != want:
                drift.append(f"{label} {have}, configured {want}")
        return drift

    async def aexists(self) -> bool:
        """Whether the namespace's stream exists (one read, then remembered)."""
        return await self._stream_exists(self._deadline())

    async def aget_info(self) -> NamespaceInfo | None:
        """Figures of the namespace's stream, read live from the server."""
        deadline = self._deadline()
        if not await self._stream_exists(deadline):
            return None
        try:
            doc = api.parse_reply(await self._stream_info_raw({}, deadline))
        except api.JetStreamRefused:
            return None
        state = doc.get("state") or {}
        return NamespaceInfo(
            name=self.namespace,
            stream=self.stream_name,
            events=int(state.get("messages", 0)),
            actors=int(state.get("num_subjects", 0)),
            bytes=int(state.get("bytes", 0)),
            first_sequence=int(state.get("first_seq", 0)),
            last_sequence=int(state.get("last_seq", 0)),
            replicas=int((doc.get("config") or {}).get("num_replicas", 1)),
        )

    async def aget_latest_versions(self, actor_ids: Sequence[str]) -> dict[str, int]:
        """Each actor's current version from one batched read of their last messages."""
        versions = {actor_id: 0 for actor_id in actor_ids}
        deadline = self._deadline()
        if not actor_ids or not await self._stream_exists(deadline):
            return versions
        by_subject = {self.subject_for(actor_id): actor_id for actor_id in actor_ids}
        request = {"multi_last": list(by_subject), "batch": len(by_subject)}
        nc = await self.runtime.connection()
        for msg in await direct_get_batch(nc, self.stream_name, request, self.config.timeout):
            actor_id = by_subject.get((msg.headers or {}).get(hdr.SUBJECT, ""))
            if actor_id is not None:
                version = self._head_of(msg, actor_id)[1]
                if version is None:  # a corrupt last message: ask the slow way
                    version = (await self._read_head(actor_id, deadline)).version
                versions[actor_id] = version
        return versions

    @classmethod
    async def alist_namespaces(cls, *, runtime: Runtime | None, config: StoreConfig) -> list[str]:
        """The namespaces that have an events stream on the server."""
        if runtime is None:
            raise ValueError("listing JetStream namespaces needs a runtime")
        try:
            nc = await asyncio.wait_for(runtime.connection(), config.timeout)
            streams = await list_event_streams(nc, config.subject_prefix, config.timeout)
        except _TRANSIENT as exc:
            # The same typed error every other store call gives when NATS is away.
            raise StoreUnavailableError(
                f"NATS did not answer within {config.timeout}s (listing namespaces): {exc!r}"
            ) from None
        return sorted({namespace for _, namespace, _ in streams})

    async def aget_latest_snapshot(self, actor_id: str) -> ActorSnapshot | None:
        names.validate_actor_id(actor_id)
        deadline = self._deadline()
        if not await self._stream_exists(deadline):
            return None
        while True:
            try:
                msg = await self._direct_get(
                    deadline,
                    stream=api.kv_stream(self.bucket_name),
                    last_by_subject=self._snapshot_subject(actor_id),
                )
            except _NoStream:
                try:
                    await self._js_call(deadline, "key_value", self.bucket_name)
                except nats.js.errors.BucketNotFoundError:
                    return None
                await self._pause(deadline, 0, "snapshot read")
                continue
            break
        if msg is None or not msg.data:
            return None
        if (msg.headers or {}).get(hdr.KV_OPERATION) in ("DEL", "PURGE"):
            return None
        try:
            snapshot = decode_snapshot(msg.data)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring corrupt snapshot of %s/%s: %s", self.namespace, actor_id, exc)
            return None
        if snapshot.actor_id != actor_id:
            logger.warning("ignoring snapshot of %s stored under %s", snapshot.actor_id, actor_id)
            return None
        return snapshot

    async def asave_snapshot(self, snapshot: ActorSnapshot) -> None:
        check_snapshot(snapshot)
        raw = encode_snapshot(snapshot)
        if len(raw) > self.config.max_event_bytes:
            raise PayloadTooLargeError(len(raw), self.config.max_event_bytes, "snapshot")
        deadline = self._deadline()
        await self._ensure_bucket(deadline)
        try:
            # A repeated put of the same snapshot is harmless, so plain retries are fine.
            reply = await self._request(self._snapshot_subject(snapshot.actor_id), raw, deadline)
        except _NoStream:
            self._bucket_ready = False
            raise StoreUnavailableError("the snapshot bucket did not answer") from None
        self._parse_ack(reply)
