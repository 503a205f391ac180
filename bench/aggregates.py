"""Aggregate benchmark: a full command (load, decide, save) beside raw nats-py and eventsourcing.

Run from the repository root::

    .venv/bin/python -m bench.aggregates            # full run, 1.5-3 min on 2 cores
    .venv/bin/python -m bench.aggregates --quick    # smoke test, about 10 s
    .venv/bin/python -m bench.aggregates --only 1   # some figures only

One run starts its own nats-server (file storage in a temporary directory, free
ports), configures Django with ``settings.configure()`` (``aether_django`` and
the two contrib apps its models need, ``AETHER["NATS_URL"]`` pointing at that
server) and measures a full command on an aggregate declared here (an account
taking deposits), each figure beside baselines doing the same work in the same
interleaved rounds:

1. sequential commands on an aggregate without snapshots whose history stays
   short (a fresh actor every 20 commands): ``Model.objects.aupdate`` on the
   asyncio loop and ``Model.objects.update`` from a plain thread, against raw
   nats-py (one batched direct get of the actor's subject, fold the events,
   publish with ``Nats-Expected-Last-Subject-Sequence``, parse the ack), raw
   nats-py run from the same plain thread on a loop of its own, and the
   ``eventsourcing`` library on SQLite (``repository.get`` → command →
   ``app.save``);
2. the same on one long-lived actor of an aggregate that snapshots every 20
   events (as the example ``Order`` does), in a namespace of 100 such actors
   with 100 events each: the load is the latest snapshot plus the events after
   it. The raw baseline keeps its own snapshots (with the stream sequence of
   their last event) in a key-value bucket and reads snapshot + tail;
   eventsourcing snapshots every 20 events too;
3. 100 actors at once, with fresh actors and no snapshots, and with the 100
   long-lived snapshotted actors: ``aupdate`` from 100 asyncio tasks
   (``asyncio.gather``) and ``update`` from 100 threads (one per actor, a pool
   started before the run), against raw nats-py doing the same with 100 tasks,
   and eventsourcing running the same commands from one thread (SQLite
   serialises writers; more threads were slower).

Every command of the main figures is a real load, decide and save, as the
baselines' commands are: the aggregates measured declare ``Meta.cache_size = 0``,
so ``update()``/``aupdate()`` read the actor from the store each time instead of
running the command on the copy they keep of a hot actor. The same commands with
that cache on (its default) are extra rows marked "cached": there only the first
command on an actor, or one after another writer, loads it. The cached rows
have no target against raw nats-py (they do less work), but two compare like
with like against eventsourcing: "defaults" (aether's cache on, eventsourcing's
off, as each ships) and "both cached" (eventsourcing's aggregate cache on too,
which reads only the events after the cached version).

The sync figures of section 3 run from 100 threads; raw nats-py is asyncio-only,
so the like-for-like baseline for them (3j, 3k) is raw nats-py from the same 100
threads, each running its own loop and connection, as sync code would have to.

Rows marked "raw nats-py itself vs eventsourcing" compare the two baselines, to
show what any NATS client pays for the network round trips.

Targets: a command at least 0.7x as fast as raw nats-py, and ahead of
eventsourcing on the same workload. They are printed as met or not met, never
asserted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import json
import logging
import os
import sys
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StorageType

from aether_django.aggregates import Aggregate, DomainError, apply
from aether_django.events import Event
from aether_django.testing import NatsServer

from ._setup import (
    DATA,
    EVENT_TYPE,
    HDR_EXPECTED,
    HDR_MSG_ID,
    add_store_like_stream,
    finish,
    nats_meta,
    parse_only,
    raw_payload,
    subject_prefix,
)
from .common import (
    Report,
    base_parser,
    clock,
    interleaved,
    progress,
)

try:  # the eventsourcing comparison is skipped when the library is not installed
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate as EsAggregate
    from eventsourcing.domain import event
except ImportError:  # pragma: no cover
    Application = None  # type: ignore[assignment,misc]

HDR_SEQUENCE = "Nats-Sequence"

#: Commands on one actor before figure 1 moves on to a fresh one (its history stays short).
HISTORY = 20
#: Snapshot interval of the snapshotting aggregate (the example Order's).
SNAPSHOT_EVERY = 20
#: Events each long-lived actor of figures 2 and 3b has before the run.
PREFILL = 100
#: Messages asked for per batched direct get (as the store asks).
CHUNK = 4096


# --- the aggregates measured ------------------------------------------------------------


class BenchAccount(Aggregate):
    """An account that takes deposits: the smallest aggregate with a rule and a handler."""

    balance: int = 0
    deposits: int = 0

    class Meta:
        namespace = "bench-accounts"
        # No hot-actor cache: every command loads the actor, as the baselines do.
        cache_size = 0

    def deposit(self, amount: int) -> None:
        if amount <= 0:
            raise DomainError("a deposit must be positive")
        self.record(EVENT_TYPE, amount=amount, currency="EUR", reference="bench")

    @apply(EVENT_TYPE)
    def _deposited(self, event: Event) -> None:
        self.balance += event.data["amount"]
        self.deposits += 1


class BenchSnapAccount(BenchAccount):
    """The same account, snapshotted every 20 events."""

    class Meta:
        namespace = "bench-accounts-snap"
        snapshot_every = SNAPSHOT_EVERY
        cache_size = 0


class BenchCachedAccount(BenchAccount):
    """The account with update()'s hot-actor cache on (the default): the "cached" rows."""

    class Meta:
        namespace = "bench-accounts-cached"


