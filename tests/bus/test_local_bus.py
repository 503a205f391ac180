"""The in-process bus: routing by pattern and filter, ordering, and no silent drops."""

import asyncio
import threading

import pytest

from aether_django import metrics
from aether_django.bus import (
    LocalEventBus,
    SubscriptionClosedError,
    SubscriptionHandlerError,
    SubscriptionOverflowError,
)
from aether_django.events import Event
from aether_django.patterns import SubscriptionFilter


def ev(version=1, event_type="OrderPlaced", actor_id="order-1", sequence=None):
    return Event(event_type=event_type, actor_id=actor_id, version=version, sequence=sequence)


async def drain(subscription, n, wait=1.0):
    return [await subscription.next(wait) for _ in range(n)]


async def test_exact_wildcard_and_prefix_subscribers():
    bus = LocalEventBus()
    exact = bus.subscribe("orders")
    prefix = bus.subscribe("order*")
    star = bus.subscribe("*")
    other = bus.subscribe("invoices")
    bus.publish("orders", ev())
    bus.publish("orders-eu", ev())
    assert [d.namespace for d in await drain(exact, 1)] == ["orders"]
    assert [d.namespace for d in await drain(prefix, 2)] == ["orders", "orders-eu"]
    assert [d.namespace for d in await drain(star, 2)] == ["orders", "orders-eu"]
    with pytest.raises(TimeoutError):
        await other.next(0.05)
    with pytest.raises(TimeoutError):
        await exact.next(0.05)


async def test_filters_narrow_delivery():
    bus = LocalEventBus()
    placed = bus.subscribe("orders", SubscriptionFilter(event_types=["OrderPlaced"]))
    one = bus.subscribe("orders", SubscriptionFilter(actor_pattern="order-customer-123"))
    bus.publish("orders", ev(event_type="OrderShipped", actor_id="order-customer-123"))
    bus.publish("orders", ev(event_type="OrderPlaced", actor_id="order-9"))
    assert [d.event.actor_id for d in await drain(placed, 1)] == ["order-9"]
    assert [d.event.event_type for d in await drain(one, 1)] == ["OrderShipped"]
    assert bus.metrics["filtered"] == 2


async def test_order_is_kept():
    bus = LocalEventBus()
    sub = bus.subscribe("orders")
    for v in range(1, 101):
        bus.publish("orders", ev(v))
    assert [d.event.version for d in await drain(sub, 100)] == list(range(1, 101))


async def test_publishing_from_another_thread_reaches_the_subscribers_loop():
    bus = LocalEventBus()
    sub = bus.subscribe("orders")
    thread = threading.Thread(target=lambda: [bus.publish("orders", ev(v)) for v in (1, 2)])
    thread.start()
    thread.join()
    assert [d.event.version for d in await drain(sub, 2)] == [1, 2]


async def test_a_slow_subscriber_is_told_where_to_resume_never_silently_dropped():
    bus = LocalEventBus()
    slow = bus.subscribe("orders", buffer_size=5)
    fast = bus.subscribe("orders")
    for v in range(1, 9):
        bus.publish("orders", ev(v, sequence=100 + v))
    received = []
    with pytest.raises(SubscriptionOverflowError) as info:
        async for delivery in slow:
            received.append(delivery.sequence)
    # It gets what was buffered, then learns the last sequence it received.
    assert received == [101, 102, 103, 104, 105]
    assert info.value.last_sequence == 105
    assert info.value.last_sequences == {"orders": 105}
    assert [d.sequence for d in await drain(fast, 8)] == list(range(101, 109))
    assert bus.metrics["overflowed"] == 1
    assert bus.metrics["subscriptions"] == 1


async def test_callbacks_sync_and_async():
    bus = LocalEventBus()
    got_sync, got_async = [], []
    bus.subscribe("orders", callback=lambda d: got_sync.append(d.event.version))

    async def slowly(delivery):
        await asyncio.sleep(0.001)
        got_async.append(delivery.event.version)

    bus.subscribe("orders", callback=slowly)
    for v in (1, 2, 3):
        bus.publish("orders", ev(v))
    await asyncio.sleep(0.05)
    assert got_sync == [1, 2, 3]
    assert got_async == [1, 2, 3]


def test_sync_code_must_pass_a_callback():
    with pytest.raises(RuntimeError, match="callback="):
        LocalEventBus().subscribe("orders")


async def test_closing_stops_delivery():
    bus = LocalEventBus()
    sub = bus.subscribe("orders")
    sub.close()
    assert bus.publish("orders", ev()) == 0
    with pytest.raises(StopAsyncIteration):
        await sub.__anext__()


async def test_an_async_callback_that_falls_behind_is_told_where_to_resume():
    bus = LocalEventBus()
    overflows_before = metrics.BUS_OVERFLOWS.value()
    gate = asyncio.Event()
    handled, errors = [], []

    async def slow(delivery):
        await gate.wait()
        handled.append(delivery.sequence)

    async def told(error):
        errors.append(error)

    bus.subscribe("orders", callback=slow, buffer_size=3, on_error=told)
    for v in range(1, 7):  # the callback has not run yet: the 4th overflows
        bus.publish("orders", ev(v, sequence=100 + v))
    gate.set()
    for _ in range(100):
        if errors:
            break
        await asyncio.sleep(0.01)
    # It handles what was buffered, then is handed the error with its resume point.
    assert handled == [101, 102, 103]
    (error,) = errors
    assert isinstance(error, SubscriptionOverflowError)
    assert error.last_sequence == 103
    assert error.resume_start() == {"orders": 104}
    assert bus.metrics["overflowed"] == 1
    assert metrics.BUS_OVERFLOWS.value() == overflows_before + 1
    assert "aether_bus_overflows_total " in metrics.render()


