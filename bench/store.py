"""Event-store benchmark: JetStreamEventStore beside raw nats-py and the eventsourcing library.

Run from the repository root::

    .venv/bin/python -m bench.store            # full run, about a minute on 2 cores
    .venv/bin/python -m bench.store --quick    # smoke test, a few seconds

One run starts its own nats-server (file storage in a temporary directory, free
ports) and measures, each figure beside a baseline doing the same work in the
same run:

1. sequential single-event saves on one actor: ``asave_event`` on an asyncio
   loop and ``save_event`` (the sync facade) from a plain thread, against raw
   nats-py ``js.publish`` / ``nc.request`` with ``Nats-Msg-Id`` and
   ``Nats-Expected-Last-Subject-Sequence``;
2. saves across 100 actors concurrently (100 asyncio tasks) against raw nats-py;
3. atomic batches of 10 events against a raw atomic batch publish;
4. replay of a 10 000-event actor: full replay, load from a snapshot, and raw
   nats-py consumers reading the same subject;
5. conflict-detection latency (stale version to VersionConflictError), p50/p99,
   with a warm and a cold head cache, against a raw stale publish; and (5c) the
   racing writer: writer B's cached version is stale because writer A has just
   saved, so B's save is refused by the server and B reads the current version,
   against raw nats-py doing the same (a publish with a stale expected sequence,
   its error, then a direct get of the subject's last message);
6. the ``eventsourcing`` library on SQLite: sequential saves and a 10 000-event
   replay, against the sync facade;
7. what syncing every write costs: sequential and concurrent saves on a second
   nats-server started with ``sync_interval: always`` (every write on disk
   before it is acknowledged), against the same saves on the first one, which
   keeps JetStream's default (a disk sync every 2 minutes).
8. pages of a namespace's actor list with 100 000 actors (10 000 with ``--quick``):
   page 1,000 against page 1, each read as the API's actor list reads it, with the
   listing window kept between calls (warm), forgotten (cold), and kept while an
   actor is created before each page (the window learns it from the new events).

Targets are printed as met or not met, never asserted. Every figure uses a fresh
namespace (and a fresh raw stream) so none sees another's data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import nats
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from aether_django.errors import VersionConflictError
from aether_django.events import ActorSnapshot, encode_event
from aether_django.nats.api import ERR_WRONG_LAST_SEQUENCE
from aether_django.runtime import Runtime
from aether_django.store.base import StoreConfig
from aether_django.store.jetstream import JetStreamEventStore
from aether_django.testing import NatsServer

from ._setup import (
    DATA,
    EVENT_TYPE,
    HDR_EXPECTED,
    HDR_MSG_ID,
    add_store_like_stream,
    finish,
    nats_meta,
    new_event,
    parse_only,
    raw_payload,
    subject_prefix,
)
from .common import (
    Report,
    base_parser,
    clock,
    interleaved,
    median,
    percentile,
    progress,
    unique_name,
)

try:  # the eventsourcing comparison is skipped when the library is not installed
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event
except ImportError:  # pragma: no cover
    Application = None  # type: ignore[assignment,misc]


#: Events per atomic batch while filling a replay actor.
FILL_CHUNK = 100


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does; ``--quick`` shrinks everything."""

    rounds: int
    warmup: int
    seq_rounds: int
    seq_events: int
    actors: int
    per_actor: int
    batches: int
    batch_size: int
    replay_events: int
    replay_rounds: int
    snapshot_loads: int
    tail_loads: int
    tail_events: int
    conflict_tries: int
    es_events: int
    page_actors: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            rounds=5,
            warmup=1,
            seq_rounds=15,
            seq_events=1000,
            actors=100,
            per_actor=20,
            batches=150,
            batch_size=10,
            replay_events=10_000,
            replay_rounds=7,
            snapshot_loads=200,
            tail_loads=20,
            tail_events=100,
            conflict_tries=2000,
            es_events=1000,
            page_actors=100_000,
        )

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            rounds=2,
            warmup=1,
            seq_rounds=2,
            seq_events=200,
            actors=100,
            per_actor=2,
            batches=30,
            batch_size=10,
            replay_events=1000,
            replay_rounds=2,
            snapshot_loads=20,
            tail_loads=5,
            tail_events=100,
            conflict_tries=200,
            es_events=100,
            page_actors=10_000,
        )