class BenchCachedSnapAccount(BenchAccount):
    """The snapshotted account with the hot-actor cache on.

    Its own namespace and actors: a snapshot is labelled with the class that made
    it, so the two snapshotted classes cannot share actors.
    """

    class Meta:
        namespace = "bench-accounts-snap-cached"
        snapshot_every = SNAPSHOT_EVERY


def deposit(account: BenchAccount) -> None:
    """The command every aether variant runs."""
    account.deposit(1)


# --- the same command in raw nats-py ----------------------------------------------------


class RawAccounts:
    """The command written with nats-py alone, as a careful application would.

    Load: the latest snapshot (when snapshotting), then one batched direct get of
    the actor's subject from the first sequence after it; fold each JSON event
    into the state. Decide, then publish one event with the expected last
    subject sequence (compare-and-set) and parse the ack. Snapshots carry the
    stream sequence of their last event, so the tail is read without a search.
    """

    def __init__(
        self, nc: Any, stream: str, prefix: str, bucket: str | None = None, every: int = 0
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.prefix = prefix
        self.bucket = bucket
        self.every = every

    async def _batch_get(self, subject: str, start: int) -> list[Msg]:
        """Every message of ``subject`` from sequence ``start`` on (batched direct gets)."""
        loop = asyncio.get_running_loop()
        received: list[Msg] = []
        while True:
            done: asyncio.Future[Msg] = loop.create_future()
            mark = len(received)

            async def on_msg(msg: Msg, done: asyncio.Future[Msg] = done) -> None:
                if msg.headers and "Status" in msg.headers:
                    if not done.done():
                        done.set_result(msg)
                elif not done.done():
                    received.append(msg)

            inbox = self.nc.new_inbox()
            sub = await self.nc.subscribe(inbox, cb=on_msg)
            try:
                request = {"seq": start, "next_by_subj": subject, "batch": CHUNK}
                await self.nc.publish(
                    f"$JS.API.DIRECT.GET.{self.stream}", json.dumps(request).encode(), reply=inbox
                )
                status = await asyncio.wait_for(done, 5)
            finally:
                await sub.unsubscribe()
            code = status.headers.get("Status") if status.headers else None
            if code == "404" or len(received) == mark:
                return received
            if code != "204":
                raise RuntimeError(f"raw direct get answered {code}")
            if int(status.headers.get("Nats-Num-Pending", "0") or 0) <= 0:
                return received
            start = int(received[-1].headers[HDR_SEQUENCE]) + 1  # type: ignore[index]

    async def _snapshot(self, actor_id: str) -> dict[str, Any] | None:
        reply = await self.nc.request(
            f"$JS.API.DIRECT.GET.KV_{self.bucket}.$KV.{self.bucket}.{actor_id}", b"", timeout=5
        )
        if reply.headers and reply.headers.get("Status"):
            return None
        doc: dict[str, Any] = json.loads(reply.data)
        return doc

    async def command(self, actor_id: str, amount: int = 1) -> int:
        subject = f"{self.prefix}.{actor_id}"
        balance, deposits, version, seq = 0, 0, 0, 0
        if self.bucket is not None:
            snapshot = await self._snapshot(actor_id)
            if snapshot is not None:
                state = snapshot["state"]
                balance, deposits = state["balance"], state["deposits"]
                version, seq = snapshot["version"], snapshot["seq"]
        for msg in await self._batch_get(subject, seq + 1):
            doc = json.loads(msg.data)
            balance += doc["data"]["amount"]
            deposits += 1
            version = doc["version"]
            seq = int(msg.headers[HDR_SEQUENCE])  # type: ignore[index]
        if amount <= 0:
            raise ValueError("a deposit must be positive")
        version += 1
        event_id, payload = raw_payload(actor_id, version)
        reply = await self.nc.request(
            subject, payload, timeout=5, headers={HDR_MSG_ID: event_id, HDR_EXPECTED: str(seq)}
        )
        ack = json.loads(reply.data)
        if "error" in ack:
            raise RuntimeError(f"raw save refused: {ack['error']}")
        if self.bucket is not None and version // self.every > (version - 1) // self.every:
            snapshot_doc = {
                "version": version,
                "seq": ack["seq"],
                "state": {"balance": balance + amount, "deposits": deposits + 1},
            }
            put = await self.nc.request(
                f"$KV.{self.bucket}.{actor_id}", json.dumps(snapshot_doc).encode(), timeout=5
            )
            if "error" in json.loads(put.data):
                raise RuntimeError("raw snapshot refused")
        return version


# --- the same command with the eventsourcing library ------------------------------------

if Application is not None:

    class EsAccount(EsAggregate):
        """The eventsourcing side's account: opened with a first deposit, then deposits."""

        @event("Opened")
        def __init__(self, amount: int) -> None:
            self.balance = amount
            self.deposits = 1

        def credit(self, amount: int) -> None:
            if amount <= 0:
                raise ValueError("a deposit must be positive")
            self._deposited(amount=amount, currency="EUR", reference="bench")

        @event(EVENT_TYPE)
        def _deposited(self, amount: int, currency: str, reference: str) -> None:
            self.balance += amount
            self.deposits += 1

    class EsSnapAccount(EsAccount):
        """Snapshotted every 20 events by its application."""

    class EsApp(Application[uuid.UUID]):
        """No snapshotting, no aggregate cache: every command replays."""

    class EsSnapApp(Application[uuid.UUID]):
        """Snapshots every 20 events, as the aether aggregate does."""

        snapshotting_intervals = {EsSnapAccount: SNAPSHOT_EVERY}


def es_command(app: Any, aggregate_id: uuid.UUID) -> None:
    account = app.repository.get(aggregate_id)
    account.credit(1)
    app.save(account)


# --- sizes and the bench ----------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does; ``--quick`` shrinks everything."""

    rounds: int
    warmup: int
    seq_commands: int
    snap_commands: int
    actors: int
    per_actor: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(rounds=7, warmup=1, seq_commands=400, snap_commands=200, actors=100, per_actor=5)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(rounds=2, warmup=1, seq_commands=40, snap_commands=40, actors=100, per_actor=1)


class Bench:
    """What every figure needs: the raw connection, the sync thread, the eventsourcing apps."""

    def __init__(self, url: str, sizes: Sizes, report: Report, tmp: str) -> None:
        self.url = url
        self.sizes = sizes
        self.report = report
        self.tmp = tmp
        self.nc: Any = None
        self.js: Any = None
        # Sync callers (aether's sync API, eventsourcing) run on this one plain thread.
        self.sync_thread = ThreadPoolExecutor(1, thread_name_prefix="bench-sync")
        # Figure 3's sync variants: one thread per actor, started before anything is timed.
        self.actor_threads = ThreadPoolExecutor(sizes.actors, thread_name_prefix="bench-actor")
        self.es: Any = None
        self.es_cached: Any = None
        self.es_snap: Any = None
        self.raw: RawAccounts | None = None
        self.raw_snap: RawAccounts | None = None
        #: Long-lived actors of figures 2 and 3b: aether ids, raw ids, eventsourcing ids.
        self.snap_actors: list[str] = []
        self.es_snap_ids: list[uuid.UUID] = []
        #: The sync thread's own loop and raw client (figure 1f).
        self.private: tuple[asyncio.AbstractEventLoop, RawAccounts] | None = None
        #: Figure 3's raw baseline for sync callers: each actor thread's own loop and
        #: raw clients (plain and snapshotting), made on first use in a warm-up round.
        self.thread_clients = threading.local()
        self.thread_loops: list[tuple[asyncio.AbstractEventLoop, Any]] = []

    async def in_sync_thread(self, fn: Callable[[], float]) -> float:
        return await asyncio.get_running_loop().run_in_executor(self.sync_thread, fn)

    def thread_raw(self) -> tuple[asyncio.AbstractEventLoop, RawAccounts]:
        """The sync thread's private loop and a raw client on it (call on the sync thread)."""
        if self.private is None:
            assert self.raw is not None
            loop = asyncio.new_event_loop()
            nc = loop.run_until_complete(nats.connect(self.url, name="bench-raw-sync"))
            self.private = (loop, RawAccounts(nc, self.raw.stream, self.raw.prefix))
        return self.private

    def actor_thread_raw(self) -> tuple[asyncio.AbstractEventLoop, RawAccounts, RawAccounts]:
        """This actor thread's loop and raw clients (call on an actor thread)."""
        mine = getattr(self.thread_clients, "raw", None)
        if mine is None:
            assert self.raw is not None and self.raw_snap is not None
            loop = asyncio.new_event_loop()
            nc = loop.run_until_complete(nats.connect(self.url, name="bench-raw-thread"))
            raw_snap = self.raw_snap
            mine = (
                loop,
                RawAccounts(nc, self.raw.stream, self.raw.prefix),
                RawAccounts(nc, raw_snap.stream, raw_snap.prefix, raw_snap.bucket, raw_snap.every),
            )
            self.thread_clients.raw = mine
            self.thread_loops.append((loop, nc))
        return mine

    async def setup(self) -> None:
        self.nc = await nats.connect(self.url, name="bench-raw")
        self.js = self.nc.jetstream(timeout=10.0)
        # The raw streams are configured exactly like a namespace's (the store's own config).
        streams = []
        for namespace in ("raw-accounts", "raw-accounts-snap"):
            name, template = await add_store_like_stream(self.js, namespace, None)
            streams.append((name, subject_prefix(template)))
        await self.js.create_key_value(
            KeyValueConfig(bucket="raw_snapshots", history=1, storage=StorageType.FILE, direct=True)
        )
        self.raw = RawAccounts(self.nc, *streams[0])
        self.raw_snap = RawAccounts(self.nc, *streams[1], "raw_snapshots", SNAPSHOT_EVERY)
        if Application is not None:

            def env(name: str, **more: str) -> dict[str, str]:
                return {
                    "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                    "SQLITE_DBNAME": os.path.join(self.tmp, name),
                    **more,
                }

            self.es = EsApp(env=env("es.sqlite"))
            # Its optional aggregate cache (off by default): a command reads only the
            # events after the cached version (fast-forward), like aether's hot actors.
            self.es_cached = EsApp(env=env("es-cached.sqlite", AGGREGATE_CACHE_MAXSIZE="1000"))
            self.es_snap = EsSnapApp(env=env("es-snap.sqlite"))

    async def prefill(self) -> None:
        """100 long-lived actors with 100 events and a snapshot each, on every side."""
        from aether_django.runtime import get_runtime
        from aether_django.store.jetstream import JetStreamEventStore

        assert self.raw_snap is not None
        actors = self.sizes.actors
        progress(f"filling {actors} long-lived actors with {PREFILL} events each")
        self.snap_actors = [f"acct-{i}" for i in range(actors)]
        raw_store = JetStreamEventStore("raw-accounts-snap", runtime=get_runtime())
        for actor in self.snap_actors:
            for model in (BenchSnapAccount, BenchCachedSnapAccount):
                account = model.objects.create(actor)
                for _ in range(PREFILL):
                    account.deposit(1)
                await account.asave()  # one atomic batch, and the snapshot at v100
            # The raw side's history, written in the same wire format, and its snapshot.
            stored = await raw_store.asave_events(
                [
                    Event(event_type=EVENT_TYPE, actor_id=actor, version=v, data=DATA)
                    for v in range(1, PREFILL + 1)
                ]
            )
            snapshot = {
                "version": PREFILL,
                "seq": stored[-1].sequence,
                "state": {"balance": PREFILL, "deposits": PREFILL},
            }
            await self.nc.request(
                f"$KV.raw_snapshots.{actor}", json.dumps(snapshot).encode(), timeout=5
            )
        if Application is not None:
            for _ in range(actors):
                es_account = EsSnapAccount(1)
                for _ in range(PREFILL - 1):
                    es_account.credit(1)
                self.es_snap.save(es_account)
                self.es_snap_ids.append(es_account.id)

    async def close(self) -> None:
        logging.getLogger("aether_django.runtime").setLevel(logging.ERROR)
        if self.private is not None:
            loop, raw = self.private

            def close_private() -> float:
                loop.run_until_complete(raw.nc.close())
                loop.close()
                return 0.0

            await self.in_sync_thread(close_private)

        def close_thread_loops() -> float:
            # Each actor thread's loop is idle now; run each once more to close its client.
            for loop, nc in self.thread_loops:
                loop.run_until_complete(nc.close())
                loop.close()
            return 0.0

        await self.in_sync_thread(close_thread_loops)
        self.sync_thread.shutdown()
        self.actor_threads.shutdown()
        if self.nc is not None:
            await self.nc.close()
        for app in (self.es, self.es_cached, self.es_snap):
            if app is not None:
                app.close()
        from aether_django.runtime import get_runtime

        await get_runtime().aclose()


#: Targets of the command figures: against raw nats-py, and against eventsourcing.
VS_RAW: dict[str, Any] = {"target": "≥ 0.7x raw", "min_ratio": 0.7}
VS_ES: dict[str, Any] = {"target": "> 1x eventsourcing", "min_ratio": 1.0}


async def measure_commands(
    b: Bench,
    variants: dict[str, Callable[[], Awaitable[float]]],
    es_round: Callable[[], float],
    rows: list[tuple[str, str, str, str, str, dict[str, Any]]],
) -> None:
    """Run the variants (and eventsourcing's, when installed) interleaved; one row per figure.

    Each row is (section, figure, variant, baseline variant, baseline label, target);
    rows against eventsourcing are left out when it is not installed.
    """
    if Application is not None:
        variants["es"] = lambda: b.in_sync_thread(es_round)
    res = await interleaved(variants, rounds=b.sizes.rounds, warmup=b.sizes.warmup)
    for section, figure, value, baseline, label, target in rows:
        if value in res and baseline in res:
            b.report.compare(
                section,
                figure,
                "commands/s",
                res[value],
                res[baseline],
                baseline_label=label,
                **target,
            )


# --- 1. sequential commands, short histories --------------------------------------------


async def bench_sequential(b: Bench) -> None:
    n, sizes = b.sizes.seq_commands, b.sizes
    progress(f"1. sequential commands, no snapshots ({n} a round, {sizes.rounds} rounds)")
    assert b.raw is not None
    raw = b.raw
    counters = {"async": 0, "sync": 0, "raw": 0, "thread": 0, "async_cached": 0, "sync_cached": 0}

    def actor_for(kind: str, i: int) -> str:
        # A fresh actor every HISTORY commands: histories of 0..19 events.
        return f"{kind}-{(counters[kind] + i) // HISTORY}"

    def aether_async(model: type[BenchAccount], kind: str) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            start = clock()
            for i in range(n):
                await model.objects.aupdate(actor_for(kind, i), deposit, create=True)
            elapsed = clock() - start
            counters[kind] += n
            return n / elapsed

        return run

    def aether_sync(model: type[BenchAccount], kind: str) -> Callable[[], Awaitable[float]]:
        def run() -> float:
            start = clock()
            for i in range(n):
                model.objects.update(actor_for(kind, i), deposit, create=True)
            elapsed = clock() - start
            counters[kind] += n
            return n / elapsed

        return lambda: b.in_sync_thread(run)

    async def raw_round() -> float:
        start = clock()
        for i in range(n):
            await raw.command(actor_for("raw", i))
        elapsed = clock() - start
        counters["raw"] += n
        return n / elapsed

    def es_rounds(app_of: Callable[[], Any]) -> Callable[[], float]:
        def round_() -> float:
            app = app_of()
            start = clock()
            for _ in range(n // HISTORY):
                account = EsAccount(1)  # the fresh actor's first command
                app.save(account)
                for _ in range(HISTORY - 1):
                    es_command(app, account.id)
            return (n // HISTORY) * HISTORY / (clock() - start)

        return round_

    es_round = es_rounds(lambda: b.es)

    def raw_thread_round() -> float:
        # Raw nats-py as sync code would have to use it: the plain thread runs its
        # own loop, with its own connection, for the duration of the round.
        loop, raw_thread = b.thread_raw()
        start = clock()

        async def run() -> None:
            for i in range(n):
                await raw_thread.command(actor_for("thread", i))

        loop.run_until_complete(run())
        elapsed = clock() - start
        counters["thread"] += n
        return n / elapsed

    variants: dict[str, Callable[[], Awaitable[float]]] = {
        "async": aether_async(BenchAccount, "async"),
        "sync": aether_sync(BenchAccount, "sync"),
        "raw": raw_round,
        "raw_thread": lambda: b.in_sync_thread(raw_thread_round),
        "async_cached": aether_async(BenchCachedAccount, "async_cached"),
        "sync_cached": aether_sync(BenchCachedAccount, "sync_cached"),
    }
    if Application is not None:
        cached_round = es_rounds(lambda: b.es_cached)
        variants["es_cached"] = lambda: b.in_sync_thread(cached_round)
    label = "raw nats-py: batched direct get + fold + CAS publish"
    es = "eventsourcing, SQLite file"
    await measure_commands(
        b,
        variants,
        es_round,
        [
            (
                "1a",
                "command, async `aupdate` (history < 20, no snapshots), load every command",
                "async",
                "raw",
                label,
                VS_RAW,
            ),
            (
                "1b",
                "command, sync `update` from a plain thread, same",
                "sync",
                "raw",
                label,
                VS_RAW,
            ),
            (
                "1c",
                "  sync `update` vs eventsourcing get → command → save",
                "sync",
                "es",
                es,
                VS_ES,
            ),
            ("1d", "  async `aupdate` vs eventsourcing", "async", "es", es, {}),
            ("1e", "  raw nats-py itself vs eventsourcing", "raw", "es", es, {}),
            (
                "1f",
                "  sync `update` against raw run from the same plain thread",
                "sync",
                "raw_thread",
                "raw nats-py on the sync thread's own loop",
                {},
            ),
            (
                "1g",
                "  cached: async `aupdate` keeping hot actors (loads 1 command in 20)",
                "async_cached",
                "raw",
                label,
                {},
            ),
            (
                "1h",
                "  cached: sync `update` keeping hot actors (loads 1 command in 20)",
                "sync_cached",
                "raw",
                label,
                {},
            ),
            (
                "1i",
                "  defaults: sync `update` (hot actors kept) vs eventsourcing (no cache)",
                "sync_cached",
                "es",
                es,
                VS_ES,
            ),
            (
                "1j",
                "  both cached: sync `update` vs eventsourcing with its aggregate cache",
                "sync_cached",
                "es_cached",
                "eventsourcing, SQLite file, aggregate cache with fast-forward",
                VS_ES,
            ),
        ],
    )


# --- 2. sequential commands on a long-lived, snapshotted actor --------------------------


async def bench_snapshotted(b: Bench) -> None:
    n, sizes = b.sizes.snap_commands, b.sizes
    progress(f"2. sequential commands, snapshot every 20 ({n} a round, {sizes.rounds} rounds)")
    assert b.raw_snap is not None
    raw = b.raw_snap
    # The async and sync variants use different actors; each class has its own namespace.
    async_actor, sync_actor, raw_actor = b.snap_actors[0], b.snap_actors[1], b.snap_actors[0]

    def aether_async(model: type[BenchAccount]) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            start = clock()
            for _ in range(n):
                await model.objects.aupdate(async_actor, deposit)
            return n / (clock() - start)

        return run

    def aether_sync(model: type[BenchAccount]) -> Callable[[], Awaitable[float]]:
        def run() -> float:
            start = clock()
            for _ in range(n):
                model.objects.update(sync_actor, deposit)
            return n / (clock() - start)

        return lambda: b.in_sync_thread(run)

    async def raw_round() -> float:
        start = clock()
        for _ in range(n):
            await raw.command(raw_actor)
        return n / (clock() - start)

    def es_round() -> float:
        app, account_id = b.es_snap, b.es_snap_ids[0]
        start = clock()
        for _ in range(n):
            es_command(app, account_id)
        return n / (clock() - start)

    variants: dict[str, Callable[[], Awaitable[float]]] = {
        "async": aether_async(BenchSnapAccount),
        "sync": aether_sync(BenchSnapAccount),
        "raw": raw_round,
        "async_cached": aether_async(BenchCachedSnapAccount),
        "sync_cached": aether_sync(BenchCachedSnapAccount),
    }
    label = "raw nats-py: snapshot + tail by sequence + CAS publish"
    es = "eventsourcing, SQLite file, snapshotting"
    await measure_commands(
        b,
        variants,
        es_round,
        [
            (
                "2a",
                "command, async `aupdate`, snapshot every 20, long-lived actor, load every command",
                "async",
                "raw",
                label,
                VS_RAW,
            ),
            ("2b", "command, sync `update`, same", "sync", "raw", label, VS_RAW),
            (
                "2c",
                "  sync `update` vs eventsourcing with snapshots every 20",
                "sync",
                "es",
                es,
                VS_ES,
            ),
            ("2d", "  raw nats-py itself vs eventsourcing", "raw", "es", es, {}),
            (
                "2e",
                "  cached: async `aupdate` keeping the hot actor (no load)",
                "async_cached",
                "raw",
                label,
                {},
            ),
            (
                "2f",
                "  cached: sync `update` keeping the hot actor (no load)",
                "sync_cached",
                "raw",
                label,
                {},
            ),
            (
                "2g",
                "  defaults: sync `update` (hot actor kept) vs eventsourcing with snapshots",
                "sync_cached",
                "es",
                es,
                VS_ES,
            ),
        ],
    )


# --- 3. 100 actors at once --------------------------------------------------------------


async def bench_concurrent(b: Bench) -> None:
    sizes = b.sizes
    actors, per = sizes.actors, sizes.per_actor
    total = actors * per
    progress(f"3. {actors} actors at once ({per} commands each a round, {sizes.rounds} rounds)")
    assert b.raw is not None and b.raw_snap is not None
    raw, raw_snap = b.raw, b.raw_snap
    # Round counters: each fresh variant starts new actors every round.
    fresh = {"aether": 0, "raw": 0, "sync": 0, "cached": 0, "raw_threads": 0}

    def next_generation(kind: str) -> str:
        generation = fresh[kind]
        fresh[kind] += 1
        return f"conc-{kind}-{generation}"

    async def gather(one: Callable[[int], Awaitable[None]]) -> float:
        start = clock()
        await asyncio.gather(*(one(i) for i in range(actors)))
        return total / (clock() - start)

    def in_threads(one: Callable[[int], None]) -> Callable[[], Awaitable[float]]:
        # Timed on the sync thread, which hands one actor to each pool thread.
        def run() -> float:
            start = clock()
            list(b.actor_threads.map(one, range(actors)))
            return total / (clock() - start)

        return lambda: b.in_sync_thread(run)

    def aether_fresh(model: type[BenchAccount], kind: str) -> Callable[[], Awaitable[float]]:
        # Fresh actors each round: histories of 0..per-1 events, no snapshots.
        async def run() -> float:
            prefix = next_generation(kind)

            async def one(i: int) -> None:
                for _ in range(per):
                    await model.objects.aupdate(f"{prefix}-{i}", deposit, create=True)

            return await gather(one)

        return run

    async def raw_fresh() -> float:
        prefix = next_generation("raw")

        async def one(i: int) -> None:
            for _ in range(per):
                await raw.command(f"{prefix}-{i}")

        return await gather(one)

    def sync_fresh() -> Awaitable[float]:
        prefix = next_generation("sync")

        def one(i: int) -> None:
            for _ in range(per):
                BenchAccount.objects.update(f"{prefix}-{i}", deposit, create=True)

        return in_threads(one)()

    def aether_snap(model: type[BenchAccount]) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            async def one(i: int) -> None:
                for _ in range(per):
                    await model.objects.aupdate(b.snap_actors[i], deposit)

            return await gather(one)

        return run

    def sync_snap_one(i: int) -> None:
        for _ in range(per):
            BenchSnapAccount.objects.update(b.snap_actors[i], deposit)

    def raw_threads_fresh() -> Awaitable[float]:
        # Raw nats-py as sync code has to use it: each thread runs its own loop and
        # connection (nats-py is asyncio-only), the same threads as 3e.
        prefix = next_generation("raw_threads")

        def one(i: int) -> None:
            loop, raw_thread, _ = b.actor_thread_raw()
            for _ in range(per):
                loop.run_until_complete(raw_thread.command(f"{prefix}-{i}"))

        return in_threads(one)()

    def raw_threads_snap_one(i: int) -> None:
        loop, _, raw_thread_snap = b.actor_thread_raw()
        for _ in range(per):
            loop.run_until_complete(raw_thread_snap.command(b.snap_actors[i]))

    async def raw_snap_round() -> float:
        async def one(i: int) -> None:
            for _ in range(per):
                await raw_snap.command(b.snap_actors[i])

        return await gather(one)

    def es_round() -> float:
        # SQLite serialises writers, and threads were slower than one (see the docs).
        app = b.es_snap
        start = clock()
        for _ in range(per):
            for account_id in b.es_snap_ids:
                es_command(app, account_id)
        return total / (clock() - start)

    variants: dict[str, Callable[[], Awaitable[float]]] = {
        "fresh": aether_fresh(BenchAccount, "aether"),
        "raw_fresh": raw_fresh,
        "snap": aether_snap(BenchSnapAccount),
        "raw_snap": raw_snap_round,
        "sync_fresh": sync_fresh,
        "sync_snap": in_threads(sync_snap_one),
        "raw_threads_fresh": raw_threads_fresh,
        "raw_threads_snap": in_threads(raw_threads_snap_one),
        "fresh_cached": aether_fresh(BenchCachedAccount, "cached"),
        "snap_cached": aether_snap(BenchCachedSnapAccount),
    }
    es = "eventsourcing, snapshotting, one thread"
    await measure_commands(
        b,
        variants,
        es_round,
        [
            (
                "3a",
                f"{actors} actors at once, `aupdate`, no snapshots (history < {per}), "
                "load every command",
                "fresh",
                "raw_fresh",
                "raw nats-py, 100 tasks",
                VS_RAW,
            ),
            (
                "3b",
                f"{actors} actors at once, `aupdate`, snapshot every 20, load every command",
                "snap",
                "raw_snap",
                "raw nats-py snapshot + tail, 100 tasks",
                VS_RAW,
            ),
            ("3c", "  3b against eventsourcing running the same commands", "snap", "es", es, VS_ES),
            (
                "3d",
                "  raw nats-py (snapshot + tail, 100 tasks) itself vs eventsourcing",
                "raw_snap",
                "es",
                es,
                {},
            ),
            (
                "3e",
                f"{actors} actors at once, sync `update` from {actors} threads, no snapshots, "
                "load every command",
                "sync_fresh",
                "raw_fresh",
                "raw nats-py, 100 tasks",
                VS_RAW,
            ),
            (
                "3f",
                f"{actors} actors at once, sync `update` from {actors} threads, snapshot every 20, "
                "load every command",
                "sync_snap",
                "raw_snap",
                "raw nats-py snapshot + tail, 100 tasks",
                VS_RAW,
            ),
            ("3g", "  3f against eventsourcing", "sync_snap", "es", es, VS_ES),
            (
                "3j",
                "  3e against raw nats-py from the same threads, each on its own loop",
                "sync_fresh",
                "raw_threads_fresh",
                f"raw nats-py, {actors} threads with a loop and connection each",
                {},
            ),
            (
                "3k",
                "  3f against raw nats-py from the same threads, each on its own loop",
                "sync_snap",
                "raw_threads_snap",
                f"raw nats-py snapshot + tail, {actors} threads with a loop and connection each",
                {},
            ),
            (
                "3h",
                "  cached: 3a keeping hot actors (loads the first command of each actor)",
                "fresh_cached",
                "raw_fresh",
                "raw nats-py, 100 tasks",
                {},
            ),
            (
                "3i",
                "  cached: 3b keeping hot actors (loads only in the first round)",
                "snap_cached",
                "raw_snap",
                "raw nats-py snapshot + tail, 100 tasks",
                {},
            ),
        ],
    )


# --- main -------------------------------------------------------------------------------


SECTIONS: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "1": bench_sequential,
    "2": bench_snapshotted,
    "3": bench_concurrent,
}


async def run_all(b: Bench, only: list[str]) -> None:
    await b.setup()
    try:
        if not only or {"2", "3"} & set(only):
            await b.prefill()
        for key, section in SECTIONS.items():
            if only and key not in only:
                continue
            started = clock()
            await section(b)
            progress(f"{key}. done in {clock() - started:.1f} s")
    finally:
        await b.close()


def configure_django(url: str) -> None:
    """The least configuration the aggregate layer needs: the app and the server's URL."""
    import django
    from django.conf import settings

    settings.configure(
        # auth and contenttypes because aether_django's models refer to them.
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "aether_django"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        USE_TZ=True,
        AETHER={"NATS_URL": url, "STORAGE": "file"},
        LOGGING_CONFIG=None,
    )
    django.setup()


def main(argv: list[str] | None = None) -> int:
    parser = base_parser((__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--only", default="", help="comma-separated figures to run, e.g. 1,3 (default: all)"
    )
    args = parser.parse_args(argv)
    only = parse_only(args)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    report = Report("aether_django aggregates: a full command vs baselines")
    started = clock()
    with NatsServer() as server, tempfile.TemporaryDirectory(prefix="aether-bench-agg-") as tmp:
        configure_django(server.url)
        nats_meta(report, server, args.quick)
        report.meta.update(
            {
                "eventsourcing": (
                    importlib.metadata.version("eventsourcing")
                    if Application is not None
                    else "not installed"
                ),
                "storage": "file (temporary directory); eventsourcing: SQLite file, same directory",
                "rounds": (
                    f"{sizes.rounds} after {sizes.warmup} warm-up; values are medians, "
                    "ratios medians of per-round ratios"
                ),
            }
        )
        from aether_django.runtime import reset_runtime

        try:
            asyncio.run(run_all(Bench(server.url, sizes, report, tmp), only))
        finally:
            reset_runtime()
    finish(report, started, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
