"""WebSockets through a real ASGI server (uvicorn) and a real client: origin, slow clients."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client, override_settings

from aether_django.bus import get_event_bus
from aether_django.consumers import EventsConsumer
from aether_django.store import get_event_store
from aether_django.testing.contract import ev

pytestmark = pytest.mark.django_db(transaction=True)


async def session_cookie(superuser=True):
    from django.contrib.auth.models import User

    def login():
        name = f"u{uuid.uuid4().hex[:8]}"
        User.objects.create_superuser(name, password="pw")
        client = Client()
        assert client.login(username=name, password="pw")
        return f"sessionid={client.cookies['sessionid'].value}"

    return await sync_to_async(login)()


async def test_a_foreign_origin_is_refused():
    from tests.asgi import application

    with override_settings(ALLOWED_HOSTS=["testserver"]):
        communicator = WebsocketCommunicator(
            application, "/ws/aether/", headers=[(b"origin", b"http://elsewhere.example")]
        )
        connected, _ = await communicator.connect()
        assert not connected


async def test_events_saved_by_another_process_reach_a_real_websocket_client(server, tmp_path):
    import sys

    import websockets

    ns = f"ws-{uuid.uuid4().hex[:8]}"
    await get_event_store(ns).asave_event(ev("warm", 1))
    cookie = await session_cookie()
    async with websockets.connect(
        f"ws://{server}/ws/aether/", additional_headers={"Cookie": cookie}
    ) as ws:
        await ws.send(json.dumps({"action": "subscribe", "id": "s", "namespace": ns}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        code = (
            "import os, django\n"
            "os.environ['DJANGO_SETTINGS_MODULE'] = 'tests.settings'\n"
            "django.setup()\n"
            "from aether_django.store import get_event_store\n"
            "from aether_django.testing.contract import ev\n"
            f"get_event_store({ns!r}).save_events([ev('x', 1), ev('x', 2)])\n"
        )
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
        assert await asyncio.wait_for(process.wait(), 60) == 0
        frames = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
        assert [f["event"]["version"] for f in frames] == [1, 2]


async def test_clients_closing_while_events_flow_are_not_logged_as_failures(server, caplog):
    """A client that closes while a frame is on its way has ended its subscription, which
    has not failed (uvicorn raises ClientDisconnected or RuntimeError for that send)."""
    import websockets

    ns = f"ws-{uuid.uuid4().hex[:8]}"
    store = get_event_store(ns)
    await store.asave_event(ev("a", 1))
    cookie = await session_cookie()
    stop = asyncio.Event()

    async def write() -> None:
        version = 2
        while not stop.is_set():
            await store.asave_event(ev("a", version))
            version += 1

    writer = asyncio.ensure_future(write())
    with caplog.at_level(logging.ERROR, logger="aether_django.consumers"):
        try:
            for i in range(100):
                async with websockets.connect(
                    f"ws://{server}/ws/aether/", additional_headers={"Cookie": cookie}
                ) as ws:
                    await ws.send(json.dumps({"action": "subscribe", "id": "s", "namespace": ns}))
                    assert json.loads(await ws.recv())["type"] == "subscribed"
                    for _ in range(i % 3):  # then close with frames in flight
                        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "event"
        finally:
            stop.set()
            await writer
        await asyncio.sleep(0.5)  # the server's side of the last closes
    assert [r.getMessage() for r in caplog.records if r.name == "aether_django.consumers"] == []


@pytest.mark.slow
@pytest.mark.parametrize("start", ["all", "new"])
async def test_a_client_that_does_not_read_is_disconnected_and_can_resume(
    server, monkeypatch, start
):
    """Catching up ("all": each socket has its own consumer, which waits for it) and
    following live ("new": sockets share one consumer, which never waits for one):
    either way the client that does not read is cut off and the other is not slowed."""
    import websockets

    monkeypatch.setattr(EventsConsumer, "send_timeout", 1.0)
    monkeypatch.setattr(EventsConsumer, "buffer_size", 50)
    monkeypatch.setattr(EventsConsumer, "live_buffer_size", 50)
    ns = f"ws-{uuid.uuid4().hex[:8]}"
    store = get_event_store(ns)
    # Enough data to fill every buffer between the server and a client that does not read
    # (the kernel's socket buffers on loopback hold several MB).
    total, blob = 1500, "x" * 16000
    stored = []

    async def save_all() -> None:
        for first in range(1, total + 1, 100):
            stored.extend(
                await store.asave_events([ev("a", v, blob=blob) for v in range(first, first + 100)])
            )

    await store.aensure()  # type: ignore[attr-defined]  # a JetStream store
    if start == "all":
        await save_all()
    cookie = await session_cookie()

    # A raw client with a tiny socket buffer that subscribes and then does not read.
    host, port = server.split(":")
    slow = RawWebSocket(host, int(port), cookie)
    fast = await websockets.connect(
        f"ws://{server}/ws/aether/", additional_headers={"Cookie": cookie}
    )
    slow.send({"action": "subscribe", "id": "s", "namespace": ns, "from": start})
    await fast.send(json.dumps({"action": "subscribe", "id": "f", "namespace": ns, "from": start}))
    assert json.loads(await fast.recv())["type"] == "subscribed"
    if start == "new":
        await asyncio.sleep(0.5)  # the slow client's subscription is in place too
        saving = asyncio.ensure_future(save_all())
    fast_versions = []
    while len(fast_versions) < total:  # the other client is not slowed down
        frame = json.loads(await asyncio.wait_for(fast.recv(), 10))
        fast_versions.append(frame["event"]["version"])
    assert fast_versions == list(range(1, total + 1))
    if start == "new":
        await saving
    await asyncio.sleep(3)  # the slow client's sends time out meanwhile

    # Now it reads: what was delivered, then the reason and where to resume.
    received, last = [], None
    frames = await asyncio.to_thread(slow.read_all)
    for opcode, payload in frames:
        if opcode == 1:
            frame = json.loads(payload)
            if frame["type"] == "event":
                received.append(frame["sequence"])
            elif frame["type"] == "error":
                assert frame["code"] == "slow_consumer"
                last = frame["last_sequences"][ns]
    close_code = int.from_bytes(frames[-1][1][:2], "big") if frames[-1][0] == 8 else None
    assert close_code == 4008, frames[-1]
    assert last is not None and received and received[-1] == last
    assert 0 < len(received) < total

    # It reconnects from last + 1 and misses nothing.
    async with websockets.connect(
        f"ws://{server}/ws/aether/", additional_headers={"Cookie": cookie}
    ) as again:
        await again.send(
            json.dumps({"action": "subscribe", "id": "s", "namespace": ns, "from": last + 1})
        )
        assert json.loads(await again.recv())["type"] == "subscribed"
        rest = [
            json.loads(await asyncio.wait_for(again.recv(), 10))["sequence"]
            for _ in range(total - len(received))
        ]
    assert received + rest == [e.sequence for e in stored]
    await fast.close()


class RawWebSocket:
    """The least a WebSocket client needs, on a blocking socket that reads only when told."""

    def __init__(self, host: str, port: int, cookie: str) -> None:
        import base64
        import os

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws/aether/ HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)
        assert b" 101 " in response.split(b"\r\n")[0], response
        self.buffer = b""

    def send(self, doc: dict) -> None:
        import os

        payload = json.dumps(doc).encode()
        mask = os.urandom(4)
        header = (
            bytes([0x81, 0x80 | len(payload)])
            if len(payload) < 126
            else (bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big"))
        )
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_frame(self) -> tuple[int, bytes]:
        """The next frame: (opcode, payload)."""
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(self._read(2), "big")
        elif length == 127:
            length = int.from_bytes(self._read(8), "big")
        return first & 0x0F, self._read(length)

    def read_all(self) -> list[tuple[int, bytes]]:
        """Every frame until the close frame (or the end of the connection)."""
        self.sock.settimeout(20)
        frames = []
        try:
            while True:
                frames.append(self.read_frame())
                if frames[-1][0] == 8:
                    break
        except (EOFError, OSError):
            pass
        self.sock.close()
        return frames


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class PeakRSS:
    """Samples this process's RSS every 20 ms in a thread; ``growth`` is the peak over
    the RSS when sampling began."""

    def __init__(self) -> None:
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.base


MIB = 1024 * 1024


async def test_large_events_for_clients_that_do_not_read_keep_memory_bounded(
    server, settings, monkeypatch
):
    """Events near the size limit, for sockets following live that stop reading: the
    server process holds at most the byte budgets (each subscription's buffer, the frame
    cache), not thousands of events. Measured as the RSS of this process, which runs the
    server. (Sockets catching up: see the next test.)"""
    import gc

    settings.AETHER = {
        **settings.AETHER,
        "WS_BUFFER_BYTES": 2 * MIB,
        "WS_FRAME_CACHE_BYTES": 2 * MIB,
    }
    monkeypatch.setattr(EventsConsumer, "send_timeout", 30.0)  # they stay stuck meanwhile
    ns = f"ws-{uuid.uuid4().hex[:8]}"
    store = get_event_store(ns)
    await store.aensure()  # type: ignore[attr-defined]  # a JetStream store
    count, blob, start = 80, "y" * (900 * 1024), "new"
    total = count * len(blob)

    async def save_all() -> None:
        for version in range(1, count + 1):
            await store.asave_event(ev("a", version, blob=blob))

    cookie = await session_cookie()
    host, port = server.split(":")
    gc.collect()
    peak = PeakRSS()
    # Clients that subscribe and never read, each subscription with its own buffer.
    stuck = [RawWebSocket(host, int(port), cookie) for _ in range(3)]
    for client in stuck:
        for sub_id in ("s", "t"):
            client.send({"action": "subscribe", "id": sub_id, "namespace": ns, "from": start})
    await asyncio.sleep(0.5)  # subscribed
    await save_all()
    await asyncio.sleep(2)  # the server has read what it will read
    growth = peak.stop()
    for client in stuck:
        client.sock.close()
    # Budgets: 2 MiB per buffer (the buffers share the events), 2 MiB of frames, the
    # frames on their way in the kernel's socket buffers, and what saving the events
    # takes here: far below the 70 MiB that buffering every event would take.
    assert growth < 30 * MIB, (growth / MIB, total / MIB)


async def test_the_frame_cache_keeps_to_its_byte_budget(settings):
    """An event that reaches many sockets is encoded once and cached: large events do
    not fill the cache's 1024 places, they are dropped at WS_FRAME_CACHE_BYTES."""
    import dataclasses
    import gc

    from aether_django import consumers
    from aether_django.bus import Delivery

    settings.AETHER = {**settings.AETHER, "WS_FRAME_CACHE_BYTES": 4 * MIB}
    blob = "c" * (900 * 1024)
    gc.collect()
    peak = PeakRSS()
    for sequence in range(1, 81):
        event = dataclasses.replace(ev("a", sequence, blob=blob), sequence=sequence)
        consumers._event_tail(Delivery(f"cache-{uuid.uuid4().hex[:6]}", event))
    gc.collect()
    growth = peak.stop()
    cached = sum(len(tail) for tail in consumers._TAILS.values())
    assert cached <= 4 * MIB
    assert growth < 20 * MIB, growth / MIB


