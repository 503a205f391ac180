"""WebSocket benchmark: latency from an API append to receipt on live sockets, and fan-out.

Run from the repository root::

    .venv/bin/python -m bench.ws                    # full run: 1 and 500 clients, 30-50 s
    .venv/bin/python -m bench.ws --quick            # 1 and 50 clients, about 10 s
    .venv/bin/python -m bench.ws --clients 200      # another number of clients
    .venv/bin/python -m bench.ws --no-compression   # clients do not offer permessage-deflate
    .venv/bin/python -m bench.ws --server-deflate   # uvicorn accepts it (its default)

One run starts its own nats-server (file storage in a temporary directory, free
ports) and serves the example project (``example_project.asgi:application``: HTTP
and the ``ws/aether/`` consumer) with uvicorn in a child process, the way
``python3 dev.py demo`` does: ``python -m uvicorn ... --ws websockets
--ws-per-message-deflate false`` (so the compression clients offer is declined,
unless ``--server-deflate``). The project's settings are used as they are, except
for a temporary SQLite database, ``DEBUG = False`` and the MD5 password hasher
(the API's basic auth checks the password on every append, and the default hasher
takes a large fraction of a second on purpose; the test settings use MD5 for the
same reason).

The benchmark process logs a superuser in (session cookie, as a browser would)
and opens WebSocket clients (the ``websockets`` library, permessage-deflate
negotiated as browsers do) to two namespaces: one client on the first, N on the
second, each subscribed from "new". It then appends events through the HTTP API
(``POST /api/aether/namespaces/{ns}/actors/{actor}/events/`` with basic auth, on
one keep-alive connection) and measures:

1. latency, p50 and p99, from the start of the append request to the receipt of
   the event on each socket, one event at a time (each after every socket got the
   previous one), alternating between the two namespaces in interleaved rounds.
   The baselines: for one client, an aether bus subscriber in the benchmark process
   (``NATSEventBus.asubscribe``, no WebSocket) receiving the same events; for N
   clients, the one-client figure;
2. fan-out: deliveries per second across all clients while a burst of events is
   appended in atomic batches of 100 (from the first request's start to the last
   receipt), against the same burst with one client.

Target: p99 < 50 ms with 500 clients. Printed as met or not met, never asserted.
The clients, uvicorn and nats-server share the machine's cores: the clients'
receive loop is part of what is measured.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import http.client
import importlib.metadata
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aether_django.bus.nats import NATSEventBus
from aether_django.runtime import Runtime
from aether_django.testing import NatsServer, find_free_port
from aether_django.testing.processes import start_process, stop_process, uvicorn_command

from ._setup import (
    ASGI_APP,
    PASSWORD,
    ROOT,
    USER,
    finish,
    load_at_end,
    prepare_project,
    project_env,
    wait_for_server,
)
from .common import Report, base_parser, clock, interleaved, machine_info, percentile, progress

ACTOR = "bench-actor"
#: How long one event may take to reach every socket before the run gives up.
DELIVERY_TIMEOUT = 60.0
TARGET_P99_MS = 50.0


@dataclass(frozen=True)
class Sizes:
    clients: int
    rounds: int
    #: Events per namespace and round in the latency figure.
    events_per_round: int
    #: Events of one fan-out burst (appended in batches of 100).
    burst: int
    burst_rounds: int
    #: Whether clients offer permessage-deflate (browsers do; uvicorn accepts it).
    compression: bool = True

    @classmethod
    def full(cls) -> Sizes:
        return cls(clients=500, rounds=4, events_per_round=20, burst=50, burst_rounds=2)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(clients=50, rounds=3, events_per_round=10, burst=50, burst_rounds=2)


# --- receipts -----------------------------------------------------------------------------


@dataclass
class Waiter:
    """Receipts of some events on some sockets; done when all ``expected`` arrived."""

    expected: int
    times: list[float] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def hit(self, when: float) -> None:
        self.times.append(when)
        if len(self.times) >= self.expected:
            self.done.set()


class Tracker:
    """Maps the ids of the events being waited for to their waiter."""

    def __init__(self) -> None:
        self.waiting: dict[str, Waiter] = {}
        self.problems: list[str] = []

    def expect(self, event_ids: Sequence[str], receivers: int) -> Waiter:
        waiter = Waiter(len(event_ids) * receivers)
        for event_id in event_ids:
            self.waiting[event_id] = waiter
        return waiter

    def forget(self, event_ids: Sequence[str]) -> None:
        for event_id in event_ids:
            self.waiting.pop(event_id, None)

    def hit(self, event_id: str, when: float) -> None:
        waiter = self.waiting.get(event_id)
        if waiter is not None:
            waiter.hit(when)


class Client:
    """One WebSocket subscribed to a namespace, reading in a task."""

    def __init__(self, tracker: Tracker, compression: bool = True) -> None:
        self.tracker = tracker
        self.compression = compression
        self.ws: Any = None
        self.task: asyncio.Task[None] | None = None

    async def open(self, url: str, cookie: str, origin: str, namespace: str) -> None:
        import websockets

        self.ws = await websockets.connect(
            url,
            additional_headers={"Cookie": cookie},
            origin=origin,  # type: ignore[arg-type]
            open_timeout=60,
            ping_interval=None,
            compression="deflate" if self.compression else None,
        )
        await self.ws.send(
            json.dumps({"action": "subscribe", "id": "s", "namespace": namespace, "from": "new"})
        )
        reply = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
        if reply.get("type") != "subscribed":
            raise RuntimeError(f"subscribe failed: {reply}")
        self.task = asyncio.get_running_loop().create_task(self.read())

    async def read(self) -> None:
        tracker = self.tracker
        try:
            async for message in self.ws:
                when = clock()
                frame = json.loads(message)
                if frame["type"] == "event":
                    tracker.hit(frame["event"]["id"], when)
                else:
                    tracker.problems.append(f"frame {frame}")
        except Exception as exc:
            tracker.problems.append(f"socket ended: {type(exc).__name__}: {exc}")
        if self.ws.close_code not in (None, 1000):
            tracker.problems.append(f"closed with {self.ws.close_code} {self.ws.close_reason}")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            await asyncio.wait([self.task], timeout=10)


# --- appending through the API ------------------------------------------------------------


class Appender:
    """POSTs events on one keep-alive HTTP connection, in a thread of its own."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="bench-append")
        self.conn: http.client.HTTPConnection | None = None
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        self.versions: dict[str, int] = {}

    def _post(self, path: str, body: bytes) -> tuple[float, float, dict[str, Any]]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            started = clock()
            try:
                self.conn.request("POST", path, body, self.headers)
                response = self.conn.getresponse()
                data = response.read()
                break
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                # The server closed the idle keep-alive connection. Sending again is safe:
                # the events carry their ids, so the API recognises a repeated append.
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        answered = clock()
        if response.status != 201:
            raise RuntimeError(f"append failed: {response.status} {data[:500]!r}")
        return started, answered, json.loads(data)

    async def append(self, namespace: str, events: list[dict[str, Any]]) -> tuple[float, float]:
        """Append ``events`` (one request; a batch when several); return (start, answer) times."""
        version = self.versions.get(namespace, 0)
        if len(events) == 1:
            doc: dict[str, Any] = {**events[0], "version": version + 1}
        else:
            doc = {"expected_version": version, "events": events}
        path = f"/api/aether/namespaces/{namespace}/actors/{ACTOR}/events/"
        loop = asyncio.get_running_loop()
        started, answered, _ = await loop.run_in_executor(
            self.pool, self._post, path, json.dumps(doc).encode()
        )
        self.versions[namespace] = version + len(events)
        return started, answered

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.pool.shutdown()