async def test_a_sync_callback_is_told_when_its_subscription_is_ended():
    bus = LocalEventBus()
    errors = []
    sub = bus.subscribe("orders", callback=lambda d: None, on_error=errors.append)
    failure = SubscriptionClosedError("setup failed")
    sub.fail(failure)
    assert errors == [failure]
    assert bus.publish("orders", ev()) == 0


async def test_publish_is_at_most_once_a_later_subscription_never_sees_it():
    bus = LocalEventBus()
    bus.publish("orders", ev(1))
    late = bus.subscribe("orders")
    with pytest.raises(TimeoutError):
        await late.next(0.05)


# --- a handler that raises ------------------------------------------------------------


async def test_a_nacked_delivery_comes_again_after_a_wait_before_anything_newer():
    bus = LocalEventBus(handler_backoff=0.05)
    sub = bus.subscribe("orders")
    for v in (1, 2):
        bus.publish("orders", ev(v, sequence=v))
    first = await sub.next(1)
    sub.nack(RuntimeError("down"))
    started = asyncio.get_running_loop().time()
    again = await sub.next(1)
    assert again is first
    assert asyncio.get_running_loop().time() - started >= 0.05
    assert (await sub.next(1)).event.version == 2
    assert sub.received == 2


async def test_an_iterator_whose_handler_keeps_failing_raises_an_error_naming_the_event():
    bus = LocalEventBus(handler_retries=2, handler_backoff=0.01)
    sub = bus.subscribe("orders")
    for v in (1, 2, 3):
        bus.publish("orders", ev(v, sequence=v))
    seen = []
    with pytest.raises(SubscriptionHandlerError) as stopped:
        async for delivery in sub:
            seen.append(delivery.event.version)
            if delivery.event.version == 2:
                sub.nack(ValueError("bad data"))
    assert seen == [1, 2, 2, 2]  # tried once, then retried twice; 3 never handed over
    error = stopped.value
    assert error.sequence == 2 and error.attempts == 3 and error.namespace == "orders"
    assert isinstance(error.__cause__, ValueError)
    assert error.resume_start() == {"orders": 2}
    assert error.event_id in str(error)
    assert sub.closed


async def test_an_async_callback_that_keeps_failing_ends_with_on_error_and_stops_there():
    bus = LocalEventBus(handler_retries=1, handler_backoff=0.01)
    calls, errors = [], []

    async def handle(delivery):
        calls.append(delivery.event.version)
        if delivery.event.version == 2:
            raise RuntimeError("boom")

    sub = bus.subscribe("orders", callback=handle, on_error=errors.append)
    for v in (1, 2, 3):
        bus.publish("orders", ev(v, sequence=v))
    for _ in range(100):
        if errors:
            break
        await asyncio.sleep(0.01)
    assert calls == [1, 2, 2]
    (error,) = errors
    assert isinstance(error, SubscriptionHandlerError) and error.sequence == 2
    assert sub.closed


async def test_a_sync_callback_is_retried_on_its_loop_while_later_deliveries_wait_in_order():
    bus = LocalEventBus(handler_backoff=0.02)
    calls, errors = [], []
    failures = {"left": 2}

    def handle(delivery):
        calls.append(delivery.event.version)
        if delivery.event.version == 2 and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("not yet")

    sub = bus.subscribe("orders", callback=handle, on_error=errors.append)
    for v in (1, 2, 3, 4):
        bus.publish("orders", ev(v, sequence=v))
    for _ in range(100):
        if len(calls) >= 6:
            break
        await asyncio.sleep(0.01)
    assert calls == [1, 2, 2, 2, 3, 4]
    # Recovered: deliveries go straight to the callback again.
    bus.publish("orders", ev(5, sequence=5))
    assert calls[-1] == 5 and sub.callback is handle
    assert errors == [] and not sub.closed


def test_a_sync_callback_without_a_loop_is_retried_at_once_then_stops_with_on_error():
    bus = LocalEventBus(handler_retries=2)
    calls, errors = [], []

    def handle(delivery):
        calls.append(delivery.event.version)
        raise RuntimeError("always")

    sub = bus.subscribe("orders", callback=handle, on_error=errors.append)
    bus.publish("orders", ev(1, sequence=1))
    bus.publish("orders", ev(2, sequence=2))  # the subscription has stopped: not offered
    assert calls == [1, 1, 1]
    (error,) = errors
    assert isinstance(error, SubscriptionHandlerError) and error.attempts == 3
    assert sub.closed


async def test_close_while_a_retry_waits_ends_the_subscription_quietly():
    bus = LocalEventBus(handler_backoff=5)
    sub = bus.subscribe("orders")
    bus.publish("orders", ev(1, sequence=1))
    await sub.next(1)
    sub.nack()
    waiting = asyncio.ensure_future(sub.next(10))
    await asyncio.sleep(0.05)
    sub.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 6)


def test_negative_retry_settings_are_refused():
    with pytest.raises(ValueError):
        LocalEventBus(handler_retries=-1).subscribe("orders", callback=print)


@pytest.mark.parametrize("module", ["aether_django.bus", "aether_django.bus.local"])
def test_the_old_name_eventbus_still_builds_the_local_bus_and_warns_at_the_caller(module):
    import importlib

    from aether_django.bus import LocalEventBus

    with pytest.warns(DeprecationWarning, match="LocalEventBus") as caught:
        old = importlib.import_module(module).EventBus
    assert old is LocalEventBus
    assert caught[0].filename == __file__