class RawActor:
    """One actor written with plain nats-py, tracking its last stream sequence itself."""

    def __init__(self, nc: Any, subject: str, actor_id: str) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=5.0)
        self.subject = subject
        self.actor_id = actor_id
        self.version = 0
        self.seq = 0

    async def publish(self) -> None:
        """One event with ``js.publish`` (the library's JetStream publish)."""
        self.version += 1
        event_id, payload = raw_payload(self.actor_id, self.version)
        ack = await self.js.publish(
            self.subject, payload, headers={HDR_MSG_ID: event_id, HDR_EXPECTED: str(self.seq)}
        )
        self.seq = ack.seq

    async def request(self) -> None:
        """One event with ``nc.request`` and a JSON parse of the ack (as the store does)."""
        self.version += 1
        event_id, payload = raw_payload(self.actor_id, self.version)
        reply = await self.nc.request(
            self.subject,
            payload,
            timeout=5.0,
            headers={HDR_MSG_ID: event_id, HDR_EXPECTED: str(self.seq)},
        )
        doc = json.loads(reply.data)
        if "error" in doc:
            raise RuntimeError(f"raw save refused: {doc['error']}")
        self.seq = doc["seq"]

    async def batch(self, size: int) -> None:
        """``size`` events in one atomic batch, the expected sequence on the first."""
        batch_id = uuid.uuid4().hex
        reply = None
        for i in range(1, size + 1):
            self.version += 1
            event_id, payload = raw_payload(self.actor_id, self.version)
            headers = {
                HDR_MSG_ID: event_id,
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(i),
            }
            if i == 1:
                headers[HDR_EXPECTED] = str(self.seq)
            if i < size:
                await self.nc.publish(self.subject, payload, headers=headers)
            else:
                headers["Nats-Batch-Commit"] = "1"
                reply = await self.nc.request(self.subject, payload, timeout=5.0, headers=headers)
        assert reply is not None
        doc = json.loads(reply.data)
        if "error" in doc:
            raise RuntimeError(f"raw batch refused: {doc['error']}")
        self.seq = doc["seq"]


class Bench:
    """What every figure needs: the server URL, the runtime, a raw connection, the report."""

    def __init__(
        self,
        url: str,
        runtime: Runtime,
        sizes: Sizes,
        report: Report,
        *,
        synced_url: str | None = None,
    ) -> None:
        self.url = url
        #: A server that syncs every write (figure 7), None when 7 is not run.
        self.synced_url = synced_url
        self.runtime = runtime
        self.sizes = sizes
        self.report = report
        self.nc: Any = None
        self.js: Any = None
        # Sync callers run on this one plain thread (no event loop of its own).
        self.sync_thread = ThreadPoolExecutor(1, thread_name_prefix="bench-sync")
        # A loop private to the sync thread, for the raw baseline run from that thread.
        self.private_loop: asyncio.AbstractEventLoop | None = None
        self.private_nc: Any = None

    async def connect(self) -> None:
        self.nc = await nats.connect(self.url, name="bench-raw")
        self.js = self.nc.jetstream(timeout=10.0)

    def own_loop(self) -> asyncio.AbstractEventLoop:
        """The sync thread's private event loop (call only on the sync thread)."""
        if self.private_loop is None:
            self.private_loop = asyncio.new_event_loop()
        return self.private_loop

    async def in_sync_thread(self, fn: Callable[[], float]) -> float:
        """Run blocking ``fn`` on the plain sync thread; this loop just waits."""
        return await asyncio.get_running_loop().run_in_executor(self.sync_thread, fn)

    async def close(self) -> None:
        # Closing connections may log "disconnected"; not worth a warning here.
        logging.getLogger("aether_django.runtime").setLevel(logging.ERROR)
        if self.private_loop is not None:
            loop = self.private_loop

            def close_private() -> float:
                if self.private_nc is not None:
                    loop.run_until_complete(self.private_nc.close())
                loop.run_until_complete(self.runtime.aclose())
                loop.close()
                return 0.0

            await self.in_sync_thread(close_private)
        self.sync_thread.shutdown()
        if self.nc is not None:
            await self.nc.close()
        await self.runtime.aclose()

    def store(self, namespace: str, **config: Any) -> JetStreamEventStore:
        return JetStreamEventStore(
            namespace, runtime=self.runtime, config=StoreConfig(storage="file", **config)
        )

    async def raw_stream(self, prefix: str) -> tuple[str, str]:
        """A fresh stream configured exactly like a namespace's; return (name, subject prefix).

        The configuration is taken from the store itself, so the raw baseline
        writes to a stream with the same storage, limits, duplicate window,
        ``allow_atomic`` and ``allow_direct``.
        """
        name, template = await add_store_like_stream(self.js, unique_name(prefix), self.runtime)
        return name, subject_prefix(template)

    async def fill(self, store: JetStreamEventStore, actor_id: str, count: int) -> None:
        """Give ``actor_id`` versions 1..count, in atomic batches."""
        for first in range(1, count + 1, FILL_CHUNK):
            last = min(first + FILL_CHUNK - 1, count)
            await store.asave_events([new_event(actor_id, v) for v in range(first, last + 1)])


# --- 1. sequential saves --------------------------------------------------------


