"""Data keys per data subject, wrapped by the master key, in a JetStream KV bucket.

One entry per subject, under ``s.{sha256 of the subject id}`` (a bucket key says
nothing about whom it belongs to), holding ``{"kid": ..., "key": <wrapped>}``: the
data key sealed with the master key, bound to the entry's name. The bucket keeps
no history (history 1), and forgetting first deletes the entry's message with the
server's secure erase (its bytes in the server's files are overwritten; a KV purge
alone leaves them there until compaction), then purges the key, so no value of it
survives in the bucket's message store, on any replica. (A bucket with more than one
replica also keeps a raft log on each, holding the entry as it was appended until the
server compacts that log, which no request can make it do now: docs/privacy.md,
"Replicated key buckets".) A ``verifier`` entry, sealed with the master key on first
use, tells a process started with another master key so before it writes anything.

Each process caches the keys it read for ``PRIVACY_KEY_CACHE_SECONDS``: the bound on
how long a process that did not forget a subject may still decrypt its fields.

Every request to the bucket is retried within ``TIMEOUT`` as the store retries its
own (:meth:`KeyRing._request`): the bucket is read on the store's paths (every load
or save of personal data whose key is not cached), so it fails no more easily.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from ..conf import aether_settings, privacy_master_key, privacy_old_master_key
from ..nats.api import kv_key_subject, kv_stream
from ..nats.streams import stream_info
from ..runtime import get_runtime
from ..store.base import StoreConfig
from ..store.jetstream.retry import TRANSIENT, Retrier
from .envelope import KeyUnwrapError, new_data_key, new_key_id, unwrap_key, wrap_key

logger = logging.getLogger(__name__)

__all__ = ["KeyRing", "bucket_key", "get_key_ring", "reset_key_ring"]

VERIFIER_KEY = "verifier"
_VERIFIER_TEXT = b"aether_django privacy verifier v1"
_MISSING = (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError)

T = TypeVar("T")

#: JetStream's error code for a stream none of whose servers is reachable.
_STREAM_OFFLINE = 10118


class _Unanswered(Exception):
    """No server of the key bucket answered: a direct get found no responder, or the
    stream was reported offline (its server restarting)."""


#: The failures after which a key bucket request is sent again: the store's transient
#: ones, and the bucket's servers unreachable for a moment.
_TRANSIENT = (*TRANSIENT, _Unanswered)


def bucket_key(subject: str) -> str:
    """The bucket entry of ``subject``'s data key."""
    return "s." + hashlib.sha256(subject.encode()).hexdigest()


