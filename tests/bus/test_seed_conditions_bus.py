"""The seed's success conditions for capabilities 8 and 9, with nodes as separate OS processes.

Test names follow shared/seed/aether-capabilities.md: ``test_c<capability>_<condition>_...``,
and ``test_c<capability>_target_...`` for a capability's target. Publishing an event here
means saving it with the event store: stored events are the bus, so a save reaches every
matching subscriber without a second publish. Each fixture runs every step of its
scenario, so each test only asserts and any one of them can run alone.
"""

from __future__ import annotations

import asyncio
import statistics
import uuid

import nats
import pytest

from .nodes import Node

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def routing(aether_nats_server):
    """node-b subscribes four ways; node-a saves a known set of events to "orders"."""
    base = f"seed{uuid.uuid4().hex[:8]}"
    orders, invoices = f"{base}.orders", f"{base}.invoices"
    node_a, node_b = Node("node-a"), Node("node-b")
    # Create the streams first, so "new" subscriptions start after them.
    node_a.save(orders, "warmup", [1])
    node_a.save(invoices, "warmup", [1])
    node_b.subscribe("exact", orders)
    node_b.subscribe("wildcard", f"{base}.order*")
    node_b.subscribe("placed-only", orders, event_types=["OrderPlaced"])
    node_b.subscribe("one-actor", orders, actor_pattern="order-customer-123")
    saved = {
        "placed": node_a.save(orders, "order-customer-123", [1], event_type="OrderPlaced"),
        "shipped": node_a.save(orders, "order-customer-123", [2], event_type="OrderShipped"),
        "other": node_a.save(orders, "order-7", [1], event_type="OrderPlaced"),
        "invoice": node_a.save(invoices, "invoice-1", [1], event_type="InvoiceSent"),
    }
    node_b.received("exact", 3)
    node_b.settle()
    yield node_b, saved, base
    node_a.exit()
    node_b.exit()


def ids(deliveries):
    return [d["id"] for d in deliveries]


def test_c8_1_an_event_is_published_to_the_orders_namespace(routing):
    node_b, saved, base = routing
    published = saved["placed"] + saved["shipped"] + saved["other"]
    assert len(published) == 3
    assert {d["id"]: d["namespace"] for d in node_b.deliveries["exact"]} == dict.fromkeys(
        published, f"{base}.orders"
    )


def test_c8_2_the_exact_subscriber_of_orders_receives_it(routing):
    node_b, saved, _ = routing
    expected = saved["placed"] + saved["shipped"] + saved["other"]
    assert ids(node_b.deliveries["exact"]) == expected


def test_c8_3_the_wildcard_subscriber_of_order_star_receives_it(routing):
    node_b, saved, _ = routing
    assert ids(node_b.deliveries["wildcard"]) == saved["placed"] + saved["shipped"] + saved["other"]
    assert saved["invoice"][0] not in ids(node_b.deliveries["wildcard"])


def test_c8_4_a_filter_on_event_types_passes_only_order_placed(routing):
    node_b, saved, _ = routing
    assert ids(node_b.deliveries["placed-only"]) == saved["placed"] + saved["other"]


def test_c8_5_an_actor_pattern_passes_only_that_actor(routing):
    node_b, saved, _ = routing
    assert ids(node_b.deliveries["one-actor"]) == saved["placed"] + saved["shipped"]


