"""Snapshots: one per actor, the latest only, in the namespace's key-value bucket.

A snapshot is read with a direct get of its key's last message (like an actor's
head) and written with a plain publish to the key's subject: a repeated put of the
same snapshot is harmless, so it is retried like a read. A snapshot that does not
decode, or names another actor, is ignored (and logged): replaying the events
gives the same state.
"""

from __future__ import annotations

import logging

import nats.js.errors

from ... import names
from ...errors import PayloadTooLargeError, StoreUnavailableError
from ...events import ActorSnapshot, decode_snapshot, encode_snapshot
from ...nats import api
from ...nats import headers as hdr
from ..base import check_snapshot
from .common import NoStream, Part
from .writes import parse_ack

logger = logging.getLogger("aether_django.store.jetstream")

__all__ = ["Snapshots"]


class Snapshots(Part):
    """Reads and writes the actors' latest snapshots."""

    async def latest(self, actor_id: str) -> ActorSnapshot | None:
        names.validate_actor_id(actor_id)
        place, retry = self.place, self.retry
        deadline = retry.deadline()
        if not await self.provisioner.stream_exists(deadline):
            return None
        while True:
            try:
                msg = await self.reader.direct_get(
                    deadline,
                    stream=api.kv_stream(place.bucket),
                    last_by_subject=place.snapshot_subject(actor_id),
                )
            except NoStream:
                try:
                    await retry.js_call(deadline, "key_value", place.bucket)
                except nats.js.errors.BucketNotFoundError:
                    return None
                await retry.pause(deadline, 0, "snapshot read")
                continue
            break
        if msg is None or not msg.data:
            return None
        if (msg.headers or {}).get(hdr.KV_OPERATION) in ("DEL", "PURGE"):
            return None
        try:
            snapshot = decode_snapshot(msg.data)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring corrupt snapshot of %s/%s: %s", place.namespace, actor_id, exc)
            return None
        if snapshot.actor_id != actor_id:
            logger.warning("ignoring snapshot of %s stored under %s", snapshot.actor_id, actor_id)
            return None
        return snapshot

    async def save(self, snapshot: ActorSnapshot) -> None:
        check_snapshot(snapshot)
        max_bytes = self.retry.config.max_event_bytes
        raw = encode_snapshot(snapshot)
        if len(raw) > max_bytes:
            raise PayloadTooLargeError(len(raw), max_bytes, "snapshot")
        deadline = self.retry.deadline()
        await self.provisioner.ensure_bucket(deadline)
        subject = self.place.snapshot_subject(snapshot.actor_id)
        try:
            # A repeated put of the same snapshot is harmless, so plain retries are fine.
            reply = await self.retry.request(subject, raw, deadline)
        except NoStream:
            self.provisioner.bucket_ready = False
            raise StoreUnavailableError("the snapshot bucket did not answer") from None
        parse_ack(reply, max_bytes)
