"""Stream and bucket provisioning: create on first write, verify, report drift.

The namespace's stream is created on the first save (and the snapshot bucket on
the first snapshot) from the ``StoreConfig``; an existing stream is never changed
here. A stream is ours when its metadata names our namespace (two namespaces whose
stream names collide are refused) and it allows direct gets and atomic batches,
which the reads and writes rely on.
"""

from __future__ import annotations

import logging
from typing import Any

import nats.js.errors
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from ...errors import NamespaceCollisionError, StoreConfigurationError, StoreUnavailableError
from .common import META_NAMESPACE, Place
from .retry import Retrier

logger = logging.getLogger("aether_django.store.jetstream")

__all__ = ["Provisioner"]

#: Room for our headers on top of the largest event (or snapshot) we accept.
_HEADER_ROOM = 4096


class Provisioner:
    """Knows whether the namespace's stream and bucket exist, and makes them."""

    def __init__(self, place: Place, retry: Retrier) -> None:
        self.place = place
        self.retry = retry
        self.config = retry.config
        #: The stream was verified and is assumed to exist until a read says otherwise.
        self.stream_verified = False
        #: The stream was verified once in this process (a later "not found" is then
        #: more likely a cluster re-electing than a missing stream).
        self.stream_seen = False
        self.bucket_ready = False

    def stream_config(self) -> StreamConfig:
        """The stream this store creates for its namespace."""
        cfg, place = self.config, self.place
        return StreamConfig(
            name=place.stream,
            description=f"aether_django events of namespace {place.namespace}",
            subjects=[place.all_subjects],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType(cfg.storage),
            num_replicas=cfg.replicas,
            max_age=cfg.max_age or None,
            max_bytes=cfg.max_bytes,
            max_msg_size=cfg.max_event_bytes + _HEADER_ROOM,
            discard=DiscardPolicy.NEW,
            duplicate_window=cfg.duplicate_window,
            deny_delete=cfg.immutable,
            deny_purge=cfg.immutable,
            allow_direct=True,
            allow_atomic=True,
            metadata={META_NAMESPACE: place.namespace},
        )

    def _verify(self, info: Any) -> None:
        stream, namespace = self.place.stream, self.place.namespace
        owner = (info.config.metadata or {}).get(META_NAMESPACE)
        if owner is not None and owner != namespace:
            raise NamespaceCollisionError(
                f"stream {stream!r} belongs to namespace {owner!r}, not "
                f"{namespace!r}; rename one of them"
            )
        if not info.config.allow_direct or not info.config.allow_atomic:
            raise StoreConfigurationError(
                f"stream {stream!r} exists without direct get or atomic batches; "
                "enable allow_direct and allow_atomic on it (nats stream edit) or recreate it"
            )
        self.stream_verified = True
        self.stream_seen = True

    async def stream_exists(self, deadline: float) -> bool:
        """Whether the namespace's stream exists (and is ours); cached once true."""
        if self.stream_verified:
            return True
        try:
            info = await self.retry.js_call(deadline, "stream_info", self.place.stream)
        except nats.js.errors.NotFoundError:
            return False
        self._verify(info)
        return True

    async def recheck_stream(self, deadline: float) -> bool:
        """Whether the stream exists, asking the server again (a read found none)."""
        self.stream_verified = False
        return await self.stream_exists(deadline)

    async def ensure_stream(self, deadline: float) -> None:
        """Create the namespace's stream on first write."""
        if await self.stream_exists(deadline):
            return
        stream = self.place.stream
        try:
            info = await self.retry.js_call(deadline, "add_stream", self.stream_config())
        except nats.js.errors.BadRequestError as exc:
            # Another process may have created it a moment ago; use theirs.
            if not await self.stream_exists(deadline):
                if self.stream_seen:
                    # It existed a moment ago: while a JetStream cluster re-elects, the
                    # stream can be "not found" and creating it refused ("no suitable
                    # peers for placement"). An outage, not a configuration error.
                    raise StoreUnavailableError(
                        f"stream {stream!r} is not available ({exc.description}); "
                        "nothing was stored"
                    ) from None
                raise StoreConfigurationError(
                    f"cannot create stream {stream!r}: {exc.description}"
                ) from None
            return
        except nats.js.errors.APIError as exc:
            raise StoreConfigurationError(
                f"cannot create stream {stream!r}: {exc.description}"
            ) from None
        self._verify(info)
        logger.info("created stream %s for namespace %s", stream, self.place.namespace)

    async def ensure_bucket(self, deadline: float) -> None:
        """Create the snapshot bucket (and the stream first) unless known to exist."""
        if self.bucket_ready:
            return
        await self.ensure_stream(deadline)
        cfg, bucket = self.config, self.place.bucket
        try:
            await self.retry.js_call(deadline, "key_value", bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                await self.retry.js_call(
                    deadline,
                    "create_key_value",
                    KeyValueConfig(
                        bucket=bucket,
                        description=f"aether_django snapshots of namespace {self.place.namespace}",
                        history=1,
                        storage=StorageType(cfg.storage),
                        replicas=cfg.replicas,
                        max_value_size=cfg.max_event_bytes + _HEADER_ROOM,
                        # Snapshots are read with direct get, like events.
                        direct=True,
                    ),
                )
            except nats.js.errors.BadRequestError:
                # Created concurrently by someone else: fine if it now exists.
                await self.retry.js_call(deadline, "key_value", bucket)
        self.bucket_ready = True

    async def ensure(self, deadline: float, *, create: bool) -> list[str]:
        """Make sure the stream and snapshot bucket exist and are usable; return what was
        done. With ``create=False`` only check."""
        stream, bucket = self.place.stream, self.place.bucket
        done: list[str] = []
        if not await self.stream_exists(deadline):
            if not create:
                raise StoreConfigurationError(f"stream {stream!r} does not exist")
            await self.ensure_stream(deadline)
            done.append(f"created stream {stream}")
        try:
            await self.retry.js_call(deadline, "key_value", bucket)
        except nats.js.errors.BucketNotFoundError:
            if not create:
                raise StoreConfigurationError(
                    f"snapshot bucket {bucket!r} does not exist"
                ) from None
            await self.ensure_bucket(deadline)
            done.append(f"created bucket {bucket}")
        info = await self.retry.js_call(deadline, "stream_info", stream)
        drift = self.drift(info.config)
        if drift:
            # Existing streams are never changed here: a replica or storage change is
            # an operator's decision (nats stream edit), not a side effect of a check.
            raise StoreConfigurationError(
                f"stream {stream!r} differs from the settings: {'; '.join(drift)}"
            )
        return done

    def drift(self, actual: StreamConfig) -> list[str]:
        """How an existing stream's settings differ from what this store would create."""
        wanted = self.stream_config()
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