@pytest.fixture(scope="module")
def crossing(aether_nats_server):
    """Every step of capability 9; the tests only look at what happened.

    node-a and node-b both subscribe to "orders" (node-b durably); node-a saves two
    events; node-b goes offline (a clean exit) and node-a saves three more; node-b
    comes back under the same durable name.
    """
    orders = f"seed{uuid.uuid4().hex[:8]}.orders"
    durable = f"node-b-{uuid.uuid4().hex[:8]}"
    node_a, node_b = Node("node-a"), Node("node-b")
    node_a.save(orders, "warmup", [1])
    node_a.subscribe("a-local", orders)
    node_b.subscribe("b", orders, durable=durable)
    first = node_a.save(orders, "order-1", [1, 2])
    node_b.received("b", 2)
    node_a.received("a-local", 2)
    node_a.settle()
    a_local = list(node_a.deliveries["a-local"])

    node_b.exit()  # node-b goes away
    offline = node_a.save(orders, "order-2", [1, 2, 3])
    stored_while_offline = asyncio.run(stream_messages(aether_nats_server.url, orders))

    back = Node("node-b")
    back.subscribe("b", orders, durable=durable)
    back.received("b", 3)
    back.settle()
    yield {
        "orders": orders,
        "a": node_a,
        "a_local": a_local,
        "b": node_b,
        "b_back": back,
        "first": first,
        "offline": offline,
        "stored_while_offline": stored_while_offline,
    }
    node_a.exit()
    back.exit()


async def stream_messages(aether_nats_url: str, namespace: str) -> int:
    nc = await nats.connect(aether_nats_url)
    try:
        stream = namespace.replace(".", "__") + "_events"
        return (await nc.jetstream().stream_info(stream)).state.messages
    finally:
        await nc.close()


def test_c9_1_node_a_publishes_an_event_to_orders(crossing):
    assert len(crossing["first"]) == 2


def test_c9_2_a_subscriber_on_node_b_receives_it(crossing):
    assert ids(crossing["b"].deliveries["b"]) == crossing["first"]


def test_c9_3_the_event_crosses_nats_without_local_delivery_interference(crossing):
    # node-a's own subscriber gets each event exactly once, from the stream.
    assert ids(crossing["a_local"]) == crossing["first"]
    assert all(d["sequence"] for d in crossing["a_local"])


def test_c9_4_while_node_b_is_offline_jetstream_keeps_the_events(crossing):
    assert crossing["b"].process.returncode == 0  # node-b was really gone
    assert crossing["stored_while_offline"] == 1 + 2 + 3


def test_c9_5_node_b_reconnects_and_receives_the_buffered_events_in_order(crossing):
    got = crossing["b_back"].deliveries["b"]
    assert ids(got) == crossing["offline"]  # in order, none missing, none repeated
    sequences = [d["sequence"] for d in got]
    assert sequences == sorted(sequences)


# --- the capability targets: delivery latency, as functional bounds -------------------------
# The seed's targets are "<10ms delivery" (capability 8) and "<50ms cross-node delivery"
# (capability 9). The median over 50 saves, each timed from just before the save call to
# the subscriber's receipt with CLOCK_MONOTONIC (one clock for every process of a
# machine), is typically under a millisecond, so these bounds hold with a wide margin
# on a loaded machine and fail only when delivery is broken (stalls, polling, batching).
SAVES = 50


def latencies(saver: Node, receiver: Node, namespace: str) -> list[float]:
    started = {}
    for version in range(1, SAVES + 1):
        (event_id,), at = saver.save_timed(namespace, "order-1", [version])
        started[event_id] = at
        receiver.received("timed", version)  # one at a time: latency, not queueing
    got = receiver.received("timed", SAVES)
    assert sorted(d["id"] for d in got) == sorted(started)
    return [d["received"] - started[d["id"]] for d in got]


def test_c8_target_delivery_within_10ms_median_over_50_saves(aether_nats_server):
    namespace = f"seed{uuid.uuid4().hex[:8]}.orders"
    node = Node("node-a")
    try:
        node.save(namespace, "warmup", [1])
        node.subscribe("timed", namespace)
        assert statistics.median(latencies(node, node, namespace)) < 0.010
    finally:
        node.exit()


def test_c9_target_cross_node_delivery_within_50ms_median_over_50_saves(aether_nats_server):
    namespace = f"seed{uuid.uuid4().hex[:8]}.orders"
    node_a, node_b = Node("node-a"), Node("node-b")
    try:
        node_a.save(namespace, "warmup", [1])
        node_b.subscribe("timed", namespace)
        assert statistics.median(latencies(node_a, node_b, namespace)) < 0.050
    finally:
        node_a.exit()
        node_b.exit()
