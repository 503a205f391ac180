"""Commands through a real ASGI server (uvicorn), routed to a real node process and run locally.

A node (``manage.py aether_node`` in a process of its own, on a cluster bucket of this
test's) owns every shard. The server (uvicorn in a thread of this process, sharing its
settings and test database) runs the same requests twice: with ``COMMAND_ROUTING =
"auto"``, which finds the node alive and sends each command to it, and with
``"never"``, which runs them in the server. A plain NATS subscriber counts the requests
on the shards' subjects, so the test knows which path each run took; the answers must
be the same either way.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import override_settings

from aether_django import correlation
from aether_django.sharding.commands import forget_liveness

from ..aggregates.domain import Order
from ..cluster.nodes import NodeProcess, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

NS = "test-orders"
LINE = {"sku": "pen", "quantity": 2, "price_cents": 150}
#: Starting a Django process and settling normally takes a few seconds.
SETTLE_TIMEOUT = 90.0


@pytest.fixture
def node(aether_nats_server) -> Iterator[tuple[NodeProcess, str]]:
    """One node process owning every shard of a fresh cluster bucket."""
    bucket = f"cmd_{uuid.uuid4().hex[:8]}"
    process = NodeProcess("cmd-node-a", bucket)
    try:
        wait_until(lambda: process.last.get("shards") == 100, SETTLE_TIMEOUT, interval=0.2)
        yield process, bucket
    finally:
        process.stop()


class ShardRequests:
    """Counts the requests on ``aether.shard.>``, from a NATS connection of its own."""

    def __init__(self, url: str) -> None:
        self.count = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._watch(url),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    async def _watch(self, url: str) -> None:
        nc = await nats.connect(url)
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()

        async def seen(_msg: Any) -> None:
            self.count += 1

        await nc.subscribe("aether.shard.>", cb=seen)
        await nc.flush()
        self._ready.set()
        await self._stop.wait()
        await nc.close()

    def close(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class Client:
    """One keep-alive HTTP connection, with basic auth."""

    def __init__(self, address: str, user: str, password: str) -> None:
        self.conn = http.client.HTTPConnection(address, timeout=60)  # "host:port"
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def post(self, path: str, body: Any, **headers: str) -> tuple[int, Any, Any]:
        """Status, headers (any case), body."""
        self.conn.request("POST", path, json.dumps(body), {**self.headers, **headers})
        response = self.conn.getresponse()
        return response.status, response.headers, json.loads(response.read())

    def get(self, path: str) -> tuple[int, Any]:
        self.conn.request("GET", path, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())


def story(client: Client, actor: str) -> list[Any]:
    """The same requests for any actor; each answer without what differs between actors."""
    base = f"/api/aether/aggregates/{NS}/{actor}"
    requests: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        ("add_line", LINE, {}),  # 404: no such order, and add_line does not create
        ("place", {"customer": "ann"}, {"Idempotency-Key": "k-place", "X-Request-ID": "r-1"}),
        ("place", {"customer": "ann"}, {"Idempotency-Key": "k-place"}),  # the first answer
        ("place", {"customer": "bob"}, {"Idempotency-Key": "k-place"}),  # 422: reused
        ("add_line", LINE, {"Idempotency-Key": "k-line"}),
        ("add_line", {**LINE, "quantity": "many"}, {}),  # 400
        ("pay", {}, {}),
        ("pay", {}, {}),  # 422: paid already
        ("add_line", LINE, {"Idempotency-Key": "k-line"}),  # the first answer, state then
    ]
    answers: list[Any] = []
    for command, body, headers in requests:
        status, response_headers, answer = client.post(
            f"{base}/commands/{command}/", body, **headers
        )
        if isinstance(answer, dict) and answer.get("actor_id") == actor:
            answer["actor_id"] = "A"
            for event in answer.get("events", []):
                assert event.pop("sequence") > 0
        replayed = response_headers.get("Idempotent-Replayed")
        answers.append((command, status, replayed, answer))
    status, state = client.get(f"{base}/")
    answers.append(("state", status, state["version"], state["state"]))
    return answers


def test_routed_and_local_commands_answer_the_same_through_a_real_server(
    server, node, aether_nats_url
):
    _process, bucket = node
    User.objects.create_superuser("cmd-root", password="pw")
    client = Client(server, "cmd-root", "pw")
    watcher = ShardRequests(aether_nats_url)
    try:
        forget_liveness()
        with override_settings(
            AETHER={**settings.AETHER, "CLUSTER_BUCKET": bucket, "COMMAND_ROUTING": "auto"}
        ):
            routed_actor = f"order-{uuid.uuid4().hex[:8]}"
            routed = story(client, routed_actor)
        sent_to_the_node = watcher.count
        forget_liveness()
        with override_settings(
            AETHER={**settings.AETHER, "CLUSTER_BUCKET": bucket, "COMMAND_ROUTING": "never"}
        ):
            local = story(client, f"order-{uuid.uuid4().hex[:8]}")
        assert watcher.count == sent_to_the_node  # nothing went to the node this time
    finally:
        watcher.close()
        client.conn.close()
        forget_liveness()
    # Every command went to the node (which also found the first order missing) except
    # the one with a bad argument, refused by the server before anything was sent.
    assert sent_to_the_node == 8
    assert routed == local
    statuses = [(name, status, replayed) for name, status, replayed, _ in routed]
    assert statuses == [
        ("add_line", 404, None),
        ("place", 200, None),
        ("place", 200, "true"),
        ("place", 422, None),
        ("add_line", 200, None),
        ("add_line", 400, None),
        ("pay", 200, None),
        ("pay", 422, None),
        ("add_line", 200, "true"),
        ("state", 200, 3),
    ]
    assert routed[2][3] == routed[1][3] and routed[8][3] == routed[4][3]
    assert routed[3][3]["code"] == "idempotency_key_reused"
    assert routed[7][3] == {
        "code": "domain_error",
        "detail": "only a placed order can be paid, not a paid one",
    }
    # The routed command's event carries the request's id, set on the server and
    # carried to the node with the command.
    first = Order.get_store().get_events(routed_actor)[0]
    assert first.metadata[correlation.CORRELATION_KEY] == "r-1"
    assert first.command_id == "k-place"


def test_concurrent_requests_with_one_key_through_the_server_apply_once_when_routed(server, node):
    _process, bucket = node
    User.objects.create_superuser("cmd-root2", password="pw")
    actor = f"order-{uuid.uuid4().hex[:8]}"
    forget_liveness()
    answers: list[Any] = []
    with override_settings(
        AETHER={**settings.AETHER, "CLUSTER_BUCKET": bucket, "COMMAND_ROUTING": "always"}
    ):
        setup = Client(server, "cmd-root2", "pw")
        path = f"/api/aether/aggregates/{NS}/{actor}/commands"
        assert setup.post(f"{path}/place/", {"customer": "ann"})[0] == 200
        barrier = threading.Barrier(8)

        def send() -> None:
            client = Client(server, "cmd-root2", "pw")
            barrier.wait()
            status, _, body = client.post(f"{path}/add_line/", LINE, **{"Idempotency-Key": "one"})
            answers.append((status, body))
            client.conn.close()

        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    forget_liveness()
    assert [status for status, _ in answers] == [200] * 8
    assert all(body == answers[0][1] for _, body in answers)
    events = Order.get_store().get_events(actor)
    assert [e.command_id for e in events].count("one") == 1 and len(events) == 2
