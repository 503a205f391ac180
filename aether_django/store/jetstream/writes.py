"""The write protocol: expected-version checks, atomic batches, unanswered saves.

Safety comes from the server, not from this process:

* every save carries ``Nats-Expected-Last-Subject-Sequence`` (the stream sequence
  of the actor's last event), so two writers anywhere cannot both append after
  the same event;
* several events of one save go in one atomic batch (all or nothing);
* ``Nats-Msg-Id`` is the event id, so a publish repeated after a lost ack is
  recognised instead of stored twice.

An attempt that was sent but never answered may or may not be stored; the writer
remembers where it was meant to land and, when the server later refuses a retry,
looks there for it (docs/architecture.md, "A save that got no answer").
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Sequence
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from ... import metrics, tracing
from ...errors import (
    EventStoreError,
    PayloadTooLargeError,
    SaveOutcomeUnknownError,
    StoreUnavailableError,
    VersionConflictError,
)
from ...events import Event, encode_event, validate_event, with_sequence
from ...nats import api
from ...nats import headers as hdr
from ...nats.request import request
from ..base import check_batch
from .common import HDR_VERSION, Part
from .reads import Head
from .retry import ATTEMPT_TIMEOUT, TRANSIENT

__all__ = ["Writer", "parse_ack"]


class WrongLastSequence(Exception):
    """The server refused a write because the actor's subject moved on."""


class DuplicateBatch(Exception):
    """The server refused a batch because its ids are already stored."""


class NotSent(Exception):
    """A write was refused before it left this process: nothing can have been stored."""


class Ambiguous(Exception):
    """A write was sent but no answer came: it may or may not be stored."""


def parse_ack(reply: Msg, max_event_bytes: int) -> tuple[int, bool]:
    """A publish ack's (sequence, duplicate), or the typed reason it was refused."""
    try:
        return api.parse_ack(reply.data)
    except api.JetStreamRefused as exc:
        if exc.code == api.ERR_WRONG_LAST_SEQUENCE:
            raise WrongLastSequence from None
        if exc.code == api.ERR_BATCH_DUPLICATE_ID:
            raise DuplicateBatch from None
        if exc.code == api.ERR_MESSAGE_TOO_LARGE:
            raise PayloadTooLargeError(0, max_event_bytes) from None
        if exc.code is None:
            raise EventStoreError(f"{exc.description} to a save") from None
        raise EventStoreError(
            f"JetStream refused the save: {exc.description} (code {exc.code})"
        ) from None


