"""API benchmark: appends and reads through the HTTP API under daphne, beside the store itself.

Run from the repository root::

    .venv/bin/python -m bench.api                   # full run, about 70 s
    .venv/bin/python -m bench.api --quick           # smoke test, about 20 s
    .venv/bin/python -m bench.api --server uvicorn  # the same under uvicorn

One run starts its own nats-server (file storage in a temporary directory, free
ports) and serves the example project (``example_project.asgi:application``) with
daphne in a child process (``python -m daphne -b 127.0.0.1 -p PORT ...``, one
process, as ``daphne`` is normally run). The project's settings are used as they
are, except for a temporary SQLite database, ``DEBUG = False`` and the MD5 password
hasher: HTTP basic auth checks the password on every request, and Django's default
hasher takes a large part of a second on purpose (the test settings use MD5 for the
same reason; real clients would rather use sessions or tokens).

Clients are threads of the benchmark process, each with its own keep-alive
``http.client`` connection, authenticated as a superuser with basic auth. At 1 and
at 16 concurrent clients it measures, each beside the same work done directly on
the store (``get_event_store(ns).save_event`` / ``get_events``, the sync facade, from
as many threads of the benchmark process) in the same interleaved rounds:

1. appends: ``POST .../actors/{actor}/events/`` with one event and its version,
   each client appending to an actor of its own (no conflicts);
2. reads: ``GET .../actors/{actor}/events/`` of one actor with 10 events, all
   clients reading the same actor.

and, beside the raw appends of (1) through HTTP in the same interleaved rounds:

3. commands: ``POST aggregates/orders/{order}/commands/add_line/`` (the example
   project's Order, registered in its ``shop/api.py``), each with an
   ``Idempotency-Key`` of its own, each client on an order of its own; every 50th
   call of a client places a new order instead (``place``, a creating command), so
   that an order's state stays small. No cluster node runs, so commands run in the
   server process (``COMMAND_ROUTING = "auto"`` finds no live node).

Throughput is requests (or store calls) per second over a round, from the first
start to the last answer; p50 and p99 are of every request's own time over all
measured rounds. No targets: the figures show what the HTTP layer (daphne, Django,
DRF, authentication, the grant check, JSON) costs on top of the store.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import http.client
import importlib.metadata
import json
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aether_django.testing import NatsServer, find_free_port
from aether_django.testing.processes import start_process, stop_process

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
from .common import (
    Report,
    base_parser,
    clock,
    interleaved,
    machine_info,
    percentile,
    progress,
    unique_name,
)

EVENT_TYPE = "Deposited"
DATA: dict[str, Any] = {"amount": 1, "currency": "EUR", "reference": "bench"}
#: Events of the actor every read fetches.
READ_EVENTS = 10
CONCURRENCY = (1, 16)


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does; ``--quick`` shrinks everything."""

    rounds: int
    warmup: int
    #: Requests per client and round.
    per_client: dict[int, int]

    @classmethod
    def full(cls) -> Sizes:
        return cls(rounds=5, warmup=1, per_client={1: 150, 16: 20})

    @classmethod
    def quick(cls) -> Sizes:
        return cls(rounds=2, warmup=1, per_client={1: 40, 16: 5})


# --- the clients ------------------------------------------------------------------------------