async def test_catching_up_subscriptions_of_clients_that_do_not_read_keep_memory_bounded(
    server, settings, monkeypatch
):
    """Sockets catching up ("all": each subscription has a JetStream consumer of its own)
    on a stream of large events, then not reading: the process holds about two byte
    budgets per subscription (its buffer and what the NATS client may queue for its
    consumer), not what nats-server pushes up to its flow-control window (32 MiB and
    more per consumer). Measured as the RSS of this process, which runs the server."""
    import gc

    settings.AETHER = {
        **settings.AETHER,
        "WS_BUFFER_BYTES": 2 * MIB,
        "WS_FRAME_CACHE_BYTES": 2 * MIB,
    }
    monkeypatch.setattr(EventsConsumer, "send_timeout", 30.0)  # they stay stuck meanwhile
    ns = f"ws-{uuid.uuid4().hex[:8]}"
    store = get_event_store(ns)
    blob = "y" * (900 * 1024)
    for first in range(1, 61, 5):
        await store.asave_events([ev("a", v, blob=blob) for v in range(first, first + 5)])
    cookie = await session_cookie()
    host, port = server.split(":")
    gc.collect()
    peak = PeakRSS()
    stuck = [RawWebSocket(host, int(port), cookie) for _ in range(3)]
    for client in stuck:
        for sub_id in ("s", "t"):
            client.send({"action": "subscribe", "id": sub_id, "namespace": ns, "from": "all"})
    # Long enough for the server's stalled-consumer heartbeats (every 2 s) to come by.
    await asyncio.sleep(6)
    growth = peak.stop()
    for client in stuck:
        client.sock.close()
    # Six subscriptions with 2 MiB budgets: 2 x 2 MiB each, plus the events in hand
    # (decoded, being encoded and sent) and what the allocator keeps; each could
    # otherwise hold the whole 54 MB stream (335 MiB were measured so).
    assert growth < 90 * MIB, growth / MIB


