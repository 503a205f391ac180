"""A Subscription asks its source (``Subscription(source=...)``, the SubscriptionSource
protocol) for where it has got to, tells it what was handled, and releases it on close.

The source here is a small real implementation of the protocol, the way a bus other
than the NATS one would write its own; the NATS bus's FeedLink is exercised by the
other tests of this folder.
"""

from __future__ import annotations

import asyncio

import pytest

from aether_django.bus.local import (
    Delivery,
    Subscription,
    SubscriptionOverflowError,
    SubscriptionSource,
)
from aether_django.events import with_sequence
from aether_django.testing.contract import ev


class RecordingSource:
    """Says it has offered everything up to ``reached_at``; records what it is told."""

    def __init__(self, *, tracks_handled: bool, reached_at: dict[str, int]) -> None:
        self.tracks_handled = tracks_handled
        self.reached_at = reached_at
        self.taken: list[int | None] = []
        self.stopped = 0

    async def ready(self) -> None:
        return None

    def reached(self) -> dict[str, int]:
        return dict(self.reached_at)

    def took(self, delivery: Delivery) -> None:
        self.taken.append(delivery.sequence)

    async def stop(self) -> None:
        self.stopped += 1


def delivery(namespace: str, sequence: int) -> Delivery:
    return Delivery(namespace, with_sequence(ev("a", sequence), sequence), 10)


def test_a_recording_source_is_a_subscription_source() -> None:
    source: SubscriptionSource = RecordingSource(tracks_handled=True, reached_at={})
    assert source.tracks_handled


async def test_a_delivery_is_told_to_the_source_only_once_it_is_handled() -> None:
    source = RecordingSource(tracks_handled=True, reached_at={})
    sub = Subscription("orders", loop=asyncio.get_running_loop(), source=source)
    for seq in (1, 2, 3):
        assert sub.deliver(delivery("orders", seq))
    assert (await sub.next(1)).sequence == 1
    assert source.taken == []  # handed over, not handled yet
    assert (await sub.next(1)).sequence == 2  # asking for the next one handles the first
    assert source.taken == [1]
    sub.nack(RuntimeError("boom"))  # the second was not handled
    sub.ack()
    assert source.taken == [1]
    await sub.aclose()
    assert source.stopped == 1


async def test_a_source_that_does_not_track_handled_deliveries_is_not_told() -> None:
    source = RecordingSource(tracks_handled=False, reached_at={})
    sub = Subscription("orders", loop=asyncio.get_running_loop(), source=source)
    sub.deliver(delivery("orders", 1))
    await sub.next(1)
    sub.ack()
    await sub.aclose()
    assert source.taken == [] and source.stopped == 1


async def test_an_overflow_resumes_where_the_source_got_to_in_quiet_namespaces() -> None:
    source = RecordingSource(tracks_handled=False, reached_at={"a.one": 7, "a.two": 40})
    sub = Subscription("a.*", buffer_size=2, loop=asyncio.get_running_loop(), source=source)
    for seq in (8, 9):
        assert sub.deliver(delivery("a.one", seq))
    assert not sub.deliver(delivery("a.one", 10))  # the buffer is full: it ends
    with pytest.raises(SubscriptionOverflowError) as info:
        async for _ in sub:
            pass
    # a.one: what the subscriber got; a.two delivered nothing: where the source was.
    assert info.value.last_sequences == {"a.one": 9, "a.two": 40}


async def test_leaving_a_block_with_an_error_releases_the_source_without_handling() -> None:
    source = RecordingSource(tracks_handled=True, reached_at={})
    sub = Subscription("orders", loop=asyncio.get_running_loop(), source=source)
    sub.deliver(delivery("orders", 1))
    with pytest.raises(KeyError):
        async with sub:
            await sub.next(1)
            raise KeyError("the handler failed")
    assert source.taken == [] and source.stopped == 1