def new_events(count: int) -> list[dict[str, Any]]:
    return [
        {"id": uuid.uuid4().hex, "event_type": "Pinged", "data": {"n": i, "note": "bench"}}
        for i in range(count)
    ]


# --- the server ---------------------------------------------------------------------------


def raise_open_files_limit(wanted: int) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return str(soft)


def start_uvicorn(
    port: int,
    env: dict[str, str],
    profile: str | None = None,
    *,
    app: str = ASGI_APP,
    log: Path | None = None,
    deflate: bool = False,
) -> subprocess.Popen[bytes]:
    """uvicorn serving ``app`` on 127.0.0.1:``port``; its output goes to ``log`` when given."""
    command = uvicorn_command(
        app,
        port,
        deflate=deflate,  # off: as python3 dev.py demo serves it
        profile=profile,  # cProfile writes the file when uvicorn exits (on SIGINT)
        # The appends' connection idles between rounds.
        extra=["--log-level", "warning", "--timeout-keep-alive", "300"],
    )
    return start_process(command, cwd=ROOT, env=env, log=log)


def stop_uvicorn(process: subprocess.Popen[bytes]) -> None:
    # SIGINT: uvicorn shuts down and then raises the signal again, which ends the
    # process by KeyboardInterrupt (so cProfile still writes its file), not SIGTERM.
    stop_process(process, 15.0, signal.SIGINT)