async def bench_sequential(b: Bench) -> None:
    n, sizes = b.sizes.seq_events, b.sizes
    progress(f"1. sequential saves ({n} events a round, {sizes.seq_rounds} rounds)")
    store = b.store(unique_name("bench_seq"))
    _, raw_prefix = await b.raw_stream("bench_seq_raw")
    versions = {"async": 0, "sync": 0}

    async def aether_async() -> float:
        actor, v = "acct-async", versions["async"]
        start = clock()
        for _ in range(n):
            v += 1
            await store.asave_event(new_event(actor, v))
        elapsed = clock() - start
        versions["async"] = v
        return n / elapsed

    def sync_round() -> float:
        actor, v = "acct-sync", versions["sync"]
        start = clock()
        for _ in range(n):
            v += 1
            store.save_event(new_event(actor, v))
        elapsed = clock() - start
        versions["sync"] = v
        return n / elapsed

    raw_js = RawActor(b.nc, f"{raw_prefix}.acct-js", "acct-js")
    raw_req = RawActor(b.nc, f"{raw_prefix}.acct-req", "acct-req")
    thread_raw: list[RawActor] = []

    def raw_thread_round() -> float:
        # Raw nats-py as sync code would have to use it: the plain thread runs
        # its own loop (with its own connection) for the duration of the round.
        loop = b.own_loop()
        if not thread_raw:
            b.private_nc = loop.run_until_complete(nats.connect(b.url, name="bench-raw-sync"))
            thread_raw.append(RawActor(b.private_nc, f"{raw_prefix}.acct-thr", "acct-thr"))
        actor = thread_raw[0]

        async def run() -> None:
            for _ in range(n):
                await actor.request()

        start = clock()
        loop.run_until_complete(run())
        return n / (clock() - start)

    def raw_round(op: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            start = clock()
            for _ in range(n):
                await op()
            return n / (clock() - start)

        return run

    async def noop() -> None:
        return None

    def hop_round() -> float:
        start = clock()
        for _ in range(n):
            b.runtime.run(noop())
        return (clock() - start) / n * 1000

    res = await interleaved(
        {
            "aether_async": aether_async,
            "aether_sync": lambda: b.in_sync_thread(sync_round),
            "raw_js": raw_round(raw_js.publish),
            "raw_req": raw_round(raw_req.request),
            "hop": lambda: b.in_sync_thread(hop_round),
            "raw_thread": lambda: b.in_sync_thread(raw_thread_round),
        },
        rounds=sizes.seq_rounds,
        warmup=sizes.warmup,
    )
    # The baseline makes the same calls as the store (nc.request, JSON ack);
    # 1e shows js.publish against it, so both ratios can be read off the table.
    label = "raw nc.request + JSON ack"
    raw_samples = res["raw_req"]
    report = b.report
    report.compare(
        "1a",
        "save one event, async `asave_event`",
        "events/s",
        res["aether_async"],
        raw_samples,
        baseline_label=label,
        target="≥ 0.90x raw",
        min_ratio=0.90,
    )
    report.compare(
        "1b",
        "save one event, sync `save_event` from a plain thread",
        "events/s",
        res["aether_sync"],
        raw_samples,
        baseline_label=label,
        target="≥ 0.75x raw",
        min_ratio=0.75,
    )
    thread_label = "raw nc.request on the sync thread's own loop"
    report.compare(
        "1c",
        "  sync `save_event` against raw run from the same plain thread",
        "events/s",
        res["aether_sync"],
        res["raw_thread"],
        baseline_label=thread_label,
    )
    report.compare(
        "1d",
        "raw nats-py on a plain thread's own loop vs on the main loop",
        "events/s",
        res["raw_thread"],
        raw_samples,
        baseline_label=label,
    )
    report.compare(
        "1e",
        "raw nats-py alone: `js.publish` (parses a PubAck) vs `nc.request`",
        "events/s",
        res["raw_js"],
        res["raw_req"],
        baseline_label="nc.request",
    )
    report.add(
        "1f",
        "sync bridge alone: `runtime.run(<empty coroutine>)` per call",
        median(res["hop"]),
        "ms",
        higher_is_better=False,
        baseline_label="no NATS involved",
        samples=res["hop"],
    )


# --- 2. concurrent saves across 100 actors -----------------------------------------


async def bench_concurrent(b: Bench) -> None:
    sizes = b.sizes
    actors, per = sizes.actors, sizes.per_actor
    total = actors * per
    progress(f"2. concurrent saves ({actors} actors x {per} events a round)")
    store = b.store(unique_name("bench_conc"))
    _, raw_prefix = await b.raw_stream("bench_conc_raw")
    versions = [0] * actors
    raws = [RawActor(b.nc, f"{raw_prefix}.acct-{i}", f"acct-{i}") for i in range(actors)]

    async def one_actor(i: int) -> None:
        actor, v = f"acct-{i}", versions[i]
        for _ in range(per):
            v += 1
            await store.asave_event(new_event(actor, v))
        versions[i] = v

    async def aether() -> float:
        start = clock()
        await asyncio.gather(*(one_actor(i) for i in range(actors)))
        return total / (clock() - start)

    async def one_raw(raw: RawActor) -> None:
        for _ in range(per):
            await raw.publish()

    async def raw() -> float:
        start = clock()
        await asyncio.gather(*(one_raw(r) for r in raws))
        return total / (clock() - start)

    res = await interleaved({"aether": aether, "raw": raw}, rounds=sizes.rounds, warmup=1)
    b.report.compare(
        "2",
        f"saves across {actors} actors, {actors} concurrent tasks",
        "events/s",
        res["aether"],
        res["raw"],
        baseline_label="raw js.publish",
    )


# --- 3. atomic batches ---------------------------------------------------------


async def bench_batches(b: Bench) -> None:
    sizes = b.sizes
    n, size = sizes.batches, sizes.batch_size
    progress(f"3. atomic batches ({n} batches of {size} a round)")
    store = b.store(unique_name("bench_batch"))
    _, raw_prefix = await b.raw_stream("bench_batch_raw")
    raw_actor = RawActor(b.nc, f"{raw_prefix}.acct-raw", "acct-raw")
    state = {"v": 0}

    async def aether() -> float:
        actor, v = "acct-batch", state["v"]
        start = clock()
        for _ in range(n):
            await store.asave_events([new_event(actor, v + i) for i in range(1, size + 1)])
            v += size
        elapsed = clock() - start
        state["v"] = v
        return n / elapsed

    async def raw() -> float:
        start = clock()
        for _ in range(n):
            await raw_actor.batch(size)
        return n / (clock() - start)

    res = await interleaved({"aether": aether, "raw": raw}, rounds=sizes.rounds, warmup=1)
    b.report.compare(
        "3",
        f"atomic batch of {size} events, `asave_events`",
        "batches/s",
        res["aether"],
        res["raw"],
        baseline_label="raw atomic batch publish",
    )


# --- 4. replay --------------------------------------------------------------------


async def raw_ordered_replay(js: Any, stream: str, subject: str) -> list[dict[str, Any]]:
    """Read every message of ``subject`` with an ordered push consumer; decode each."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    docs: list[dict[str, Any]] = []

    async def on_msg(msg: Any) -> None:
        docs.append(json.loads(msg.data))
        if msg.metadata.num_pending == 0 and not done.done():
            done.set_result(None)

    sub = await js.subscribe(
        subject,
        stream=stream,
        cb=on_msg,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    try:
        await asyncio.wait_for(done, 30)
    finally:
        await sub.unsubscribe()
    return docs


async def raw_pull_replay(js: Any, stream: str, subject: str) -> list[dict[str, Any]]:
    """Read every message of ``subject`` with an ephemeral pull consumer; decode each."""
    psub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=5.0,
        ),
    )
    docs: list[dict[str, Any]] = []
    try:
        while True:
            msgs = await psub.fetch(batch=1000, timeout=5)
            docs.extend(json.loads(msg.data) for msg in msgs)
            if msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await psub.unsubscribe()
    return docs


async def bench_replay(b: Bench) -> None:
    sizes = b.sizes
    count, tail = sizes.replay_events, sizes.tail_events
    progress(f"4. replay of a {count}-event actor (filling it first)")
    store = b.store(unique_name("bench_replay"))
    actor, tail_actor = "acct-big", "acct-big-tail"
    await b.fill(store, actor, count)
    await b.fill(store, tail_actor, count)
    await store.asave_snapshot(ActorSnapshot(actor_id=actor, version=count, state={"n": count}))
    await store.asave_snapshot(
        ActorSnapshot(actor_id=tail_actor, version=count - tail, state={"n": count - tail})
    )
    subject = store.subject_for(actor)
    progress(f"4. replaying ({sizes.replay_rounds} rounds)")

    async def full() -> float:
        start = clock()
        events = await store.aget_events(actor)
        elapsed = clock() - start
        assert len(events) == count, len(events)
        return elapsed * 1000

    def from_snapshot(actor_id: str, expect: int, loads: int) -> Callable[[], Awaitable[float]]:
        async def load() -> float:
            start = clock()
            for _ in range(loads):
                snapshot = await store.aget_latest_snapshot(actor_id)
                assert snapshot is not None
                events = await store.aget_events(actor_id, snapshot.version + 1)
            elapsed = clock() - start
            assert len(events) == expect, len(events)
            return elapsed * 1000 / loads

        return load

    def raw(reader: Callable[..., Awaitable[list[Any]]]) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            start = clock()
            docs = await reader(b.js, store.stream_name, subject)
            elapsed = clock() - start
            assert len(docs) == count, len(docs)
            return elapsed * 1000

        return run

    res = await interleaved(
        {
            "full": full,
            "snapshot": from_snapshot(actor, 0, sizes.snapshot_loads),
            "snapshot_tail": from_snapshot(tail_actor, tail, sizes.tail_loads),
            "raw_ordered": raw(raw_ordered_replay),
            "raw_pull": raw(raw_pull_replay),
        },
        rounds=sizes.replay_rounds,
        warmup=1,
    )
    report = b.report
    report.compare(
        "4a",
        f"full replay of {count:,} events, `aget_events`",
        "ms",
        res["full"],
        res["raw_ordered"],
        higher_is_better=False,
        baseline_label="raw ordered push consumer + json.loads",
    )
    report.compare(
        "4b",
        "  same, against a raw pull consumer",
        "ms",
        res["full"],
        res["raw_pull"],
        higher_is_better=False,
        baseline_label="raw pull consumer (fetch 1000) + json.loads",
    )
    report.compare(
        "4c",
        f"load from snapshot at v{count:,} (+ `aget_events(v+1)`)",
        "ms",
        res["snapshot"],
        res["full"],
        higher_is_better=False,
        baseline_label="full replay",
        target="≥ 10x faster than full replay",
        min_ratio=10.0,
    )
    report.compare(
        "4d",
        f"load from snapshot at v{count - tail:,} + {tail} newer events",
        "ms",
        res["snapshot_tail"],
        res["full"],
        higher_is_better=False,
        baseline_label="full replay",
    )


# --- 5. conflict detection --------------------------------------------------------


async def bench_conflict(b: Bench) -> None:
    tries = b.sizes.conflict_tries
    progress(f"5. conflict detection ({tries} tries each)")
    namespace = unique_name("bench_conflict")
    warm = b.store(namespace)
    cold = b.store(namespace, head_cache_size=0)  # never remembers a head
    actor = "acct-conflict"
    await b.fill(warm, actor, 10)
    _, raw_prefix = await b.raw_stream("bench_conflict_raw")
    raw_actor = RawActor(b.nc, f"{raw_prefix}.{actor}", actor)
    for _ in range(10):
        await raw_actor.publish()
    stale_seq = str(raw_actor.seq - 1)

    async def aether_try(store: JetStreamEventStore) -> float:
        ev = new_event(actor, 5)
        start = clock()
        try:
            await store.asave_event(ev)
        except VersionConflictError:
            return clock() - start
        raise AssertionError("a stale save was accepted")

    async def raw_try() -> float:
        event_id, payload = raw_payload(actor, 5)
        start = clock()
        try:
            await raw_actor.js.publish(
                raw_actor.subject,
                payload,
                headers={HDR_MSG_ID: event_id, HDR_EXPECTED: stale_seq},
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code != ERR_WRONG_LAST_SEQUENCE:
                raise
            return clock() - start
        raise AssertionError("a stale raw publish was accepted")

    # The head cache is warm after one save of the warm store's own.
    await warm.asave_event(new_event(actor, 11))
    times: dict[str, list[float]] = {"warm": [], "cold": [], "raw": []}
    warmup = max(tries // 10, 20)
    for i in range(warmup + tries):
        # Interleaved try by try, rotating which goes first.
        order = [("warm", warm), ("cold", cold), ("raw", None)]
        shift = i % 3
        for name, store in order[shift:] + order[:shift]:
            elapsed = await (aether_try(store) if store is not None else raw_try())
            if i >= warmup:
                times[name].append(elapsed * 1000)
    assert len(warm._reads.heads) == 1 and len(cold._reads.heads) == 0
    raw_p50, raw_p99 = percentile(times["raw"], 50), percentile(times["raw"], 99)
    report = b.report
    for label, name in (("warm", "warm"), ("cold", "cold")):
        p50, p99 = percentile(times[name], 50), percentile(times[name], 99)
        report.add(
            f"5{'a' if name == 'warm' else 'b'}",
            f"conflict detected, {label} head cache: p50",
            p50,
            "ms",
            higher_is_better=False,
            baseline=raw_p50,
            baseline_label="raw stale publish → error",
        )
        report.add(
            f"5{'a' if name == 'warm' else 'b'}",
            f"conflict detected, {label} head cache: p99",
            p99,
            "ms",
            higher_is_better=False,
            baseline=raw_p99,
            baseline_label="raw stale publish → error",
            target="p99 < 1 ms",
            max_value=1.0,
        )

    await bench_racing_conflict(b)


async def bench_racing_conflict(b: Bench) -> None:
    """5c: the conflict two racing writers meet, which only the server can detect.

    Each try, writer A saves the next version; writer B, whose cached head is one
    version behind, saves the same version. B publishes with the stale expected
    sequence, the server refuses it, B reads the actor's head again and raises
    VersionConflictError: two round trips, timed from B's call to the error.
    """
    tries = b.sizes.conflict_tries
    progress(f"5c. racing conflict ({tries} tries each)")
    namespace = unique_name("bench_race")
    writer_a, writer_b = b.store(namespace), b.store(namespace)
    actor = "acct-race"
    await writer_a.asave_event(new_event(actor, 1))
    assert await writer_b.aget_latest_version(actor) == 1  # B caches version 1

    stream, raw_prefix = await b.raw_stream("bench_race_raw")
    raw_a = RawActor(b.nc, f"{raw_prefix}.{actor}", actor)
    await raw_a.request()
    raw_b_seq = raw_a.seq  # raw writer B's view of the subject's last sequence
    direct_get = f"$JS.API.DIRECT.GET.{stream}.{raw_a.subject}"

    aether_version = 1

    async def aether_try() -> float:
        nonlocal aether_version
        aether_version += 1
        await writer_a.asave_event(new_event(actor, aether_version))
        start = clock()
        try:
            await writer_b.asave_event(new_event(actor, aether_version))
        except VersionConflictError as exc:
            elapsed = clock() - start
            assert exc.current_version == aether_version
            return elapsed
        raise AssertionError("a racing save on a stale version was accepted")

    async def raw_try() -> float:
        nonlocal raw_b_seq
        await raw_a.request()
        event_id, payload = raw_payload(actor, raw_a.version)
        start = clock()
        reply = await b.nc.request(
            raw_a.subject,
            payload,
            timeout=5.0,
            headers={HDR_MSG_ID: event_id, HDR_EXPECTED: str(raw_b_seq)},
        )
        error = json.loads(reply.data).get("error") or {}
        if error.get("err_code") != ERR_WRONG_LAST_SEQUENCE:
            raise AssertionError(f"a racing raw publish was not refused: {reply.data!r}")
        last = await b.nc.request(direct_get, b"", timeout=5.0)
        current = json.loads(last.data)["version"]
        elapsed = clock() - start
        assert current == raw_a.version
        raw_b_seq = int(last.headers["Nats-Sequence"])
        return elapsed

    times: dict[str, list[float]] = {"aether": [], "raw": []}
    warmup = max(tries // 10, 20)
    for i in range(warmup + tries):
        # Interleaved try by try, alternating which goes first.
        pairs = [("aether", aether_try), ("raw", raw_try)]
        for name, attempt in pairs if i % 2 == 0 else pairs[::-1]:
            elapsed = await attempt()
            if i >= warmup:
                times[name].append(elapsed * 1000)
    for pct in (50, 99):
        goal: dict[str, Any] = {"target": "p99 < 1 ms", "max_value": 1.0} if pct == 99 else {}
        b.report.add(
            "5c",
            f"conflict detected, racing writer (refused save, head read): p{pct}",
            percentile(times["aether"], pct),
            "ms",
            higher_is_better=False,
            baseline=percentile(times["raw"], pct),
            baseline_label="raw stale publish → error, then read the current",
            **goal,
        )


# --- 6. beside the eventsourcing library on SQLite --------------------------------

if Application is not None:

    class BenchAccount(Aggregate):
        """The eventsourcing side's aggregate: one event type, like the store's events."""

        def __init__(self) -> None:
            self.balance = 0

        @event(EVENT_TYPE)
        def deposit(self, amount: int, currency: str, reference: str) -> None:
            self.balance += amount

    class BenchApp(Application[uuid.UUID]):
        """A plain eventsourcing application (no snapshotting, no cache)."""


async def bench_eventsourcing(b: Bench) -> None:
    if Application is None:
        progress("6. skipped: the eventsourcing library is not installed")
        return
    sizes = b.sizes
    n, count = sizes.es_events, sizes.replay_events
    progress(f"6. eventsourcing on SQLite ({n} saves a round, replay of {count})")
    tmp = tempfile.TemporaryDirectory(prefix="aether-bench-es-")
    try:
        db = os.path.join(tmp.name, "events.sqlite")
        app = BenchApp(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": db})
        account = BenchAccount()
        app.save(account)
        big = BenchAccount()
        for _ in range(count - 1):  # creation is the first of its events
            big.deposit(**DATA)
        app.save(big)
        store = b.store(unique_name("bench_es"))
        actor, big_actor = "acct-seq", "acct-big"
        await b.fill(store, big_actor, count)
        state = {"v": 0}

        def es_save_round() -> float:
            start = clock()
            for _ in range(n):
                account.deposit(**DATA)
                app.save(account)
            return n / (clock() - start)

        def aether_save_round() -> float:
            v = state["v"]
            start = clock()
            for _ in range(n):
                v += 1
                store.save_event(new_event(actor, v))
            state["v"] = v
            return n / (clock() - start)

        def es_replay_round() -> float:
            start = clock()
            got: BenchAccount = app.repository.get(big.id)
            elapsed = clock() - start
            assert got.version == count, got.version
            return elapsed * 1000

        def es_events_round() -> float:
            start = clock()
            events = list(app.events.get(big.id))
            elapsed = clock() - start
            assert len(events) == count, len(events)
            return elapsed * 1000

        def aether_replay_round() -> float:
            start = clock()
            events = store.get_events(big_actor)
            elapsed = clock() - start
            assert len(events) == count, len(events)
            return elapsed * 1000

        def threaded(fn: Callable[[], float]) -> Callable[[], Awaitable[float]]:
            return lambda: b.in_sync_thread(fn)

        saves = await interleaved(
            {"es": threaded(es_save_round), "aether": threaded(aether_save_round)},
            rounds=sizes.rounds,
            warmup=1,
        )
        replays = await interleaved(
            {
                "es": threaded(es_replay_round),
                "es_events": threaded(es_events_round),
                "aether": threaded(aether_replay_round),
            },
            rounds=sizes.replay_rounds,
            warmup=1,
        )
        app.close()
    finally:
        tmp.cleanup()
    report = b.report
    report.compare(
        "6a",
        "save one event, sync `save_event` vs eventsourcing `app.save`",
        "events/s",
        saves["aether"],
        saves["es"],
        baseline_label="eventsourcing, SQLite file",
    )
    report.compare(
        "6b",
        f"replay {count:,} events, sync `get_events` vs `repository.get`",
        "ms",
        replays["aether"],
        replays["es"],
        higher_is_better=False,
        baseline_label="eventsourcing aggregate rebuilt, SQLite",
    )
    report.compare(
        "6c",
        f"replay {count:,} events, sync `get_events` vs `app.events.get`",
        "ms",
        replays["aether"],
        replays["es_events"],
        higher_is_better=False,
        baseline_label="eventsourcing events only, SQLite",
    )


# --- 7. syncing every write -------------------------------------------------------


async def bench_sync_always(b: Bench) -> None:
    sizes = b.sizes
    n, actors, per = sizes.seq_events, sizes.actors, sizes.per_actor
    progress(f"7. saves with sync_interval: always ({n} sequential, {actors} x {per} concurrent)")
    assert b.synced_url is not None
    synced_runtime = Runtime(b.synced_url, name="aether-bench-synced")
    try:
        stores = {
            "default": b.store(unique_name("bench_sync_default")),
            "always": JetStreamEventStore(
                unique_name("bench_sync_always"),
                runtime=synced_runtime,
                config=StoreConfig(storage="file"),
            ),
        }
        versions: dict[tuple[str, int], int] = {}

        def sequential(kind: str) -> Callable[[], Awaitable[float]]:
            async def run() -> float:
                store, v = stores[kind], versions.get((kind, -1), 0)
                start = clock()
                for _ in range(n):
                    v += 1
                    await store.asave_event(new_event("acct-seq", v))
                versions[(kind, -1)] = v
                return n / (clock() - start)

            return run

        def concurrent(kind: str) -> Callable[[], Awaitable[float]]:
            async def one_actor(i: int) -> None:
                v = versions.get((kind, i), 0)
                for _ in range(per):
                    v += 1
                    await stores[kind].asave_event(new_event(f"acct-{i}", v))
                versions[(kind, i)] = v

            async def run() -> float:
                start = clock()
                await asyncio.gather(*(one_actor(i) for i in range(actors)))
                return actors * per / (clock() - start)

            return run

        res = await interleaved(
            {
                "seq_default": sequential("default"),
                "seq_always": sequential("always"),
                "conc_default": concurrent("default"),
                "conc_always": concurrent("always"),
            },
            rounds=sizes.rounds,
            warmup=sizes.warmup,
        )
    finally:
        await synced_runtime.aclose()
    label = "default server: a sync every 2 min"
    b.report.compare(
        "7a",
        "save one event, async, on a server with `sync_interval: always`",
        "events/s",
        res["seq_always"],
        res["seq_default"],
        baseline_label=label,
    )
    b.report.compare(
        "7b",
        f"saves across {actors} actors, {actors} concurrent tasks, `sync_interval: always`",
        "events/s",
        res["conc_always"],
        res["conc_default"],
        baseline_label=label,
    )


# --- 8. pages of the actor list -------------------------------------------------------

#: Actors per page, as the API's default ``limit``.
PAGE = 100


async def bench_actor_pages(b: Bench) -> None:
    """Page 1 and page 1,000 (or the last page of a quick run) of a namespace's actor
    list, as the API's actor list reads them: ``aget_actor_page`` then
    ``aget_latest_versions`` of the page. "cold" forgets the listing window kept
    between calls (the first page after actors came or went, or a new process);
    "warm" keeps it (walking the pages)."""
    from aether_django.store.jetstream import listing

    count = b.sizes.page_actors
    progress(f"8. actor-list pages ({count:,} actors, {PAGE} a page)")
    store = b.store(unique_name("bench_pages"))
    await store.asave_event(new_event("a-seed", 1))
    ids = sorted(f"actor-{i:07d}" for i in range(count - 1))
    for actor_id in ids:  # plain publishes, acknowledged by the flush below
        payload = encode_event(new_event(actor_id, 1))
        await b.nc.publish(store.subject_for(actor_id), payload, headers={"Aether-Version": "1"})
    await b.nc.flush()
    for _ in range(600):  # the server has stored them all within a minute
        info = await store.aget_info()
        if info is not None and info.actors >= count:
            break
        await asyncio.sleep(0.1)
    tokens = sorted(["a-seed", *ids])
    last_page = min(1000, count // PAGE)
    cursors = {
        1: (None, 0),
        last_page: (tokens[(last_page - 1) * PAGE - 1], (last_page - 1) * PAGE - 1),
    }

    created = 0

    async def page(number: int, *, mode: str) -> float:
        nonlocal created
        after, at = cursors[number]
        if mode == "cold":
            listing.forget_windows()
        elif mode == "churn":  # one actor more since the last page (sorted after all)
            await store.asave_event(new_event(f"zz-{created:06d}", 1))
            created += 1
        start = clock()
        got = await store.aget_actor_page(after, PAGE, at=at)
        await store.aget_latest_versions(got.actor_ids)
        elapsed = (clock() - start) * 1000
        assert got.actor_ids == tokens[(number - 1) * PAGE : number * PAGE], number
        return elapsed

    # What every page cost before pages were read by rank: the whole listing, sorted.
    whole = []
    for _ in range(3):
        start = clock()
        await store.aget_actor_ids()
        whole.append((clock() - start) * 1000)
    b.report.add(
        "8", f"the whole actor list, `aget_actor_ids` ({count:,} actors)", median(whole), "ms"
    )

    labels = {
        "cold": "cold",
        "warm": "warm",
        "churn": "warm, one actor created before each page",
    }
    for mode, label in labels.items():
        samples: dict[int, list[float]] = {1: [], last_page: []}
        for _ in range(b.sizes.replay_rounds + 1):  # the first round is warm-up
            for number in samples:
                samples[number].append(await page(number, mode=mode))
        first, later = median(samples[1][1:]), median(samples[last_page][1:])
        ratio = max(first, later) / min(first, later)
        b.report.add(
            "8",
            f"actor-list page {last_page:,} vs page 1, {label} ({count:,} actors)",
            later,
            "ms",
            baseline=first,
            baseline_label="page 1",
            higher_is_better=False,
            target="within 2x of page 1",
        ).met = ratio <= 2


# --- main ---------------------------------------------------------------------------


SECTIONS: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "1": bench_sequential,
    "2": bench_concurrent,
    "3": bench_batches,
    "4": bench_replay,
    "5": bench_conflict,
    "6": bench_eventsourcing,
    "7": bench_sync_always,
    "8": bench_actor_pages,
}


async def run_all(b: Bench, only: list[str]) -> None:
    await b.connect()
    try:
        for key, section in SECTIONS.items():
            if only and key not in only:
                continue
            started = clock()
            await section(b)
            progress(f"{key}. done in {clock() - started:.1f} s")
    finally:
        await b.close()


def main(argv: list[str] | None = None) -> int:
    parser = base_parser((__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--only", default="", help="comma-separated figures to run, e.g. 1,4 (default: all)"
    )
    args = parser.parse_args(argv)
    only = parse_only(args)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds, seq_rounds=args.rounds)
    report = Report("aether_django event store vs baselines")
    started = clock()
    # Figure 7's server syncs every write; the main one keeps JetStream's default.
    with NatsServer() as server, NatsServer(sync_interval="always") as synced:
        nats_meta(report, server, args.quick)
        report.meta.update(
            {
                "storage": "file (temporary directory); figure 7 also on a second "
                "server with sync_interval: always",
                "rounds": (
                    f"{sizes.seq_rounds} for figure 1, {sizes.replay_rounds} for replays, "
                    f"{sizes.rounds} otherwise, after warm-up; values are medians, ratios "
                    "medians of per-round ratios"
                ),
            }
        )
        runtime = Runtime(server.url, name="aether-bench")
        try:
            bench = Bench(server.url, runtime, sizes, report, synced_url=synced.url)
            asyncio.run(run_all(bench, only))
        finally:
            runtime.close()
    finish(report, started, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