class KeyRing:
    """This process's access to the key bucket, with its bounded key cache."""

    def __init__(self) -> None:
        # subject -> (monotonic expiry, key id, data key, its AESGCM): a load opens
        # fields of many subjects, and making an AESGCM costs more than opening a field.
        self._cache: dict[str, tuple[float, str, bytes, AESGCM]] = {}
        self._lock = threading.Lock()
        self._buckets: weakref.WeakKeyDictionary[Any, KeyValue] = weakref.WeakKeyDictionary()

    # --- cache ------------------------------------------------------------------
    def _entry(self, subject: str) -> tuple[float, str, bytes, AESGCM] | None:
        with self._lock:
            hit = self._cache.get(subject)
            if hit is None:
                return None
            if hit[0] <= time.monotonic():
                del self._cache[subject]
                return None
            return hit

    def _cached(self, subject: str) -> tuple[str, bytes] | None:
        hit = self._entry(subject)
        return None if hit is None else (hit[1], hit[2])

    def _remember(self, subject: str, kid: str, key: bytes) -> None:
        lifetime = float(aether_settings.PRIVACY_KEY_CACHE_SECONDS)
        if lifetime <= 0:
            return
        with self._lock:
            self._cache[subject] = (time.monotonic() + lifetime, kid, key, AESGCM(key))

    def drop(self, subject: str | None = None) -> None:
        """Forget cached keys: one subject's, or all."""
        with self._lock:
            if subject is None:
                self._cache.clear()
            else:
                self._cache.pop(subject, None)

    # --- the bucket ---------------------------------------------------------------
    async def _request(self, what: str, op: Callable[[KeyValue, Any], Awaitable[T]]) -> T:
        """``op(bucket, connection)`` on the runtime's connection, sent again after a
        transient failure until ``TIMEOUT`` has passed, one attempt of at most
        ``ATTEMPT_TIMEOUT`` after another: the store's policy (``store.jetstream.retry``).

        A key bucket request is repeated, not given up, when it goes unanswered: while
        the bucket's server restarts or a leader is elected, a STREAM.INFO can get no
        reply at all and a direct get no responder. ``op`` must be safe to repeat; a
        create whose first attempt landed unacknowledged fails the next with
        KeyWrongLastSequenceError, which its caller resolves by reading what is there.
        """
        retry = Retrier(
            get_runtime(),
            StoreConfig(timeout=float(aether_settings.TIMEOUT)),
            "",
            where=f"key bucket {aether_settings.PRIVACY_BUCKET!r}",
        )

        async def attempt(nc: Any) -> T:
            return await op(await self._open(nc), nc)

        async def once(nc: Any, wait: float) -> T:
            try:
                return await asyncio.wait_for(attempt(nc), wait)
            except nats.errors.NoRespondersError:
                raise _Unanswered from None
            except nats.js.errors.ServerError as exc:
                if exc.err_code == _STREAM_OFFLINE:
                    raise _Unanswered from None
                raise

        return await retry.retrying(retry.deadline(), what, once, _TRANSIENT)

    async def bucket(self) -> KeyValue:
        """The key bucket (made on first use), its verifier checked against the master key."""

        async def itself(kv: KeyValue, nc: Any) -> KeyValue:
            return kv

        return await self._request("opening the key bucket", itself)

    async def _open(self, nc: Any) -> KeyValue:
        # Per connection (the runtime has one per event loop, and makes a new one when
        # one closes): a bucket handle speaks through the connection that opened it.
        kv = self._buckets.get(nc)
        if kv is not None:
            return kv
        master = privacy_master_key()
        js = _js(nc)
        name = aether_settings.PRIVACY_BUCKET
        try:
            kv = await js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await js.add_stream(_bucket_config(name))
            kv = await js.key_value(name)
        await self._verify(kv, master)
        self._buckets[nc] = kv
        return kv

    async def _verify(self, kv: KeyValue, master: bytes) -> None:
        try:
            entry = await kv.get(VERIFIER_KEY)
        except _MISSING:
            sealed = wrap_key(master, _VERIFIER_TEXT, name=VERIFIER_KEY).encode()
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                await kv.create(VERIFIER_KEY, sealed)
                return
            entry = await kv.get(VERIFIER_KEY)
        try:
            opened = _unwrap(master, (entry.value or b"").decode(), name=VERIFIER_KEY)
        except KeyUnwrapError:
            opened = b""
        if opened != _VERIFIER_TEXT:
            raise KeyUnwrapError(
                f"PRIVACY_MASTER_KEY is not the master key the bucket "
                f"{aether_settings.PRIVACY_BUCKET!r} was written with"
            )

    async def _get(self, name: str) -> KeyValue.Entry | None:
        """The bucket's entry ``name``, or None when there is none (or it was purged)."""

        async def get(kv: KeyValue, nc: Any) -> KeyValue.Entry | None:
            try:
                return await kv.get(name)
            except _MISSING:
                return None

        return await self._request("reading a data key", get)

    async def _read(self, subject: str) -> tuple[str, bytes] | None:
        name = bucket_key(subject)
        return _unwrapped_entry(name, await self._get(name))

    async def key_for_write(self, subject: str) -> tuple[str, bytes]:
        """The (key id, data key) to encrypt ``subject``'s fields with, made on first use.

        A subject forgotten before gets a new key (and key id): a new life, whose
        fields are readable; the fields of the forgotten life stay unreadable.
        """
        hit = self._cached(subject)
        if hit is not None:
            return hit
        found = await self._read(subject)
        if found is None:
            kid, key = new_key_id(), new_data_key()
            name = bucket_key(subject)
            value = json.dumps({"kid": kid, "key": wrap_key(privacy_master_key(), key, name=name)})

            async def create(kv: KeyValue, nc: Any) -> None:
                await kv.create(name, value.encode())

            try:
                await self._request("making a data key", create)
                found = kid, key
            except nats.js.errors.KeyWrongLastSequenceError:
                # Another process made it first (or an attempt of ours landed but its
                # reply was lost, and another attempt followed): use what is there.
                found = await self._read(subject)
                if found is None:  # and it was forgotten again at once
                    raise
        self._remember(subject, *found)
        return found

    async def current_key(self, subject: str) -> tuple[str, bytes] | None:
        """The (key id, data key) ``subject`` has now, or None: never makes one.

        For sealing copies of what is already stored (snapshots): a subject forgotten
        since gets no new key for them.
        """
        hit = self._cached(subject)
        if hit is not None:
            return hit
        found = await self._read(subject)
        if found is not None:
            self._remember(subject, *found)
        return found

    async def key_for_read(self, subject: str, kid: str) -> bytes | None:
        """The data key ``kid`` of ``subject``, or None when that key was forgotten."""
        hit = self._entry(subject)
        if hit is not None and hit[1] == kid:
            return hit[2]
        found = await self._read(subject)
        if found is None:
            self.drop(subject)
            return None
        self._remember(subject, *found)
        return found[1] if found[0] == kid else None

    def cached_for_write(self, subject: str) -> tuple[str, AESGCM] | None:
        """The cached (key id, AESGCM) :meth:`aead_for_write` would give, or None when
        ``subject``'s key is not cached."""
        hit = self._entry(subject)
        return None if hit is None else (hit[1], hit[3])

    async def aead_for_write(self, subject: str) -> tuple[str, AESGCM]:
        """:meth:`key_for_write`'s key id and key, as an AESGCM (the cached one when the
        key is cached: making one costs more than sealing a field)."""
        kid, key = await self.key_for_write(subject)
        return kid, self.cached_aead(subject, kid) or AESGCM(key)

    def cached_aead(self, subject: str, kid: str) -> AESGCM | None:
        """The cached key ``kid`` of ``subject`` as an AESGCM; None when it is not
        cached (ask :meth:`aead_for_read`, which reads the bucket)."""
        hit = self._entry(subject)
        return hit[3] if hit is not None and hit[1] == kid else None

    async def aead_for_read(self, subject: str, kid: str) -> AESGCM | None:
        """:meth:`key_for_read`'s key as an AESGCM (the cached one when it is cached)."""
        key = await self.key_for_read(subject, kid)
        if key is None:
            return None
        return self.cached_aead(subject, kid) or AESGCM(key)

    async def forget(self, subject: str) -> str | None:
        """Purge ``subject``'s key from the bucket (all its history); the key id it had."""
        name = bucket_key(subject)
        entry = await self._get(name)
        try:
            found = _unwrapped_entry(name, entry)
        except KeyUnwrapError:
            found = None  # unreadable either way: purge it all the same
        if entry is not None:
            await self._erase(entry.revision)

        async def purge(kv: KeyValue, nc: Any) -> None:
            # The purge leaves only a marker without value, whatever revisions were there.
            await kv.purge(name)

        await self._request("purging a data key", purge)
        self.drop(subject)
        return found[0] if found else None

    async def rotate(self) -> int:
        """Re-wrap every data key (and the verifier) with the master key, from the
        previous one (PRIVACY_OLD_MASTER_KEY); the number of entries re-wrapped.

        Each entry is replaced by compare-and-set, then its old message is erased (so
        the old master key opens nothing left in the bucket's message stores; the raft
        logs of a replicated bucket keep old entries until the server compacts them).
        Entries already wrapped with the master key are left alone: running it again
        does nothing.
        """
        master, old = privacy_master_key(), privacy_old_master_key()
        if old is None:
            raise KeyUnwrapError(
                "rotating needs the previous master key in PRIVACY_OLD_MASTER_KEY "
                "(or AETHER_PRIVACY_OLD_MASTER_KEY)"
            )
        stream = kv_stream(aether_settings.PRIVACY_BUCKET)

        async def read_config(kv: KeyValue, nc: Any) -> StreamConfig:
            return (await _js(nc).stream_info(stream)).config

        config = await self._request("reading the key bucket's configuration", read_config)

        async def keep_per_key(messages: int) -> None:
            config.max_msgs_per_subject = messages

            async def update(kv: KeyValue, nc: Any) -> None:
                await _js(nc).update_stream(config)

            await self._request("updating the key bucket's configuration", update)

        async def list_names(kv: KeyValue, nc: Any) -> list[str]:
            return await _entry_names(nc, aether_settings.PRIVACY_BUCKET)

        # Two messages per key for a moment: the new one lands before the old is
        # erased, so no reader ever finds a key missing (which would read as forgotten).
        await keep_per_key(2)
        rewrapped = 0
        try:
            names = await self._request("listing the key bucket", list_names)
            names = [*(n for n in names if n.startswith("s.")), VERIFIER_KEY]
            for name in names:
                rewrapped += await self._rewrap(name, master, old)
        finally:
            await keep_per_key(1)
        return rewrapped

    async def _rewrap(self, name: str, master: bytes, old: bytes) -> int:
        for _ in range(5):
            entry = await self._get(name)
            if entry is None:
                return 0  # forgotten meanwhile
            raw = (entry.value or b"").decode()
            if name == VERIFIER_KEY:
                wrapped, doc = raw, None
            else:
                try:
                    doc = json.loads(raw)
                    wrapped = doc["key"]
                except (ValueError, KeyError, TypeError):
                    raise KeyUnwrapError(f"the key bucket's entry {name!r} is malformed") from None
            try:
                unwrap_key(master, wrapped, name=name)
                return 0  # already wrapped with the master key
            except KeyUnwrapError:
                pass
            try:
                key = unwrap_key(old, wrapped, name=name)
            except KeyUnwrapError:
                raise KeyUnwrapError(
                    f"neither PRIVACY_MASTER_KEY nor PRIVACY_OLD_MASTER_KEY opens the key "
                    f"bucket's entry {name!r}; nothing of it was changed"
                ) from None
            rewrapped = wrap_key(master, key, name=name)
            value = rewrapped if doc is None else json.dumps({**doc, "key": rewrapped})

            async def update(
                kv: KeyValue, nc: Any, value: bytes = value.encode(), last: Any = entry.revision
            ) -> None:
                await kv.update(name, value, last=last)

            try:
                await self._request("re-wrapping a data key", update)
            except nats.js.errors.KeyWrongLastSequenceError:
                # Changed or forgotten meanwhile: look again. (Or an attempt of ours
                # landed unacknowledged: the entry then reads as already re-wrapped,
                # and its old message goes when the bucket keeps one per key again,
                # without the secure erase.)
                continue
            await self._erase(entry.revision)
            return 1
        raise KeyUnwrapError(f"the key bucket's entry {name!r} kept changing while rotating")

    async def _erase(self, revision: int | None) -> None:
        """Delete the entry's message with the server's secure erase: a purge alone
        leaves its bytes in the server's files until they are compacted."""
        if not revision:
            return
        stream = kv_stream(aether_settings.PRIVACY_BUCKET)

        async def delete(kv: KeyValue, nc: Any) -> None:
            await _js(nc).delete_msg(stream, revision)

        try:
            await self._request("erasing a data key", delete)
        except nats.js.errors.NotFoundError:
            pass  # purged meanwhile
        except nats.js.errors.APIError as exc:
            logger.warning(
                "could not erase the key of a forgotten subject in %s (%s); it is purged, "
                "but its wrapped bytes stay in the server's files until compaction "
                "(a bucket made with deny_delete, not by aether_django?)",
                stream,
                exc.description,
            )


