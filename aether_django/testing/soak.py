"""A soak load on a served aether_django project: WebSocket subscribers, writers through
the HTTP API and the event store, readers, two cluster nodes; and the growth bounds.

:class:`Soak` runs a :class:`Load` against a :class:`Target` (a project served by a
server process of its own, with its nats-server) for some seconds after a warm-up,
samples the server's memory, open files and NATS connections and the load process's
memory, then checks that every client received every event of its namespace once
and in order. ``Result.failures()`` lists what is not as it must be, against the
bounds below (each with the reason for its value).

``python -m bench.soak`` runs it for minutes on the example project, and
``tests/reliability/test_soak.py`` for under a minute on the test project. The
WebSocket clients need the ``websockets`` library (the ``[ws]`` extra brings it
with uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cluster.coordinator import ClusterConfig, Coordinator
from ..events import Event
from ..runtime import Runtime
from ..store.base import StoreConfig
from ..store.jetstream import JetStreamEventStore

__all__ = [
    "CLIENT_RSS_GROWTH_MIB",
    "FD_GROWTH",
    "NATS_CONNECTION_GROWTH",
    "SERVER_RSS_GROWTH_MIB",
    "Load",
    "Result",
    "Sample",
    "Soak",
    "Target",
]


def progress(message: str) -> None:
    """One progress line on stderr, so a long run shows where it is."""
    print(f"... {message}", file=sys.stderr, flush=True)


def unique_name(prefix: str) -> str:
    """A fresh namespace name, so that no run sees another's data."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# --- the bounds ---------------------------------------------------------------------------
# Growth allowed from the sample after the warm-up to the sample at the end, both taken
# under the same load. The warm-up has already built the steady working set (a consumer
# task and its buffers per socket; Django's and DRF's caches; the NATS clients' read
# buffers), so what still moves is noise: CPython's allocator keeping freed arenas, a
# socket being opened or closed at the moment of a sample. At the default load the
# server delivers about 400 events per second and answers about 20 requests per second.

#: MiB of RSS the server process may gain. Its noise here is 1-2 MiB. When the server
#: accepts permessage-deflate (the demo and this soak decline it), each socket's
#: compression state is touched as its window fills, about 18 MiB for 100 sockets over
#: the first two minutes, and then stays. A leak of 1 KiB per delivery passes the bound
#: within 80 s, one of 150 bytes within 10 minutes.
SERVER_RSS_GROWTH_MIB = 32
#: MiB of RSS the load process (clients, writers, readers, cluster nodes) may gain. It
#: keeps counters and a running digest per client, not the events; its noise here is
#: under 2 MiB.
CLIENT_RSS_GROWTH_MIB = 32
#: Open file descriptors the server may gain. A sync view (the API's) runs its store
#: call on a "portal" of the runtime: an event loop with its own NATS connection, 4
#: descriptors, made when no idle one is free and closed after a minute unused. The
#: HTTP writer and the readers make up to 3 concurrent views, and a call may also find
#: the only idle portal borrowed for a moment by the runtime's keeper; so the end may
#: hold 3 portals more than the start (12), and a reader's or the reconnecting client's
#: socket may be open at one sample and not at the other. A descriptor leaked per
#: request or per reconnection adds hundreds within a minute.
FD_GROWTH = 16
#: Client connections nats-server may gain, from both processes: the server's 3 extra
#: portals (above), one per cluster node whose tick found its portal borrowed by the
#: keeper (the nodes tick from a thread, as a Celery worker would), and one to spare.
#: The rest is fixed: the server's event loop's connection, the store writer's. A
#: connection leaked per request, socket or tick adds hundreds within a minute.
NATS_CONNECTION_GROWTH = 6

EVENT_TYPE = "SoakSaved"
#: Functional limits: only a hung server or client reaches them.
CONNECT_TIMEOUT = 60.0
REQUEST_TIMEOUT = 60.0
DRAIN_TIMEOUT = 60.0
#: Problem messages kept for the report (all of them are counted).
PROBLEMS_KEPT = 20


