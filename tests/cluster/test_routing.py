"""Serving commands: the owner runs each command id once, even when asked twice."""

from __future__ import annotations

import json
import uuid

from aether_django.cluster.hashring import shard_for
from aether_django.cluster.routing import ShardHost, shard_subject
from aether_django.runtime import Runtime

from ..aggregates.domain import Order


async def test_a_repeated_command_id_is_answered_without_running_again(nats_url):
    runtime = Runtime(nats_url)
    host = ShardHost(runtime, "node-a")
    try:
        await host.own(set(range(100)))
        actor = f"order-{uuid.uuid4().hex[:8]}"
        nc = await runtime.connection()
        subject = shard_subject(shard_for(actor, 100))

        async def ask(command, command_id, **arguments):
            body = {"namespace": "test-orders", "actor_id": actor, "command": command,
                    "arguments": arguments, "command_id": command_id}  # fmt: skip
            reply = await nc.request(subject, json.dumps(body).encode(), timeout=5)
            return json.loads(reply.data)

        assert (await ask("place", "c-1", customer="ann"))["version"] == 1
        line = {"sku": "pen", "quantity": 1, "price_cents": 2}
        assert (await ask("add_line", "c-2", **line))["version"] == 2
        again = await ask("add_line", "c-2", **line)  # a retry of the same command
        assert again["version"] == 2 and len(again["state"]["lines"]) == 1
        # A new owner (cold cache) recognises it too, from the stored history.
        other = ShardHost(runtime, "node-b")
        await host.stop()
        await other.own(set(range(100)))
        assert (await ask("add_line", "c-2", **line))["version"] == 2
        assert (await ask("add_line", "c-3", **line))["version"] == 3
        # Asked again later, it still answers the version the command was stored at.
        assert (await ask("add_line", "c-2", **line))["version"] == 2
        await other.stop()
        assert [e.command_id for e in await Order.get_store().aget_events(actor)] == [
            "c-1",
            "c-2",
            "c-3",
        ]
    finally:
        runtime.close()