class HttpClient:
    """One keep-alive connection to the server, used by one thread at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.headers, **(extra_headers or {})}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request(method, path, data, headers)
                response = self.conn.getresponse()
                raw = response.read()
                break
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                # The server closed an idle keep-alive connection. Sending again is safe:
                # reads are reads, appends carry their event's id and commands an
                # Idempotency-Key, which the API recognises when the first attempt was
                # stored after all.
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        if response.status not in (200, 201):
            raise RuntimeError(f"{method} {path}: {response.status} {raw[:300]!r}")
        return json.loads(raw)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@dataclass
class Workload:
    """One figure at one concurrency: an HTTP side and a store side doing the same calls."""

    clients: int
    per_client: int
    #: One call of client ``i`` of each side; returns nothing, raises on failure.
    http_call: Callable[[int], None]
    store_call: Callable[[int], None]
    latencies: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: {"http": [], "store": []}
    )
    measuring: bool = False

    def round(self, pool: ThreadPoolExecutor, side: str) -> float:
        """Every client makes ``per_client`` calls at once; return calls per second."""
        call = self.http_call if side == "http" else self.store_call

        def client(i: int) -> list[float]:
            times = []
            for _ in range(self.per_client):
                started = clock()
                call(i)
                times.append((clock() - started) * 1000)
            return times

        started = clock()
        results = list(pool.map(client, range(self.clients)))
        elapsed = clock() - started
        if self.measuring:
            for times in results:
                self.latencies[side] += times
        return self.clients * self.per_client / elapsed


def append_workload(port: int, clients: int, per_client: int) -> tuple[Workload, list[Any]]:
    from aether_django.events import Event
    from aether_django.store import get_event_store

    http_ns, store_ns = unique_name("bench_api_http"), unique_name("bench_api_store")
    store = get_event_store(store_ns)
    conns = [HttpClient(port) for _ in range(clients)]
    prefix = f"/api/aether/namespaces/{http_ns}/actors"
    versions = {"http": [0] * clients, "store": [0] * clients}

    def http_call(i: int) -> None:
        version = versions["http"][i] + 1
        body = {"id": uuid.uuid4().hex, "event_type": EVENT_TYPE, "version": version, "data": DATA}
        answer = conns[i].request("POST", f"{prefix}/a{i}/events/", body)
        assert answer["events"][0]["version"] == version, answer
        versions["http"][i] = version

    def store_call(i: int) -> None:
        version = versions["store"][i] + 1
        store.save_event(Event(event_type=EVENT_TYPE, actor_id=f"a{i}", version=version, data=DATA))
        versions["store"][i] = version

    return Workload(clients, per_client, http_call, store_call), conns


#: Commands on one order before a client places the next (keeps its state small).
LINES_PER_ORDER = 50


def command_workload(port: int, clients: int, per_client: int) -> tuple[Workload, list[Any]]:
    """Commands through HTTP (the ``http`` side) beside raw appends through HTTP (the
    ``store`` side, the baseline here)."""
    run = uuid.uuid4().hex[:8]
    http_ns = unique_name("bench_api_raw")
    conns = [HttpClient(port) for _ in range(clients)]
    raw_conns = [HttpClient(port) for _ in range(clients)]
    calls = [0] * clients
    versions = [0] * clients
    line = {"sku": "pen", "quantity": 1, "price_cents": 150}

    def command_call(i: int) -> None:
        n = calls[i]
        calls[i] += 1
        order = f"bench-{run}-{i}-{n // LINES_PER_ORDER}"
        first = n % LINES_PER_ORDER == 0
        command, body = ("place", {"customer": "bench"}) if first else ("add_line", line)
        answer = conns[i].request(
            "POST",
            f"/api/aether/aggregates/orders/{order}/commands/{command}/",
            body,
            {"Idempotency-Key": uuid.uuid4().hex},
        )
        assert answer["version"] == n % LINES_PER_ORDER + 1, answer

    def raw_call(i: int) -> None:
        version = versions[i] + 1
        body = {"id": uuid.uuid4().hex, "event_type": EVENT_TYPE, "version": version, "data": DATA}
        path = f"/api/aether/namespaces/{http_ns}/actors/a{i}/events/"
        answer = raw_conns[i].request("POST", path, body)
        assert answer["events"][0]["version"] == version, answer
        versions[i] = version

    return Workload(clients, per_client, command_call, raw_call), conns + raw_conns


def read_workload(port: int, clients: int, per_client: int) -> tuple[Workload, list[Any]]:
    from aether_django.events import Event
    from aether_django.store import get_event_store

    namespace, actor = unique_name("bench_api_read"), "acct-read"
    store = get_event_store(namespace)
    store.save_events(
        [
            Event(event_type=EVENT_TYPE, actor_id=actor, version=v, data=DATA)
            for v in range(1, READ_EVENTS + 1)
        ]
    )
    conns = [HttpClient(port) for _ in range(clients)]
    path = f"/api/aether/namespaces/{namespace}/actors/{actor}/events/"

    def http_call(i: int) -> None:
        answer = conns[i].request("GET", path)
        assert len(answer["results"]) == READ_EVENTS, answer

    def store_call(i: int) -> None:
        events = store.get_events(actor)
        assert len(events) == READ_EVENTS, len(events)

    return Workload(clients, per_client, http_call, store_call), conns


async def off_loop(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking work in a thread: the store's sync facade refuses to run in a thread
    with a running event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def measure(report: Report, sizes: Sizes, port: int) -> None:
    store_baseline = "the store's sync facade, same calls from as many threads"
    figures = [
        ("1", "append one event", "appends/s", append_workload, store_baseline, "store call"),
        (
            "2",
            f"read the {READ_EVENTS} events of an actor",
            "reads/s",
            read_workload,
            store_baseline,
            "store call",
        ),
        (
            "3",
            "run a command (add_line, 1 in 50 place) with an Idempotency-Key",
            "commands/s",
            command_workload,
            "a raw append of one event through HTTP, same clients",
            "raw append",
        ),
    ]
    for section, what, unit, build, baseline, baseline_short in figures:
        for clients in CONCURRENCY:
            per_client = sizes.per_client[clients]
            progress(f"{section}. {what}: {clients} client(s), {per_client} calls each a round")
            workload, conns = await off_loop(build, port, clients, per_client)
            pool = ThreadPoolExecutor(clients, thread_name_prefix="bench-api")

            def side(name: str, w: Workload = workload, p: ThreadPoolExecutor = pool) -> Any:
                return lambda: off_loop(w.round, p, name)

            try:
                for _ in range(sizes.warmup):
                    await off_loop(workload.round, pool, "http")
                    await off_loop(workload.round, pool, "store")
                workload.measuring = True
                rates = await interleaved(
                    {"http": side("http"), "store": side("store")},
                    rounds=sizes.rounds,
                    warmup=0,
                )
            finally:
                pool.shutdown()
                for conn in conns:
                    conn.close()
            sub = "a" if clients == 1 else "b"
            label = "1 client" if clients == 1 else f"{clients} concurrent clients"
            report.compare(
                f"{section}{sub}",
                f"{what} through HTTP, {label}",
                unit,
                rates["http"],
                rates["store"],
                baseline_label=baseline,
            )
            for pct in (50, 99):
                report.add(
                    f"{section}{sub}",
                    f"  time per request, p{pct}",
                    percentile(workload.latencies["http"], pct),
                    "ms",
                    baseline=percentile(workload.latencies["store"], pct),
                    baseline_label=baseline_short,
                    higher_is_better=False,
                )


# --- the server ---------------------------------------------------------------------------------


def start_server(kind: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    if kind == "daphne":
        command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
        command += ["--http-timeout", "300", ASGI_APP]
    else:
        command = [sys.executable, "-m", "uvicorn", ASGI_APP, "--host", "127.0.0.1"]
        command += ["--port", str(port), "--log-level", "warning", "--timeout-keep-alive", "300"]
    log.unlink(missing_ok=True)
    return start_process(command, cwd=ROOT, env=env, log=log)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser((__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--server", choices=["daphne", "uvicorn"], default="daphne", help="the ASGI server"
    )
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    report = Report("aether_django HTTP API vs the event store")
    started = clock()
    with NatsServer() as server, tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        port = find_free_port()
        env = project_env("api", server.url, tmp)
        progress("migrating a temporary database and creating the user")
        prepare_project("api", Path(tmp), env)
        progress(f"starting {args.server} on 127.0.0.1:{port}")
        log = Path(tmp) / "server.log"
        process = start_server(args.server, port, env, log)
        try:
            wait_for_server(port, process, "bench.api: the server", log=log)
            report.meta.update(machine_info())
            report.meta.update(
                {
                    "mode": "quick" if args.quick else "full",
                    "server": (
                        f"{args.server} {importlib.metadata.version(args.server)}, one process, "
                        f"{ASGI_APP}, DEBUG off, basic auth (MD5 hasher), superuser"
                    ),
                    "clients": (
                        "threads of the benchmark process, one keep-alive http.client "
                        "connection each"
                    ),
                    "store side": "get_event_store(ns) in the benchmark process, sync facade",
                    "nats-server": "one, file storage, same machine",
                    "sizes": (
                        f"{sizes.rounds} rounds after {sizes.warmup} warm-up; calls per client "
                        f"and round: {sizes.per_client[1]} (1 client), "
                        f"{sizes.per_client[16]} (16 clients)"
                    ),
                }
            )
            asyncio.run(measure(report, sizes, port))
        finally:
            stop_process(process, 15.0)
            from aether_django.runtime import get_runtime

            get_runtime().close()
    load_at_end(report)
    finish(report, started, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