# --- what is loaded and what is sampled ---------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The server under load and the nats-server behind it."""

    port: int
    server_pid: int
    #: The API's ``Authorization`` header (basic auth of a superuser).
    authorization: str
    #: ``sessionid=...`` of the same user, for the WebSocket handshakes.
    cookie: str
    nats_url: str
    #: nats-server's monitoring port (``/connz``, ``/varz``, ``/jsz``).
    nats_http_port: int
    nats_pid: int | None = None
    #: The server's output, searched for tracebacks at the end.
    server_log: Path | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Load:
    """How much of everything runs at once (the defaults are those of the bench and the test)."""

    clients: int = 100
    http_saves_per_second: float = 4.0
    store_saves_per_second: float = 4.0
    readers: int = 2
    #: Reads per second over all readers; each read is two requests (version, events).
    reads_per_second: float = 6.0
    #: Actors per writer and namespace.
    actors: int = 4
    #: Seconds a reconnecting client stays connected before it reconnects.
    reconnect_every: float = 2.0
    heartbeat_interval: float = 1.0
    #: Long enough that a load process starved of CPU for a moment keeps its lease.
    failure_timeout: float = 5.0


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (``VmRSS`` of /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def fd_count(pid: int) -> int:
    """Open file descriptors of a process (entries of /proc/<pid>/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def monitor(port: int, path: str) -> dict[str, Any]:
    """One document of nats-server's monitoring endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=10) as response:
        doc: dict[str, Any] = json.loads(response.read())
        return doc


@dataclass(frozen=True)
class Sample:
    """The counts of one moment (median of a few readings when taken as a point)."""

    at: float
    server_rss_kib: int
    server_fds: int
    nats_connections: int
    #: Of those, the server process's (the load process names its own "soak-...").
    server_nats_connections: int
    client_rss_kib: int
    nats_subscriptions: int
    nats_consumers: int
    nats_rss_kib: int

    @classmethod
    def take(cls, target: Target, started: float) -> Sample:
        """Read every count now (blocking: /proc and HTTP)."""
        gc.collect()  # the load process's garbage is not memory it holds
        varz = monitor(target.nats_http_port, "varz")
        connz = monitor(target.nats_http_port, "connz?limit=100000")
        return cls(
            at=time.monotonic() - started,
            server_rss_kib=rss_kib(target.server_pid),
            server_fds=fd_count(target.server_pid),
            nats_connections=int(connz["total"]),
            server_nats_connections=sum(
                1
                for conn in connz.get("connections") or []
                if not str(conn.get("name", "")).startswith("soak-")
            ),
            client_rss_kib=rss_kib(os.getpid()),
            nats_subscriptions=int(varz["subscriptions"]),
            nats_consumers=int(monitor(target.nats_http_port, "jsz")["consumers"]),
            nats_rss_kib=(
                rss_kib(target.nats_pid) if target.nats_pid else int(varz["mem"]) // 1024
            ),
        )

    @classmethod
    def point(cls, target: Target, started: float, readings: int = 5) -> Sample:
        """The median of ``readings`` readings 0.3 s apart, so that a socket opened or
        closed at the moment of one reading does not count as growth."""
        taken = []
        for i in range(readings):
            if i:
                time.sleep(0.3)
            taken.append(cls.take(target, started))

        def mid(name: str) -> int:
            return int(statistics.median_low(getattr(s, name) for s in taken))

        return cls(
            at=taken[len(taken) // 2].at,
            **{name: mid(name) for name in cls.__dataclass_fields__ if name != "at"},
        )

    def line(self) -> str:
        return (
            f"server RSS {self.server_rss_kib / 1024:.1f} MiB, {self.server_fds} fds; "
            f"NATS connections {self.nats_connections} ({self.server_nats_connections} of "
            f"the server); load process RSS "
            f"{self.client_rss_kib / 1024:.1f} MiB; NATS subscriptions "
            f"{self.nats_subscriptions}, consumers {self.nats_consumers}; nats-server RSS "
            f"{self.nats_rss_kib / 1024:.1f} MiB"
        )


# --- WebSocket clients ----------------------------------------------------------------------


class Problems:
    """What went wrong, kept short: the first few messages and the count of all."""

    def __init__(self) -> None:
        self.count = 0
        self.first: list[str] = []
        self._lock = threading.Lock()

    def add(self, message: str) -> None:
        with self._lock:
            self.count += 1
            if len(self.first) < PROBLEMS_KEPT:
                self.first.append(message)


class Stream:
    """What one client has received of one namespace: checked as it arrives, in constant
    memory. Each event must carry the sequence after the previous one (a stream's
    sequences have no holes), so a gap, a repeat or a reordering is seen at once; the
    ids go into a running digest, compared at the end with the stored events'."""

    def __init__(self, namespace: str, after: int, problems: Problems, name: str) -> None:
        self.namespace = namespace
        self.last = after
        self.count = 0
        self.digest = hashlib.blake2b(digest_size=16)
        self.problems = problems
        self.name = name

    def receive(self, frame: dict[str, Any]) -> None:
        if frame.get("type") != "event":
            self.problems.add(f"{self.name}: unexpected frame {str(frame)[:200]}")
            return
        sequence = frame["sequence"]
        if frame["namespace"] != self.namespace or sequence != self.last + 1:
            self.problems.add(
                f"{self.name}: after sequence {self.last} of {self.namespace} got "
                f"{sequence} of {frame['namespace']}"
            )
        self.last = sequence
        self.count += 1
        self.digest.update(frame["event"]["id"].encode() + b"\n")


async def open_socket(target: Target, namespace: str, start: int | str) -> Any:
    """A WebSocket subscribed to ``namespace`` from ``start``, after its ``subscribed``."""
    import websockets

    ws = await websockets.connect(
        f"ws://127.0.0.1:{target.port}/ws/aether/",
        additional_headers={"Cookie": target.cookie},
        origin=target.origin,  # type: ignore[arg-type]
        open_timeout=CONNECT_TIMEOUT,
    )
    await ws.send(
        json.dumps({"action": "subscribe", "id": "s", "namespace": namespace, "from": start})
    )
    reply = json.loads(await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT))
    if reply.get("type") != "subscribed":
        await ws.close()
        raise RuntimeError(f"subscribe to {namespace} failed: {reply}")
    return ws


class Subscriber:
    """A client that stays connected for the whole run, reading in a task of its own."""

    def __init__(self, index: int, namespace: str, after: int, problems: Problems) -> None:
        self.stream = Stream(namespace, after, problems, f"client {index}")
        self.problems = problems
        self.ws: Any = None
        self.task: asyncio.Task[None] | None = None
        self.closing = False

    async def open(self, target: Target) -> None:
        self.ws = await open_socket(target, self.stream.namespace, "new")
        self.task = asyncio.get_running_loop().create_task(self.read())

    async def read(self) -> None:
        try:
            async for message in self.ws:
                self.stream.receive(json.loads(message))
        except Exception as exc:
            self.problems.add(f"{self.stream.name}: socket ended: {type(exc).__name__}: {exc}")
        if not self.closing:
            self.problems.add(
                f"{self.stream.name}: closed by the server ({self.ws.close_code} "
                f"{self.ws.close_reason})"
            )

    async def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            await asyncio.wait([self.task], timeout=10)


class Reconnector:
    """A client that reconnects every few seconds and resumes after its last event."""

    def __init__(self, namespace: str, after: int, problems: Problems, every: float) -> None:
        self.stream = Stream(namespace, after, problems, "reconnecting client")
        self.problems = problems
        self.every = every
        self.connections = 0

    async def session(self, target: Target, until: Callable[[], bool]) -> None:
        """One connection: subscribe from the sequence after the last one received, read
        until ``until()`` or for ``every`` seconds, close (dropping what is in flight)."""
        ws = await open_socket(target, self.stream.namespace, self.stream.last + 1)
        self.connections += 1
        deadline = time.monotonic() + self.every
        try:
            while not until() and time.monotonic() < deadline:
                try:
                    message = await asyncio.wait_for(ws.recv(), deadline - time.monotonic())
                except TimeoutError:
                    break
                self.stream.receive(json.loads(message))
        finally:
            await ws.close()
        if ws.close_code != 1000:
            self.problems.add(f"reconnecting client: closed with {ws.close_code}")

    async def run(self, target: Target, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.session(target, stop.is_set)
            except Exception as exc:
                self.problems.add(f"reconnecting client: {type(exc).__name__}: {exc}")
                await asyncio.sleep(1)


# --- writers, readers, cluster nodes --------------------------------------------------------


class Pace:
    """Moments at a fixed rate. Behind schedule (a stalled machine), it starts afresh from
    now instead of catching up in a burst, so the load stays what it says."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self.next = time.monotonic()

    def delay(self) -> float:
        now = time.monotonic()
        self.next += self.interval
        if self.next < now - self.interval:
            self.next = now
        return max(0.0, self.next - now)


@dataclass
class Ledger:
    """Every acknowledged save, (stream sequence, event id) per namespace, and the counts
    of the writers and readers (threads and tasks alike)."""

    saved: dict[str, list[tuple[int, str]]]
    http_saves: int = 0
    store_saves: int = 0
    reads: int = 0
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self, status: int) -> None:
        """One HTTP request and its status (0: no answer)."""
        with self.lock:
            self.requests += 1
            self.statuses[status] += 1

    def saved_one(self, namespace: str, sequence: int, event_id: str, *, http: bool) -> None:
        with self.lock:
            self.saved[namespace].append((sequence, event_id))
            if http:
                self.http_saves += 1
            else:
                self.store_saves += 1

    def read_one(self) -> None:
        with self.lock:
            self.reads += 1


def http_request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None = None,
) -> tuple[int, bytes]:
    conn.request(method, path, body, headers)
    response = conn.getresponse()
    return response.status, response.read()


@dataclass
class _HttpClient:
    """What a part of the load that talks to the API holds: where, how much, and the
    ledger and problems it reports to."""

    target: Target
    load: Load
    namespaces: Sequence[str]
    ledger: Ledger
    problems: Problems


@dataclass
class HttpWriter(_HttpClient):
    """Appends one event at a time through the API on one keep-alive connection (a thread)."""

    def __post_init__(self) -> None:
        self.actors = [f"http-{i}" for i in range(self.load.actors)]
        self.versions: dict[tuple[str, str], int] = {}
        self.headers = {
            "Authorization": self.target.authorization,
            "Content-Type": "application/json",
        }

    def run(self, stop: threading.Event) -> None:
        pace = Pace(self.load.http_saves_per_second)
        conn: http.client.HTTPConnection | None = None
        n = 0
        while not stop.wait(pace.delay()):
            namespace = self.namespaces[n % len(self.namespaces)]
            actor = self.actors[(n // len(self.namespaces)) % len(self.actors)]
            n += 1
            version = self.versions.get((namespace, actor), 0) + 1
            body = json.dumps(
                {
                    "id": uuid.uuid4().hex,
                    "event_type": EVENT_TYPE,
                    "version": version,
                    "data": {"n": n},
                }
            ).encode()
            path = f"/api/aether/namespaces/{namespace}/actors/{actor}/events/"
            for attempt in (1, 2):
                if conn is None:
                    conn = http.client.HTTPConnection(
                        "127.0.0.1", self.target.port, timeout=REQUEST_TIMEOUT
                    )
                try:
                    status, data = http_request(conn, "POST", path, self.headers, body)
                    break
                except (OSError, http.client.HTTPException) as exc:
                    # The server closed the keep-alive connection. Sending the same body
                    # again is safe: the event carries its id, so the API recognises a
                    # repeated append.
                    conn.close()
                    conn = None
                    if attempt == 2:
                        self.problems.add(f"HTTP writer: {type(exc).__name__}: {exc}")
                        status, data = 0, b""
            self.ledger.answered(status)
            if status != 201:
                if status:
                    self.problems.add(f"HTTP writer: POST {path} answered {status}: {data[:300]!r}")
                continue
            (stored,) = json.loads(data)["events"]
            self.versions[(namespace, actor)] = version
            self.ledger.saved_one(namespace, stored["sequence"], stored["id"], http=True)
        if conn is not None:
            conn.close()


class StoreWriter:
    """Saves one event at a time through the event store, in the load process's event loop."""

    def __init__(
        self, stores: dict[str, JetStreamEventStore], load: Load, ledger: Ledger, problems: Problems
    ) -> None:
        self.stores = stores
        self.load = load
        self.ledger = ledger
        self.problems = problems
        self.actors = [f"store-{i}" for i in range(load.actors)]
        self.versions: dict[tuple[str, str], int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        pace = Pace(self.load.store_saves_per_second)
        namespaces = list(self.stores)
        n = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pace.delay())
                break
            namespace = namespaces[n % len(namespaces)]
            actor = self.actors[(n // len(namespaces)) % len(self.actors)]
            n += 1
            version = self.versions.get((namespace, actor), 0) + 1
            event = Event(event_type=EVENT_TYPE, actor_id=actor, version=version, data={"n": n})
            try:
                stored = await self.stores[namespace].asave_event(event)
            except Exception as exc:
                self.problems.add(f"store writer: {type(exc).__name__}: {exc}")
                continue
            assert stored.sequence is not None
            self.versions[(namespace, actor)] = version
            self.ledger.saved_one(namespace, stored.sequence, stored.id, http=False)


@dataclass
class Reader(_HttpClient):
    """Reads an actor's version and then its latest events, each read on a new connection."""

    seed: int = 0

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self.actors = [f"{kind}-{i}" for kind in ("http", "store") for i in range(self.load.actors)]
        self.headers = {"Authorization": self.target.authorization, "Accept": "application/json"}

    def get(self, conn: http.client.HTTPConnection, path: str) -> Any:
        status, data = http_request(conn, "GET", path, self.headers)
        self.ledger.answered(status)
        if status != 200:
            self.problems.add(f"reader: GET {path} answered {status}: {data[:300]!r}")
            return None
        return json.loads(data)

    def read_once(self) -> None:
        namespace = self.random.choice(self.namespaces)
        actor = self.random.choice(self.actors)
        base = f"/api/aether/namespaces/{namespace}/actors/{actor}"
        conn = http.client.HTTPConnection("127.0.0.1", self.target.port, timeout=REQUEST_TIMEOUT)
        try:
            version = self.get(conn, f"{base}/version/")
            if version is None:
                return
            start = max(1, version["version"] - 9)
            page = self.get(conn, f"{base}/events/?from_version={start}&limit=10")
            if page is None:
                return
            versions = [e["version"] for e in page["results"]]
            # Saves go on meanwhile: at least the events up to the version just read.
            wanted = list(range(start, version["version"] + 1))
            if versions[: len(wanted)] != wanted:
                self.problems.add(f"reader: {base} from {start} gave versions {versions}")
            self.ledger.read_one()
        finally:
            conn.close()

    def run(self, stop: threading.Event) -> None:
        pace = Pace(self.load.reads_per_second / self.load.readers)
        while not stop.wait(pace.delay()):
            try:
                self.read_once()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.problems.add(f"reader: {type(exc).__name__}: {exc}")


class Cluster:
    """Two cluster nodes ticking together in a thread, as Celery beat would tick them."""

    def __init__(self, nats_url: str, load: Load, problems: Problems) -> None:
        config = ClusterConfig(
            bucket=unique_name("soak_cluster"),
            heartbeat_interval=load.heartbeat_interval,
            failure_timeout=load.failure_timeout,
            num_shards=64,
        )
        self.runtimes = [Runtime(nats_url, name=f"soak-node-{i}") for i in range(2)]
        self.nodes = [
            Coordinator(runtime, f"soak-node-{i}", config)
            for i, runtime in enumerate(self.runtimes)
        ]
        self.load = load
        self.problems = problems
        self.ticks = 0
        self.failed = 0
        self.leader_changes = 0
        self.most_leaders = 0
        self.leader: str | None = None
        self.alive_at_end: list[str] = []

    def run(self, stop: threading.Event) -> None:
        pace = Pace(1.0 / self.load.heartbeat_interval)
        while not stop.wait(pace.delay()):
            for node in self.nodes:
                try:
                    node.runtime.run(node.tick())
                    self.ticks += 1
                except Exception as exc:
                    self.failed += 1
                    self.problems.add(f"{node.node_id}: tick failed: {type(exc).__name__}: {exc}")
            holders = [node.node_id for node in self.nodes if node.is_leader]
            self.most_leaders = max(self.most_leaders, len(holders))
            if len(holders) == 1 and holders[0] != self.leader:
                if self.leader is not None:
                    self.leader_changes += 1
                self.leader = holders[0]
        node = self.nodes[0]
        try:
            self.alive_at_end = node.runtime.run(node.alive_nodes())
        except Exception as exc:
            self.problems.add(f"alive nodes at the end: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        for node, runtime in zip(self.nodes, self.runtimes, strict=True):
            with contextlib.suppress(Exception):
                runtime.run(node.leave())
            runtime.close()


# --- the run --------------------------------------------------------------------------------


@dataclass
class Result:
    """Everything a soak measured and checked."""

    load: Load
    warmup: float
    seconds: float
    start: Sample
    end: Sample
    samples: list[Sample]
    ledger: Ledger
    deliveries: int
    expected_deliveries: int
    reconnects: int
    #: Clients (and the reconnecting one) whose events were not exactly the saved ones.
    clients_wrong: list[str]
    problems: Problems
    cluster_ticks: int
    cluster_failed: int
    leader_changes: int
    most_leaders: int
    alive_at_end: list[str]
    nodes: list[str]
    server_tracebacks: int
    first_traceback: str

    @property
    def server_rss_growth_mib(self) -> float:
        return (self.end.server_rss_kib - self.start.server_rss_kib) / 1024

    @property
    def client_rss_growth_mib(self) -> float:
        return (self.end.client_rss_kib - self.start.client_rss_kib) / 1024

    @property
    def fd_growth(self) -> int:
        return self.end.server_fds - self.start.server_fds

    @property
    def connection_growth(self) -> int:
        return self.end.nats_connections - self.start.nats_connections

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.ledger.statuses.items() if status >= 500)

    def bounds(self) -> list[tuple[str, bool]]:
        """Each bound, as a sentence, and whether it held."""
        return [
            (
                f"server RSS growth {self.server_rss_growth_mib:+.1f} MiB "
                f"<= {SERVER_RSS_GROWTH_MIB} MiB",
                self.server_rss_growth_mib <= SERVER_RSS_GROWTH_MIB,
            ),
            (
                f"server open fds growth {self.fd_growth:+d} <= {FD_GROWTH}",
                self.fd_growth <= FD_GROWTH,
            ),
            (
                f"NATS client connections growth {self.connection_growth:+d} "
                f"<= {NATS_CONNECTION_GROWTH}",
                self.connection_growth <= NATS_CONNECTION_GROWTH,
            ),
            (
                f"load process RSS growth {self.client_rss_growth_mib:+.1f} MiB "
                f"<= {CLIENT_RSS_GROWTH_MIB} MiB",
                self.client_rss_growth_mib <= CLIENT_RSS_GROWTH_MIB,
            ),
        ]

    def lines(self) -> list[str]:
        ledger = self.ledger
        saves = ledger.http_saves + ledger.store_saves
        statuses = ", ".join(f"{s}: {c}" for s, c in sorted(ledger.statuses.items()))
        lines = [
            f"load for {self.warmup + self.seconds:.0f} s ({self.warmup:.0f} s of warm-up, "
            f"then {self.seconds:.0f} s from the start sample to the end sample): "
            f"{self.load.clients} WebSocket clients and 1 reconnecting, "
            f"{self.load.readers} readers, 2 cluster nodes; counts over the whole time:",
            f"saves: {saves} ({ledger.http_saves} through the API, {ledger.store_saves} "
            f"through the store); reads: {ledger.reads} ({ledger.requests} HTTP requests "
            f"in all; statuses {statuses})",
            f"deliveries: {self.deliveries} of {self.expected_deliveries} expected; "
            f"{self.reconnects} reconnections; clients with missing, repeated or "
            f"reordered events: {len(self.clients_wrong)}",
            f"cluster: {self.cluster_ticks} ticks, {self.cluster_failed} failed, "
            f"{self.leader_changes} leader changes, at most {self.most_leaders} leader at "
            f"once; alive at the end: {', '.join(self.alive_at_end) or 'none'}",
            f"server log: {self.server_tracebacks} tracebacks",
            f"start (t={self.start.at:.0f} s): {self.start.line()}",
            f"end   (t={self.end.at:.0f} s): {self.end.line()}",
        ]
        lines += [f"{'ok ' if held else 'NOT'} {text}" for text, held in self.bounds()]
        if self.problems.count:
            lines.append(f"problems: {self.problems.count}, first: {self.problems.first}")
        return lines

    def failures(self) -> list[str]:
        """Everything that is not as it must be, for an assertion message."""
        failed = [f"bound exceeded: {text}" for text, held in self.bounds() if not held]
        if self.clients_wrong:
            failed.append(f"clients without exactly the saved events: {self.clients_wrong[:10]}")
        if self.deliveries != self.expected_deliveries:
            failed.append(f"{self.deliveries} deliveries, {self.expected_deliveries} expected")
        if self.server_errors:
            failed.append(f"{self.server_errors} HTTP 5xx answers")
        if self.problems.count:
            failed.append(f"{self.problems.count} problems: {self.problems.first}")
        if self.most_leaders > 1:
            failed.append("two cluster leaders at once")
        if sorted(self.alive_at_end) != sorted(self.nodes):
            failed.append(f"alive cluster nodes at the end: {self.alive_at_end}")
        if self.server_tracebacks:
            failed.append(
                f"{self.server_tracebacks} tracebacks in the server's log, the first:\n"
                + self.first_traceback
            )
        return failed


class Soak:
    """Runs the load against ``target`` and measures it; see the module's docstring."""

    def __init__(self, target: Target, load: Load) -> None:
        self.target = target
        self.load = load
        self.namespaces = [unique_name("soak_a"), unique_name("soak_b")]
        self.problems = Problems()
        self.ledger = Ledger(saved={ns: [] for ns in self.namespaces})
        self.runtime = Runtime(target.nats_url, name="soak-store")
        self.stores = {
            ns: JetStreamEventStore(ns, runtime=self.runtime, config=StoreConfig())
            for ns in self.namespaces
        }
        self.started = time.monotonic()

    async def _seed(self) -> dict[str, int]:
        """Create both namespaces with one event; return the sequence of each."""
        seeds = {}
        for ns, store in self.stores.items():
            event = await store.asave_event(
                Event(event_type="SoakStarted", actor_id="seed", version=1)
            )
            assert event.sequence is not None
            seeds[ns] = event.sequence
        return seeds

    async def _sample(self) -> Sample:
        return await asyncio.to_thread(Sample.take, self.target, self.started)

    async def _point(self) -> Sample:
        return await asyncio.to_thread(Sample.point, self.target, self.started)

    async def run(
        self,
        seconds: float,
        *,
        warmup: float,
        sample_every: float | None = None,
        on_sample: Callable[[Sample], None] | None = None,
    ) -> Result:
        """Warm up for ``warmup`` s, then ``seconds`` of load between the start and end
        samples (and one sample every ``sample_every`` s, handed to ``on_sample``); then
        stop the load and check what every client received."""
        load = self.load
        seeds = await self._seed()
        subscribers = [
            Subscriber(i, ns, seeds[ns], self.problems)
            for i in range(load.clients)
            for ns in [self.namespaces[i % len(self.namespaces)]]
        ]
        first = self.namespaces[0]
        reconnector = Reconnector(first, seeds[first], self.problems, load.reconnect_every)
        cluster = Cluster(self.target.nats_url, load, self.problems)
        try:
            progress(f"connecting {load.clients} WebSocket clients")
            gate = asyncio.Semaphore(50)

            async def connect(subscriber: Subscriber) -> None:
                async with gate:
                    await subscriber.open(self.target)

            await asyncio.gather(*(connect(s) for s in subscribers))
            samples = await self._load(
                reconnector, cluster, seconds, warmup, sample_every, on_sample
            )
            progress("load stopped; waiting for every client to receive every event")
            expected = await self._expected(seeds)
            await self._drain(
                subscribers, reconnector, {ns: last for ns, (last, _, _) in expected.items()}
            )
        finally:
            for subscriber in subscribers:
                await subscriber.close()
            await asyncio.to_thread(cluster.close)
            await self.runtime.aclose()
            self.runtime.close()
        wrong = []
        for stream in [s.stream for s in subscribers] + [reconnector.stream]:
            last, count, digest = expected[stream.namespace]
            if (stream.last, stream.count, stream.digest.hexdigest()) != (last, count, digest):
                wrong.append(
                    f"{stream.name}: {stream.count} of {count} events, last {stream.last} of {last}"
                )
        tracebacks, first_traceback = await asyncio.to_thread(self._tracebacks)
        start, end = samples[0], samples[-1]
        return Result(
            load=load,
            warmup=warmup,
            seconds=end.at - start.at,
            start=start,
            end=end,
            samples=samples,
            ledger=self.ledger,
            deliveries=sum(s.stream.count for s in subscribers),
            expected_deliveries=sum(expected[s.stream.namespace][1] for s in subscribers),
            reconnects=reconnector.connections,
            clients_wrong=wrong,
            problems=self.problems,
            cluster_ticks=cluster.ticks,
            cluster_failed=cluster.failed,
            leader_changes=cluster.leader_changes,
            most_leaders=cluster.most_leaders,
            alive_at_end=cluster.alive_at_end,
            nodes=[node.node_id for node in cluster.nodes],
            server_tracebacks=tracebacks,
            first_traceback=first_traceback,
        )

    def _thread(
        self, name: str, body: Callable[[threading.Event], None], stop: threading.Event
    ) -> threading.Thread:
        """A thread running ``body(stop)``; if it dies, that is a problem of the run."""

        def guarded() -> None:
            try:
                body(stop)
            except Exception as exc:
                self.problems.add(f"{name} stopped: {type(exc).__name__}: {exc}")

        return threading.Thread(target=guarded, name=f"soak-{name}")

    async def _load(
        self,
        reconnector: Reconnector,
        cluster: Cluster,
        seconds: float,
        warmup: float,
        sample_every: float | None,
        on_sample: Callable[[Sample], None] | None,
    ) -> list[Sample]:
        """Writers, readers, the reconnecting client and the cluster nodes, from the start
        of the warm-up to the end sample; the samples taken meanwhile."""
        load, target, ledger, problems = self.load, self.target, self.ledger, self.problems
        stop_threads = threading.Event()
        stop_tasks = asyncio.Event()
        workers = [
            self._thread(
                "http-writer",
                HttpWriter(target, load, self.namespaces, ledger, problems).run,
                stop_threads,
            ),
            self._thread("cluster", cluster.run, stop_threads),
        ]
        workers += [
            self._thread(
                f"reader-{i}",
                Reader(target, load, self.namespaces, ledger, problems, i).run,
                stop_threads,
            )
            for i in range(load.readers)
        ]
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(StoreWriter(self.stores, load, ledger, problems).run(stop_tasks)),
            loop.create_task(reconnector.run(target, stop_tasks)),
        ]
        for worker in workers:
            worker.start()
        samples: list[Sample] = []

        def keep(sample: Sample) -> None:
            samples.append(sample)
            if on_sample is not None:
                on_sample(sample)

        try:
            progress(f"warming up for {warmup:.0f} s")
            await asyncio.sleep(warmup)
            keep(await self._point())
            progress(f"soaking for {seconds:.0f} s")
            end_at = time.monotonic() + seconds
            if sample_every:
                next_sample = time.monotonic() + sample_every
                while next_sample < end_at:
                    await asyncio.sleep(next_sample - time.monotonic())
                    keep(await self._sample())
                    next_sample += sample_every
            await asyncio.sleep(max(0.0, end_at - time.monotonic()))
            keep(await self._point())
        finally:
            stop_threads.set()
            stop_tasks.set()
            for worker in workers:
                await asyncio.to_thread(worker.join, REQUEST_TIMEOUT)
            await asyncio.gather(*tasks, return_exceptions=True)
        return samples

    async def _expected(self, seeds: dict[str, int]) -> dict[str, tuple[int, int, str]]:
        """Per namespace, from the stored events: the last sequence, the number of events
        after the seed and the digest of their ids. Also checks that the stream holds
        exactly the acknowledged saves, each once."""
        actors = ["seed"] + [
            f"{kind}-{i}" for kind in ("http", "store") for i in range(self.load.actors)
        ]
        expected = {}
        for ns, store in self.stores.items():
            events = []
            for actor in actors:
                events += await store.aget_events(actor)
            events.sort(key=lambda e: e.sequence or 0)
            stored = [(int(e.sequence or 0), e.id) for e in events]
            stored = [(sequence, event_id) for sequence, event_id in stored if sequence > seeds[ns]]
            if sorted(self.ledger.saved[ns]) != stored:
                self.problems.add(
                    f"{ns}: the stream holds {len(stored)} events after the seed, "
                    f"{len(self.ledger.saved[ns])} saves were acknowledged"
                )
            digest = hashlib.blake2b(digest_size=16)
            for _, event_id in stored:
                digest.update(event_id.encode() + b"\n")
            last = stored[-1][0] if stored else seeds[ns]
            expected[ns] = (last, len(stored), digest.hexdigest())
        return expected

    async def _drain(
        self, subscribers: list[Subscriber], reconnector: Reconnector, last: dict[str, int]
    ) -> None:
        """Until every client has the last event of its namespace (the reconnecting one
        connects once more for the rest)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        target = last[reconnector.stream.namespace]
        while reconnector.stream.last < target and time.monotonic() < deadline:
            try:
                await reconnector.session(self.target, lambda: reconnector.stream.last >= target)
            except Exception as exc:
                self.problems.add(f"reconnecting client: {type(exc).__name__}: {exc}")
        while time.monotonic() < deadline:
            behind = [s for s in subscribers if s.stream.last < last[s.stream.namespace]]
            if not behind:
                return
            await asyncio.sleep(0.1)

    def _tracebacks(self) -> tuple[int, str]:
        """How many tracebacks the server logged, and the first one."""
        if self.target.server_log is None:
            return 0, ""
        text = self.target.server_log.read_text(errors="replace")
        first = text.find("Traceback")
        if first < 0:
            return 0, ""
        return text.count("Traceback"), text[first:][:3000]


# --- the benchmark --------------------------------------------------------------------------
