"""A durable subscription survives its process being killed (SIGKILL) while a handler runs.

Nodes are separate OS processes (``tests.bus.node``) talking through the session's
nats-server. The subscriber's handler takes 0.2 s per event and appends the event id
to a file only when it has finished, so the file is what was really handled, whatever
moment the kill lands at.
"""

from __future__ import annotations

import time
import uuid

import pytest

from .nodes import Node, handled_ids, wait_for_lines

pytestmark = pytest.mark.slow

HANDLE_SECONDS = 0.2
EVENTS = 20


def test_a_durable_subscriber_killed_mid_handling_resumes_with_none_missing_none_repeated(
    aether_nats_server, tmp_path
):
    orders = f"crash{uuid.uuid4().hex[:8]}.orders"
    handled = tmp_path / "handled"
    options = {
        "durable": f"crash-{uuid.uuid4().hex[:8]}",
        "handle_seconds": HANDLE_SECONDS,
        "handled_file": str(handled),
    }
    node_a, node_b = Node("node-a"), Node("node-b")
    restarted: Node | None = None
    try:
        node_a.save(orders, "warmup", [1])  # the stream exists before node-b subscribes
        node_b.subscribe("b", orders, **options)
        saved: list[str] = []
        for version in range(1, EVENTS + 1):
            saved += node_a.save(orders, "order-1", [version])

        # The 6th event is handed over only once the 5th is handled (the handler asks
        # for the next one): node-b is then inside the 6th handler, 0.2 s long. Kill it
        # half-way through, well after anything the process does right at hand-over.
        handed_over = node_b.received("b", 6, timeout=30)
        assert len(handed_over) >= 6
        time.sleep(HANDLE_SECONDS / 2)
        node_b.kill()
        before = handled_ids(handled)
        node_b.settle(0.2)  # whatever it printed before dying
        # The kill landed while a handler ran: an event was taken and not finished.
        assert len(before) < len(node_b.deliveries["b"])
        assert 5 <= len(before) < EVENTS

        restarted = Node("node-b")
        restarted.subscribe("b", orders, **options)
        wait_for_lines(handled, EVENTS, timeout=30)
        restarted.settle(1.0)  # a repeated event would have arrived by now

        # In order, none missing, none twice: across the kill, as a whole.
        assert handled_ids(handled) == saved
    finally:
        node_a.exit()
        if restarted is not None:
            restarted.exit()
        if node_b.process.poll() is None:
            node_b.kill()
