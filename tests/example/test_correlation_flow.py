"""One request, followed: an HTTP command through a process manager to a second
aggregate's events and a WebSocket frame, all with the request's correlation id.

A real ASGI server (uvicorn, in a thread of this process) serves the example project's
API and WebSocket; ``StartShipments`` runs in a projection runner thread; a real
WebSocket client listens on ``shipments``. The ``pay`` command is sent with an
``X-Request-ID``; the order's event, the shipment the process manager starts, the
frame the client receives, the events API and the admin's correlation page all name
that id, and the shipment's event names the payment as its cause.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import Client

from aether_django.correlation import CAUSATION_KEY, CORRELATION_KEY
from example_project.shop.aggregates import Order
from example_project.shop.projections import StartShipments
from example_project.shop.shipments import Shipment

pytestmark = pytest.mark.django_db(transaction=True)


def post(address: str, path: str, body: Any, authorization: str, **headers: str) -> Any:
    """POST ``body`` as JSON; the 200 answer's body, and its X-Request-ID."""
    conn = http.client.HTTPConnection(address, timeout=30)  # "host:port"
    try:
        conn.request(
            "POST",
            path,
            json.dumps(body),
            {"Authorization": authorization, "Content-Type": "application/json", **headers},
        )
        response = conn.getresponse()
        payload = json.loads(response.read())
        assert response.status == 200, payload
        return payload, response.headers["X-Request-ID"]
    finally:
        conn.close()


async def test_one_request_id_follows_a_command_through_a_process_manager_to_a_websocket_frame(
    server,
    runners,
) -> None:
    import websockets

    name, password = f"u{uuid.uuid4().hex[:8]}", "pw"

    def login() -> str:
        User.objects.create_superuser(name, password=password)
        client = Client()
        assert client.login(username=name, password=password)
        return f"sessionid={client.cookies['sessionid'].value}"

    cookie = await sync_to_async(login)()
    authorization = "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()
    order_id = f"order-{uuid.uuid4().hex[:8]}"
    request_id = f"req-{uuid.uuid4().hex}"
    base = f"/api/aether/aggregates/orders/{order_id}/commands"

    async def command(command: str, body: dict[str, Any], **headers: str) -> Any:
        return await asyncio.to_thread(
            post, server, f"{base}/{command}/", body, authorization, **headers
        )

    await command("place", {"customer": "Ann"})
    await command("add_line", {"sku": "book", "quantity": 1, "price_cents": 900})
    runners(StartShipments)
    async with websockets.connect(
        f"ws://{server}/ws/aether/", additional_headers={"Cookie": cookie}
    ) as ws:
        await ws.send(json.dumps({"action": "subscribe", "id": "s", "namespace": "shipments"}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        paid, echoed = await command("pay", {}, **{"X-Request-ID": request_id})
        assert [e["event_type"] for e in paid["events"]] == ["OrderPaid"]
        assert echoed == request_id
        frame: dict[str, Any] = {}
        while frame.get("actor_id") != order_id:
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if message["type"] == "event":
                frame = message["event"]

    paid_event = (await Order.get_store().aget_events(order_id))[-1]
    assert paid_event.event_type == "OrderPaid"
    assert paid_event.metadata[CORRELATION_KEY] == request_id
    assert paid_event.metadata[CAUSATION_KEY] == request_id

    # The frame is the shipment the process manager started, caused by the payment.
    assert frame["event_type"] == "ShipmentStarted"
    assert (frame["correlation_id"], frame["causation_id"]) == (request_id, paid_event.id)
    started = (await Shipment.get_store().aget_events(order_id))[0]
    assert started.id == frame["id"]
    assert started.metadata[CORRELATION_KEY] == request_id
    assert started.metadata[CAUSATION_KEY] == paid_event.id
    assert started.command_id == f"{StartShipments._meta.name}:{paid_event.id}"

    def read_back() -> tuple[Any, str]:
        client = Client()
        client.login(username=name, password=password)
        listed = client.get(f"/api/aether/namespaces/shipments/actors/{order_id}/events/").json()
        page = client.get(
            "/admin/aether_django/streaminspection/correlation/", {"id": request_id}
        ).content.decode()
        return listed, page

    listed, page = await sync_to_async(read_back)()
    events = listed["results"] if isinstance(listed, dict) else listed
    assert [(e["correlation_id"], e["causation_id"]) for e in events] == [
        (request_id, paid_event.id)
    ]
    # The admin's correlation page lists both events, across the two namespaces.
    assert paid_event.id in page and started.id in page