def _js(nc: Any) -> JetStreamContext:
    """A JetStream context on ``nc`` (its requests are bounded by each attempt's)."""
    js: JetStreamContext = nc.jetstream(timeout=float(aether_settings.TIMEOUT))
    return js


def _unwrapped_entry(name: str, entry: KeyValue.Entry | None) -> tuple[str, bytes] | None:
    """The (key id, data key) the bucket's entry ``name`` holds; None for no entry."""
    if entry is None or not entry.value:
        return None
    try:
        doc = json.loads(entry.value)
        kid, wrapped = doc["kid"], doc["key"]
    except (ValueError, KeyError, TypeError):
        raise KeyUnwrapError(f"the key bucket's entry {name!r} is malformed") from None
    return str(kid), _unwrap(privacy_master_key(), wrapped, name=name)


def _unwrap(master: bytes, wrapped: str, *, name: str) -> bytes:
    """Unwrap with the master key, or while it is rotated, with the previous one."""
    try:
        return unwrap_key(master, wrapped, name=name)
    except KeyUnwrapError:
        old = privacy_old_master_key()
        if old is None:
            raise
        return unwrap_key(old, wrapped, name=name)


async def _entry_names(nc: Any, bucket: str) -> list[str]:
    """The name of every entry of the key bucket (a forgotten one's too: its purge
    marker), sorted, from the stream's message count per subject, a page at a time.

    Not ``KeyValue.keys()``: its watcher ends when the consumer's info reports nothing
    pending, which can come before the delivered keys reach the client (seen on a
    replicated bucket, where it listed none or only some); a key rotation that skipped
    an entry would leave it wrapped with the old master key, unreadable once that key
    is destroyed.
    """
    prefix = kv_key_subject(bucket, "")
    subjects: list[str] = []
    while True:
        request = {"subjects_filter": prefix + ">", "offset": len(subjects)}
        doc = await stream_info(nc, kv_stream(bucket), float(aether_settings.TIMEOUT), request)
        page = list(((doc.get("state") or {}).get("subjects") or {}).keys())
        subjects += page
        if not page or len(subjects) >= int(doc.get("total") or 0):
            break
    return sorted(subject[len(prefix) :] for subject in subjects)