# --- the figures --------------------------------------------------------------------------


async def connect_clients(
    count: int, port: int, cookie: str, namespace: str, tracker: Tracker, compression: bool
) -> list[Client]:
    url, origin = f"ws://127.0.0.1:{port}/ws/aether/", f"http://127.0.0.1:{port}"
    gate = asyncio.Semaphore(50)
    clients = [Client(tracker, compression) for _ in range(count)]

    async def one(client: Client) -> None:
        async with gate:
            await client.open(url, cookie, origin, namespace)

    await asyncio.gather(*(one(c) for c in clients))
    return clients


async def run_all(
    report: Report,
    sizes: Sizes,
    nats_url: str,
    port: int,
    cookie: str,
    nats_log: Path,
    pids: dict[str, int],
) -> None:
    tracker = Tracker()
    appender = Appender(port)
    one_ns, many_ns = f"ws_one_{uuid.uuid4().hex[:8]}", f"ws_many_{uuid.uuid4().hex[:8]}"
    n = sizes.clients
    # Create both streams before anyone subscribes.
    for ns in (one_ns, many_ns):
        await appender.append(ns, new_events(1))

    runtime = Runtime(nats_url, name="bench-ws-baseline")
    bus = NATSEventBus(runtime=runtime)
    subscription = await bus.asubscribe(one_ns, start="new")
    bus_hits: dict[str, float] = {}

    async def bus_pump() -> None:
        async for delivery in subscription:
            bus_hits[delivery.event.id] = clock()

    pump = asyncio.get_running_loop().create_task(bus_pump())
    progress(f"connecting 1 + {n} WebSocket clients")
    started = clock()
    clients = await connect_clients(1, port, cookie, one_ns, tracker, sizes.compression)
    clients += await connect_clients(n, port, cookie, many_ns, tracker, sizes.compression)
    connect_seconds = clock() - started
    progress(f"connected and subscribed in {connect_seconds:.1f} s")

    latencies: dict[str, list[float]] = {"one": [], "many": [], "bus": [], "append": []}
    measuring = False

    # One client's events are quick: five times as many give its p99 enough samples.
    one_per_round = 5 * sizes.events_per_round

    async def latency_round(namespace: str, receivers: int, key: str) -> float:
        values: list[float] = []
        for _ in range(one_per_round if receivers == 1 else sizes.events_per_round):
            events = new_events(1)
            ids = [events[0]["id"]]
            waiter = tracker.expect(ids, receivers)
            begun, answered = await appender.append(namespace, events)
            await asyncio.wait_for(waiter.done.wait(), DELIVERY_TIMEOUT)
            tracker.forget(ids)
            values += [(t - begun) * 1000 for t in waiter.times]
            if measuring:
                latencies[key] += [(t - begun) * 1000 for t in waiter.times]
                if key == "one":
                    latencies["append"].append((answered - begun) * 1000)
                    for _ in range(100):  # the bus subscriber may trail the socket a little
                        if ids[0] in bus_hits:
                            break
                        await asyncio.sleep(0.001)
                    if ids[0] in bus_hits:
                        latencies["bus"].append((bus_hits.pop(ids[0]) - begun) * 1000)
        return percentile(values, 50)

    async def warm() -> None:
        await latency_round(one_ns, 1, "one")
        await latency_round(many_ns, n, "many")

    progress("warming up")
    await warm()
    measuring = True
    progress(
        f"1. latency: {sizes.rounds} rounds x {one_per_round} events to 1 client, "
        f"{sizes.events_per_round} to {n}"
    )
    latency_cpu = CpuMeter(pids)
    latency_cpu.start()
    await interleaved(
        {
            "one": lambda: latency_round(one_ns, 1, "one"),
            "many": lambda: latency_round(many_ns, n, "many"),
        },
        rounds=sizes.rounds,
        warmup=0,
    )
    latency_cpu.stop()

    async def burst(namespace: str, receivers: int) -> float:
        events = new_events(sizes.burst)
        ids = [e["id"] for e in events]
        waiter = tracker.expect(ids, receivers)
        first = None
        for start in range(0, len(events), 100):
            begun, _ = await appender.append(namespace, events[start : start + 100])
            first = begun if first is None else first
        await asyncio.wait_for(waiter.done.wait(), DELIVERY_TIMEOUT)
        tracker.forget(ids)
        assert first is not None
        return waiter.expected / (max(waiter.times) - first)

    progress(f"2. fan-out: {sizes.burst_rounds} bursts of {sizes.burst} events per namespace")
    fanout_cpu = CpuMeter(pids)
    try:
        fanout_cpu.start()
        rates = await interleaved(
            {"one": lambda: burst(one_ns, 1), "many": lambda: burst(many_ns, n)},
            rounds=sizes.burst_rounds,
            warmup=1,
        )
        fanout_cpu.stop()
    except TimeoutError:
        rates = {"one": [], "many": []}
        report.meta["fan-out"] = (
            f"NOT MEASURED: a burst did not reach every socket within {DELIVERY_TIMEOUT:.0f} s"
        )
    report.meta["nats-server warnings"] = nats_warnings(nats_log)
    slowest = sorted(slowest_per_event(latencies["many"], n))
    if slowest:
        report.meta[f"slowest socket per event, {n} clients"] = (
            f"min {slowest[0]:.1f} ms, median {percentile(slowest, 50):.1f} ms, "
            f"90th {percentile(slowest, 90):.1f} ms, max {slowest[-1]:.1f} ms "
            f"({len(slowest)} events)"
        )

    section = "1"
    for pct in (50, 99):
        report.add(
            f"{section}a",
            f"latency append → socket, 1 client: p{pct}",
            percentile(latencies["one"], pct),
            "ms",
            baseline=percentile(latencies["bus"], pct),
            baseline_label="aether bus subscriber in the client process, same events",
            higher_is_better=False,
        )
    for pct in (50, 99):
        report.add(
            f"{section}b",
            f"latency append → socket, {n} clients: p{pct}",
            percentile(latencies["many"], pct),
            "ms",
            baseline=percentile(latencies["one"], pct),
            baseline_label="1 client",
            higher_is_better=False,
            target=f"p99 < {TARGET_P99_MS:.0f} ms" if pct == 99 and n >= 500 else "",
            max_value=TARGET_P99_MS if pct == 99 and n >= 500 else None,
        )
    report.add(
        f"{section}c",
        f"latency, {n} clients: slowest socket of an event, median over events",
        percentile(slowest_per_event(latencies["many"], n), 50),
        "ms",
        higher_is_better=False,
    )
    report.add(
        f"{section}d",
        "the append request alone (POST → 201), p50",
        percentile(latencies["append"], 50),
        "ms",
        higher_is_better=False,
    )
    if rates["many"]:
        report.compare(
            "2",
            f"fan-out, {n} clients, bursts of {sizes.burst} events",
            "deliveries/s",
            rates["many"],
            rates["one"],
            baseline_label="1 client",
        )
    report.meta["connect + subscribe"] = f"{n + 1} clients in {connect_seconds:.1f} s"
    report.meta["latency samples"] = (
        f"1 client: {len(latencies['one'])}; {n} clients: {len(latencies['many'])} "
        f"({len(latencies['many']) // n} events); bus baseline: {len(latencies['bus'])}"
    )
    report.meta["fan-out per round (deliveries/s)"] = (
        f"{n} clients: {', '.join(f'{r:,.0f}' for r in rates['many'])}; "
        f"1 client: {', '.join(f'{r:,.0f}' for r in rates['one'])}"
    )
    report.meta["socket problems"] = "; ".join(tracker.problems[:5]) or "none"
    report.meta["CPU used during the latency rounds"] = latency_cpu.summary()
    if fanout_cpu.used:
        report.meta["CPU used during the fan-out bursts"] = fanout_cpu.summary()

    for client in clients:
        await client.close()
    pump.cancel()
    await subscription.aclose()
    # A deliberate close is reported as "NATS disconnected; reconnecting" (a warning).
    logging.getLogger("aether_django.runtime").setLevel(logging.ERROR)
    await runtime.aclose()
    runtime.close()
    appender.close()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by the benchmark's processes between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.begin: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.wall = 0.0

    def start(self) -> None:
        self.begin = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.wall = clock()

    def stop(self) -> None:
        self.wall = clock() - self.wall
        self.used = {name: cpu_seconds(pid) - self.begin[name] for name, pid in self.pids.items()}

    def summary(self) -> str:
        return ", ".join(f"{name} {used:.1f} s" for name, used in self.used.items()) + (
            f" (in {self.wall:.1f} s of wall time)"
        )


