"""Fixtures of the personal data tests: raw scans of what the server holds."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import nats
import nats.js.errors
import pytest

from aether_django.aggregates import Aggregate, apply
from aether_django.events import Event
from aether_django.names import stream_name
from aether_django.privacy.keys import reset_key_ring

# The aggregate and projection tests' fixtures: forgetting the aggregate and projection
# classes a test declares, and the projection tests' [sqlite|pg] alias.
from tests.aggregates.conftest import scratch_registry  # noqa: F401
from tests.projections.conftest import db_alias, scratch_projections  # noqa: F401


@pytest.fixture(autouse=True)
def fresh_key_ring() -> Iterator[None]:
    """Each test starts (and ends) with no cached data key."""
    reset_key_ring()
    yield
    reset_key_ring()


def member_aggregate(namespace: str) -> type[Aggregate]:
    """A member of ``namespace`` whose name is personal data of the ``person`` in its
    events (tests declare it with ``scratch_registry``)."""

    class Member(Aggregate):
        name: str = ""

        class Meta:
            personal_data = {"Joined": ["name"]}
            data_subject = "person"

        @apply("Joined")
        def _joined(self, event: Event) -> None:
            self.name = event.data["name"]

    Member._meta.namespace = namespace
    return Member


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _scan(url: str, stream: str) -> bytes:
    """Every message the stream holds now, subjects, headers and payloads, as bytes."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        parts: list[bytes] = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue  # deleted or purged: not on the server any more
            parts.append((msg.subject or "").encode())
            parts.append(repr(msg.headers or {}).encode())
            parts.append(msg.data or b"")
        return b"\n".join(parts)
    finally:
        await nc.close()


@pytest.fixture
def raw_stream(aether_nats_url: str) -> Callable[[str], bytes]:
    """raw_stream(namespace): the raw bytes of every message in its events stream."""
    return lambda namespace: asyncio.run(_scan(aether_nats_url, stream_name(namespace)))


@pytest.fixture
def raw_key_bucket(aether_nats_url: str) -> Callable[..., bytes]:
    """raw_key_bucket(): the raw bytes of every message (all history) of the key bucket."""

    def scan(bucket: str = "aether_privacy_keys") -> bytes:
        return asyncio.run(_scan(aether_nats_url, f"KV_{bucket}"))

    return scan


def forms(value: Any) -> list[bytes]:
    """The ways a value could show up in raw bytes: as UTF-8 text, JSON-escaped, base64."""
    import base64
    import json

    if isinstance(value, bytes):
        return [
            value,
            base64.b64encode(value),
            base64.urlsafe_b64encode(value),
            value.hex().encode(),
        ]
    text = str(value)
    return [text.encode(), json.dumps(text).encode()[1:-1]]