class Writer(Part):
    """Saves events of one namespace, each at most once, never over another's."""

    def _encode(self, event: Event) -> bytes:
        raw = encode_event(event)
        if len(raw) > self.config.max_event_bytes:
            raise PayloadTooLargeError(len(raw), self.config.max_event_bytes)
        return raw

    async def save_event(self, event: Event) -> Event:
        # The common case, spared the checks that only a batch needs.
        validate_event(event)
        if tracing.enabled and tracing.recording():
            return (await self._traced([event], [self._encode(event)]))[0]
        return (await self._save_checked([event], [self._encode(event)]))[0]

    async def save_events(self, events: Sequence[Event]) -> list[Event]:
        batch = check_batch(events)
        if not batch:
            return []
        if tracing.enabled and tracing.recording():
            return await self._traced(batch, [self._encode(event) for event in batch])
        return await self._save_checked(batch, [self._encode(event) for event in batch])

    async def _traced(self, batch: list[Event], payloads: list[bytes]) -> list[Event]:
        """:meth:`_save_checked` in a PRODUCER span, whose trace headers every message of
        the save carries (``_publish`` adds them) and the stored events keep."""
        namespace = self.place.namespace
        first, last = batch[0], batch[-1]
        attributes = {
            "messaging.system": "nats",
            "messaging.operation.type": "send",
            "messaging.destination.name": self.place.subject_for(first.actor_id),
            "messaging.batch.message_count": len(batch),
            "aether.namespace": namespace,
            "aether.actor_id": first.actor_id,
            "aether.version.first": first.version,
            "aether.version.last": last.version,
        }
        with tracing.span(
            f"aether publish {namespace}", kind=tracing.PRODUCER, attributes=attributes
        ) as span:
            carried: dict[str, str] = {}
            tracing.inject(carried)
            stored = await self._save_checked(batch, payloads)
            span.set_attribute("aether.sequence.last", stored[-1].sequence or 0)
        if not carried:
            return stored
        return [
            e if e.trace_context is not None else dataclasses.replace(e, trace_context=carried)
            for e in stored
        ]

    async def _save_checked(self, batch: list[Event], payloads: list[bytes]) -> list[Event]:
        """Save a validated, encoded batch; count it and turn unanswered attempts that
        ran out of time into SaveOutcomeUnknownError."""
        namespace = self.place.namespace
        # Expected sequences of attempts that were sent but never answered.
        unknown_after: set[int] = set()
        started = time.perf_counter()
        try:
            stored = await self._save(batch, payloads, unknown_after)
        except VersionConflictError:
            metrics.SAVE_CONFLICTS.inc(namespace=namespace)
            raise
        except StoreUnavailableError as exc:
            if unknown_after:
                raise SaveOutcomeUnknownError(
                    f"NATS did not confirm the save of {len(batch)} event(s) of actor "
                    f"{batch[0].actor_id!r} within {self.config.timeout}s; it may have been "
                    "stored. Saving the same events again is safe."
                ) from exc
            raise
        metrics.SAVES.inc(namespace=namespace)
        metrics.SAVE_SECONDS.observe(time.perf_counter() - started)
        return stored

    async def _save(
        self, batch: list[Event], payloads: list[bytes], unknown_after: set[int]
    ) -> list[Event]:
        reader = self.reader
        actor_id = batch[0].actor_id
        attempted = batch[0].version
        deadline = self.retry.deadline()
        if not self.provisioner.stream_verified:
            await self.provisioner.ensure_stream(deadline)

        head = reader.heads.get(actor_id)
        fresh = head is None
        if head is None:
            head = await reader.read_head(actor_id, deadline)
        attempt = 0
        while True:
            if attempted <= head.version:
                if not fresh:
                    # The hint may be stale; only the server's answer may refuse a save.
                    head, fresh = await reader.read_head(actor_id, deadline), True
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
            except WrongLastSequence:
                found = await self._find_unanswered(batch, unknown_after, deadline)
                if found is not None:
                    return found
                head, fresh = await reader.read_head(actor_id, deadline), True
                continue
            except NotSent:
                await self.retry.pause(deadline, attempt, "save")
                attempt += 1
                continue
            except Ambiguous:
                unknown_after.add(head.sequence)
                await self.retry.pause(deadline, attempt, "save")
                attempt += 1
                continue
            except DuplicateBatch:
                return await self._stored_by_id(batch, deadline)
            if duplicate:
                # The server already holds this event id (a retry of a save that
                # succeeded): answer with what is stored, never store it twice.
                return await self._stored_by_id(batch, deadline)
            reader.remember(actor_id, Head(last_seq, batch[-1].version, batch[-1].id))
            first_seq = last_seq - len(batch) + 1
            return [with_sequence(event, first_seq + i) for i, event in enumerate(batch)]

    async def _publish(
        self, batch: list[Event], payloads: list[bytes], expected: int, deadline: float
    ) -> tuple[int, bool]:
        """Send one attempt; return (sequence of the last event, was it a duplicate)."""
        subject = self.place.subject_for(batch[0].actor_id)
        batch_id = uuid.uuid4().hex if len(batch) > 1 else None
        timeout = min(self.retry.remaining(deadline), ATTEMPT_TIMEOUT)
        if timeout <= 0:
            raise StoreUnavailableError(f"NATS did not answer within {self.config.timeout}s (save)")
        try:
            nc = await self.retry.runtime.connection()
        except TRANSIENT:
            raise NotSent from None
        if not nc.is_connected:
            # Never queue a write while disconnected: it could land after we gave up.
            raise NotSent
        try:
            if batch_id is None:
                # One event: a plain publish with the expected sequence, no batch headers.
                event = batch[0]
                headers = {
                    hdr.MSG_ID: event.id,
                    HDR_VERSION: str(event.version),
                    hdr.EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected),
                }
                if tracing.enabled:
                    # The stored message carries the context of the save that wrote it.
                    tracing.inject(headers)
                reply = await request(nc, subject, payloads[0], timeout, headers)
            else:
                reply = await _publish_batch(
                    nc, subject, batch_id, batch, payloads, expected, timeout
                )
        except nats.errors.OutboundBufferLimitError:
            # Refused before queueing (the connection dropped): a batch without its
            # commit is discarded by the server, so nothing can be stored.
            raise NotSent from None
        except (TimeoutError, nats.errors.TimeoutError):
            raise Ambiguous from None
        except nats.errors.NoRespondersError:
            # The stream vanished or JetStream is restarting; nothing was stored.
            self.provisioner.stream_verified = False
            await self.retry.pause(deadline, 0, "save")
            await self.provisioner.ensure_stream(deadline)
            raise WrongLastSequence from None
        except TRANSIENT:
            # Not sent, or the connection broke while sending: treat as unknown.
            raise Ambiguous from None
        return parse_ack(reply, self.config.max_event_bytes)

    # --- resolving saves that may be stored already ------------------------
    async def _find_unanswered(
        self, batch: list[Event], unknown_after: set[int], deadline: float
    ) -> list[Event] | None:
        """Whether one of the unanswered attempts was stored after all."""
        for after in sorted(unknown_after):
            found = await self._find_stored(batch, after, deadline)
            if found is not None:
                return found
        return None

    async def _find_stored(
        self, batch: list[Event], after: int, deadline: float
    ) -> list[Event] | None:
        """After an unanswered attempt: did that attempt land right after ``after``?"""
        msg = await self.reader.first_at_or_after(
            self.place.subject_for(batch[0].actor_id), after + 1, deadline
        )
        if msg is None or (msg.headers or {}).get(hdr.MSG_ID) != batch[0].id:
            return None
        # An atomic batch occupies consecutive sequences.
        first = int(msg.headers[hdr.SEQUENCE])  # type: ignore[index]
        last = Head(first + len(batch) - 1, batch[-1].version, batch[-1].id)
        self.reader.remember(batch[0].actor_id, last)
        return [with_sequence(e, first + i) for i, e in enumerate(batch)]

    async def _stored_by_id(self, batch: list[Event], deadline: float) -> list[Event]:
        """The stored copies of a batch whose ids the server already holds."""
        result = await self.reader.replay(batch[0].actor_id, batch[0].version, deadline)
        stored = {e.id: e for e in result.events}
        found = [stored.get(event.id) for event in batch]
        if any(e is None for e in found):
            raise EventStoreError(
                "some of these event ids are already stored and some are not; "
                "event ids must be unique"
            )
        return [e for e in found if e is not None]


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
    carried: dict[str, str] = {}
    if tracing.enabled:
        tracing.inject(carried)  # every message of the batch, the same context
    for i, (event, payload) in enumerate(zip(batch, payloads, strict=True), start=1):
        headers = {
            hdr.MSG_ID: event.id,
            HDR_VERSION: str(event.version),
            hdr.BATCH_ID: batch_id,
            hdr.BATCH_SEQUENCE: str(i),
            **carried,
        }
        if i == 1:
            headers[hdr.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected)
        if i < last:
            await nc.publish(subject, payload, headers=headers)
            continue
        headers[hdr.BATCH_COMMIT] = "1"
        return await request(nc, subject, payload, timeout, headers)
    raise AssertionError("an empty batch is never published")