def nats_warnings(log: Path) -> str:
    """The nats-server's complaints during the run (slow consumers, for example)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "log not readable"
    found = [line for line in lines if "[WRN]" in line or "[ERR]" in line]
    if not found:
        return "none"
    return f"{len(found)}, first: {found[0]}"


def slowest_per_event(values: list[float], receivers: int) -> list[float]:
    """The largest latency of each event (``values`` holds ``receivers`` per event, in order)."""
    return [max(values[i : i + receivers]) for i in range(0, len(values), receivers)]


def main(argv: list[str] | None = None) -> int:
    parser = base_parser((__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=None, help="clients on one namespace")
    parser.add_argument(
        "--no-compression",
        action="store_true",
        help="clients do not offer permessage-deflate (browsers do)",
    )
    parser.add_argument(
        "--server-deflate",
        action="store_true",
        help="uvicorn accepts permessage-deflate (its default; the demo declines it)",
    )
    parser.add_argument(
        "--profile-server", metavar="PATH", help="run uvicorn under cProfile, writing PATH"
    )
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    if args.clients:
        sizes = dataclasses.replace(sizes, clients=args.clients)
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    if args.no_compression:
        sizes = dataclasses.replace(sizes, compression=False)
    # Each client is a socket here and one in uvicorn (which inherits the limit).
    limit = raise_open_files_limit(2 * sizes.clients + 1024)
    report = Report("aether_django WebSockets: live delivery latency and fan-out")
    started = clock()
    with NatsServer() as server, tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp:
        port = find_free_port()
        env = project_env("ws", server.url, tmp)
        progress("migrating a temporary database and logging a user in")
        cookie = prepare_project("ws", Path(tmp), env, login=True)
        progress(f"starting uvicorn on 127.0.0.1:{port}")
        uvicorn = start_uvicorn(port, env, args.profile_server, deflate=args.server_deflate)
        try:
            wait_for_server(port, uvicorn, "bench.ws: uvicorn")
            report.meta.update(machine_info())
            report.meta.update(
                {
                    "mode": "quick" if args.quick else "full",
                    "server": (
                        f"uvicorn {importlib.metadata.version('uvicorn')} (--ws websockets, "
                        + (
                            "permessage-deflate accepted"
                            if args.server_deflate
                            else "permessage-deflate declined"
                        )
                        + "), one worker, example_project.asgi"
                    ),
                    "client": (
                        f"websockets {importlib.metadata.version('websockets')} "
                        "in one asyncio process, permessage-deflate "
                        + ("offered (as browsers do)" if sizes.compression else "not offered")
                    ),
                    "open files limit": limit,
                    "sizes": (
                        f"{sizes.clients} clients; latency {sizes.rounds} rounds x "
                        f"({5 * sizes.events_per_round} events to 1 client, "
                        f"{sizes.events_per_round} to {sizes.clients}); fan-out "
                        f"{sizes.burst_rounds} bursts of {sizes.burst} after a warm-up"
                    ),
                }
            )
            assert server.process is not None
            pids = {"uvicorn": uvicorn.pid, "clients": os.getpid()}
            pids["nats-server"] = server.process.pid
            asyncio.run(run_all(report, sizes, server.url, port, cookie, server.log_path, pids))
        finally:
            stop_uvicorn(uvicorn)
    load_at_end(report)
    finish(report, started, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
