"""The seed's success conditions for capabilities 8 and 9, with nodes as separate OS processes.

Test names follow shared/seed/aether-capabilities.md: ``test_c<capability>_<condition>_...``.
"""

from __future__ import annotations

import uuid

import pytest

from .nodes import Node

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def routing(nats_server):
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
    node_b, _, base = routing
    assert all(d["namespace"] == f"{base}.orders" for d in node_b.deliveries["exact"])


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
def crossing(nats_server):
    """node-a and node-b both subscribe durably to "orders"; node-a saves."""
    orders = f"seed{uuid.uuid4().hex[:8]}.orders"
    node_a, node_b = Node("node-a"), Node("node-b")
    node_a.save(orders, "warmup", [1])
    node_a.subscribe("a-local", orders)
    node_b.subscribe("b", orders, durable="node-b-orders")
    first = node_a.save(orders, "order-1", [1, 2])
    node_b.received("b", 2)
    node_a.received("a-local", 2)
    node_a.settle()
    state = {"orders": orders, "a": node_a, "b": node_b, "first": first}
    yield state
    state["a"].exit()
    state["b"].exit()


def test_c9_1_node_a_publishes_an_event_to_orders(crossing):
    assert len(crossing["first"]) == 2


def test_c9_2_a_subscriber_on_node_b_receives_it(crossing):
    assert ids(crossing["b"].deliveries["b"]) == crossing["first"]


def test_c9_3_the_event_crosses_nats_without_local_delivery_interference(crossing):
    # node-a's own subscriber gets each event exactly once, from the stream.
    assert ids(crossing["a"].deliveries["a-local"]) == crossing["first"]
    assert all(d["sequence"] for d in crossing["a"].deliveries["a-local"])


def test_c9_4_while_node_b_is_offline_jetstream_keeps_the_events(crossing, nats_url):
    import asyncio

    import nats

    crossing["b"].exit()  # node-b goes away
    crossing["offline"] = crossing["a"].save(crossing["orders"], "order-2", [1, 2, 3])

    async def count():
        nc = await nats.connect(nats_url)
        try:
            stream = crossing["orders"].replace(".", "__") + "_events"
            return (await nc.jetstream().stream_info(stream)).state.messages
        finally:
            await nc.close()

    assert asyncio.run(count()) == 1 + 2 + 3


def test_c9_5_node_b_reconnects_and_receives_the_buffered_events_in_order(crossing):
    node_b = Node("node-b")
    crossing["b"] = node_b
    node_b.subscribe("b", crossing["orders"], durable="node-b-orders")
    got = node_b.received("b", 3)
    node_b.settle()
    assert ids(node_b.deliveries["b"]) == crossing["offline"]  # in order, none repeated
    sequences = [d["sequence"] for d in node_b.deliveries["b"]]
    assert sequences == sorted(sequences) and len(got) == 3