async def test_a_slow_catching_up_client_gets_every_large_event_once_in_order(
    server, settings, caplog, monkeypatch
):
    """A client catching up on large events that reads, but slowly: its subscription's
    consumer is held to the byte budget (what the NATS client queued beyond it is read
    again from where the client got to), and the client still receives every event
    exactly once, in order, with nothing logged as a failure."""
    settings.AETHER = {**settings.AETHER, "WS_BUFFER_BYTES": 2 * MIB}
    monkeypatch.setattr(EventsConsumer, "send_timeout", 30.0)  # it pauses for 6 s
    ns = f"ws-{uuid.uuid4().hex[:8]}"
    store = get_event_store(ns)
    blob = "s" * (900 * 1024)
    stored = []
    for first in range(1, 41, 5):
        stored.extend(
            await store.asave_events([ev("a", v, blob=blob) for v in range(first, first + 5)])
        )
    cookie = await session_cookie()
    restarts = get_event_bus().metrics.get("restarts", 0)
    host, port = server.split(":")
    # A client with a tiny socket buffer: what it does not read waits in the server.
    client = RawWebSocket(host, int(port), cookie)
    client.sock.settimeout(20)
    with caplog.at_level(logging.WARNING):
        client.send({"action": "subscribe", "id": "s", "namespace": ns, "from": "all"})
        received = []
        while len(received) < len(stored):
            opcode, payload = await asyncio.to_thread(client.read_frame)
            assert opcode == 1, (opcode, payload[:200])
            frame = json.loads(payload)
            if frame["type"] == "subscribed":
                continue
            assert frame["type"] == "event", frame
            received.append(frame["sequence"])
            # A reader that stops for a while (nats-server pushes to the consumer
            # again at its stalled-consumer heartbeats), then reads slowly.
            await asyncio.sleep(6 if len(received) == 3 else 0.05)
        client.sock.settimeout(1)
        with pytest.raises(OSError):  # a timeout: nothing twice
            client.read_frame()
        client.sock.close()
    assert received == [e.sequence for e in stored]
    # The consumer was held to its budget: messages were dropped and read again.
    assert get_event_bus().metrics.get("restarts", 0) > restarts
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_an_event_frame_carries_the_correlation_and_causation_ids(server):
    """A command run in a request's context reaches a real WebSocket client with both
    ids, at the frame's event's top level and in its metadata."""
    import websockets

    from aether_django import correlation
    from tests.aggregates.domain import Ledger

    actor = f"ledger-{uuid.uuid4().hex[:8]}"
    await Ledger.objects.aupdate(actor, lambda ledger: ledger.post(), create=True)  # the stream
    cookie = await session_cookie()
    async with websockets.connect(
        f"ws://{server}/ws/aether/", additional_headers={"Cookie": cookie}
    ) as ws:
        await ws.send(json.dumps({"action": "subscribe", "id": "s", "namespace": "test-ledgers"}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        with correlation.use("req-ws", "cause-ws"):
            await Ledger.objects.aupdate(actor, lambda ledger: ledger.post_pair(), command_id="c")
        frames = []
        while len(frames) < 2:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if frame["type"] == "event" and frame["event"]["actor_id"] == actor:
                frames.append(frame["event"])
    for event in frames:
        assert (event["correlation_id"], event["causation_id"]) == ("req-ws", "cause-ws")
        assert event["metadata"]["correlationId"] == "req-ws"
        assert event["metadata"]["causationId"] == "cause-ws"
        assert event["command_id"] == "c"
