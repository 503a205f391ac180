"""A durable subscription whose handler raises stops at that event instead of skipping it.

Nodes are separate OS processes (``tests.bus.node``) talking through the session's
nats-server. The subscriber's handler raises on one event; it appends an event id
to a file only when it has handled the event, so the file is what was really
handled. The subscriber process is then killed and started again with the same
durable name: across the restart every event is handled once, in order.
"""

from __future__ import annotations

import uuid

import pytest

from aether_django.bus.local import DEFAULT_HANDLER_RETRIES

from .nodes import Node, handled_ids, wait_for_lines

pytestmark = pytest.mark.slow

EVENTS = 5
FAILING_VERSION = 3


@pytest.mark.parametrize("mode", ["callback", "sync_callback", "iterate"])
def test_a_handler_that_keeps_raising_stops_the_durable_subscription_at_its_event(
    aether_nats_server, tmp_path, mode
):
    orders = f"fail{uuid.uuid4().hex[:8]}.orders"
    handled = tmp_path / "handled"
    durable = f"fail-{uuid.uuid4().hex[:8]}"
    node_a, node_b = Node("node-a"), Node("node-b")
    restarted: Node | None = None
    try:
        node_a.save(orders, "warmup", [1])  # the stream exists before node-b subscribes
        node_b.subscribe(
            "b",
            orders,
            durable=durable,
            handled_file=str(handled),
            mode=mode,
            fail_versions=[FAILING_VERSION],
        )
        saved = node_a.save(orders, "order-1", list(range(1, EVENTS + 1)))
        failing = saved[FAILING_VERSION - 1]

        ending = node_b.ending("b", timeout=20)
        node_b.settle(0.5)  # anything handed over after the stop would be here by now
        handed_over = [d["id"] for d in node_b.deliveries.get("b", [])]
        # Nothing after the failing event was handed over or handled: the
        # subscription retried it and then stopped at it.
        assert handled_ids(handled) == saved[: FAILING_VERSION - 1]
        assert handed_over == saved[: FAILING_VERSION - 1] + [failing] * (
            DEFAULT_HANDLER_RETRIES + 1
        )
        assert ending is not None
        assert ending["error"] == "SubscriptionHandlerError"
        assert ending["event_id"] == failing
        assert ending["attempts"] == DEFAULT_HANDLER_RETRIES + 1
        assert failing in ending["message"]
        sequence = node_b.deliveries["b"][FAILING_VERSION - 1]["sequence"]
        assert ending["sequence"] == sequence
        assert ending["resume_start"] == {orders: sequence}

        # A real restart: the process dies, a new one resumes with the same name
        # (its handler works now) and starts at the failed event.
        node_b.kill()
        restarted = Node("node-b")
        restarted.subscribe("b", orders, durable=durable, handled_file=str(handled), mode=mode)
        wait_for_lines(handled, EVENTS, timeout=30)
        restarted.settle(1.0)  # a repeated event would have arrived by now
        assert handled_ids(handled) == saved
        assert [d["id"] for d in restarted.deliveries["b"]] == saved[FAILING_VERSION - 1 :]
    finally:
        node_a.exit()
        if restarted is not None:
            restarted.exit()
        if node_b.process.poll() is None:
            node_b.kill()


def test_a_handler_that_fails_twice_then_succeeds_handles_every_event_once_in_order(
    aether_nats_server, tmp_path
):
    orders = f"flaky{uuid.uuid4().hex[:8]}.orders"
    handled = tmp_path / "handled"
    node_a, node_b = Node("node-a"), Node("node-b")
    try:
        node_a.save(orders, "warmup", [1])
        node_b.subscribe(
            "b",
            orders,
            durable=f"flaky-{uuid.uuid4().hex[:8]}",
            handled_file=str(handled),
            mode="callback",
            fail_versions=[FAILING_VERSION],
            fail_times=2,
        )
        saved = node_a.save(orders, "order-1", list(range(1, EVENTS + 1)))
        assert wait_for_lines(handled, EVENTS, timeout=20) == saved
        node_b.settle(0.5)
        assert "b" not in node_b.endings
        handed_over = [d["id"] for d in node_b.deliveries["b"]]
        assert handed_over.count(saved[FAILING_VERSION - 1]) == 3
    finally:
        node_a.exit()
        if node_b.process.poll() is None:
            node_b.exit()