def _bucket_config(bucket: str) -> StreamConfig:
    """The key bucket's stream: what nats-py's create_key_value makes, except that it
    allows deleting a message, so that forget() can erase a key's bytes on disk."""
    storage = StorageType.MEMORY if aether_settings.STORAGE == "memory" else StorageType.FILE
    return StreamConfig(
        name=kv_stream(bucket),
        description="aether_django data keys of data subjects, wrapped",
        subjects=[kv_key_subject(bucket, ">")],
        allow_direct=True,
        allow_rollup_hdrs=True,
        deny_delete=False,
        discard=DiscardPolicy.NEW,
        duplicate_window=120,
        max_consumers=-1,
        max_msgs=-1,
        max_msgs_per_subject=1,
        num_replicas=int(aether_settings.REPLICAS),
        storage=storage,
    )


_ring: KeyRing | None = None
_ring_lock = threading.Lock()


def get_key_ring() -> KeyRing:
    """This process's key ring."""
    global _ring
    with _ring_lock:
        if _ring is None:
            _ring = KeyRing()
        return _ring


def reset_key_ring() -> None:
    """Drop this process's key ring (its cached keys and buckets): when the AETHER
    settings change (another master key or bucket), and in tests."""
    global _ring
    with _ring_lock:
        _ring = None
