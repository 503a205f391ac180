"""Event-bus benchmark: delivery latency in one process and across processes, and draining.

Run from the repository root::

    .venv/bin/python -m bench.bus            # full run, about 80 s at load average 4
    .venv/bin/python -m bench.bus --quick    # smoke test, a few seconds

One run starts its own nats-server (file storage in a temporary directory, free
ports) and measures, each figure beside a baseline doing the same work in the
same run:

1. local delivery latency, p50 and p99: ``EventBus.publish`` to a subscriber
   task iterating its subscription, against an ``asyncio.Queue`` handing the
   same event to a waiting task; once with the publisher on the subscriber's
   loop, once from a plain thread (as a Django view would publish);
2. cross-process delivery latency, p50 and p99, from the call that saves an
   event to its receipt by a subscriber in another OS process
   (``NATSEventBus.asubscribe(namespace)``), against raw nats-py (a publish with
   the expected-sequence header, received by an ordered push consumer in the same
   subscriber process). Both processes read the same system clock
   (``CLOCK_MONOTONIC``); events are sent one at a time, each after the previous
   one arrived, so the figure is latency, not queueing;
3. draining 100 000 stored events (1 000 actors x 100 events, saved one at a
   time by the store, so each message is exactly what a single save writes):
   ``asubscribe(namespace, start="all")`` counting deliveries until all
   arrived, against a raw nats-py ordered push consumer on the same stream
   decoding each message's JSON; and (3b) against the same raw consumer also
   reading ``msg.metadata`` for the stream sequence, which a subscriber needs
   to resume and which the bus reads for every delivery.

Targets: local p99 < 1 ms, cross-process p99 < 10 ms, drain at least 0.8x raw
nats-py. They are printed as met or not met, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import nats
from nats.js.api import DeliverPolicy

from aether_django.bus.local import LocalEventBus
from aether_django.bus.nats import NATSEventBus
from aether_django.events import Event
from aether_django.runtime import Runtime
from aether_django.store.jetstream import JetStreamEventStore
from aether_django.testing import NatsServer

from ._setup import (
    HDR_EXPECTED,
    HDR_MSG_ID,
    ROOT,
    add_store_like_stream,
    finish,
    nats_meta,
    new_event,
    parse_only,
    raw_payload,
)
from .common import (
    Report,
    base_parser,
    clock,
    interleaved,
    median,
    percentile,
    progress,
)


def now() -> float:
    """The clock both processes of figure 2 read: CLOCK_MONOTONIC is one clock per machine."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does; ``--quick`` shrinks everything."""

    rounds: int
    local_per_round: int
    remote_events: int
    drain_events: int
    drain_actors: int
    drain_rounds: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            rounds=5,
            local_per_round=4000,
            remote_events=2000,
            drain_events=100_000,
            drain_actors=1000,
            drain_rounds=4,
        )

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            rounds=2,
            local_per_round=500,
            remote_events=200,
            drain_events=10_000,
            drain_actors=100,
            drain_rounds=2,
        )


def latency_rows(
    report: Report,
    section: str,
    figure: str,
    samples: list[float],
    baseline: list[float],
    baseline_label: str,
    target: str,
    limit: float,
) -> None:
    """Two rows, p50 and p99 (in ms), the p99 one carrying the target."""
    for pct in (50, 99):
        goal: dict[str, Any] = {"target": target, "max_value": limit} if pct == 99 else {}
        report.add(
            section,
            f"{figure}: p{pct}",
            percentile(samples, pct),
            "ms",
            higher_is_better=False,
            baseline=percentile(baseline, pct),
            baseline_label=baseline_label,
            **goal,
        )


# --- 1. local delivery ------------------------------------------------------------------


async def bench_local(report: Report, sizes: Sizes) -> None:
    n = sizes.local_per_round
    progress(f"1. local delivery ({sizes.rounds} rounds of {n} events per variant)")
    loop = asyncio.get_running_loop()
    thread = ThreadPoolExecutor(1, thread_name_prefix="bench-publisher")
    samples: dict[str, list[float]] = {"bus": [], "queue": [], "bus_thread": [], "queue_thread": []}
    namespace = "bench-local"
    events = [new_event("acct-local", v) for v in range(1, n + 1)]

    async def bus_round(from_thread: bool) -> float:
        bus = LocalEventBus()
        subscription = bus.subscribe(namespace)
        received: list[float] = [0.0] * (n + 1)
        waiter: dict[str, Any] = {}

        async def subscriber() -> None:
            async for delivery in subscription:
                received[delivery.event.version] = clock()
                signal = waiter.pop("signal", None)
                if signal is not None:
                    signal()

        task = loop.create_task(subscriber())
        await asyncio.sleep(0)  # the subscriber is waiting before the first publish
        sent: list[float] = [0.0] * (n + 1)
        if from_thread:

            def publish_all() -> None:
                done = threading.Event()
                for ev in events:
                    done.clear()
                    waiter["signal"] = done.set
                    sent[ev.version] = clock()
                    bus.publish(namespace, ev)
                    done.wait(5)

            await loop.run_in_executor(thread, publish_all)
        else:
            for ev in events:
                future = loop.create_future()
                waiter["signal"] = lambda f=future: f.set_result(None)
                sent[ev.version] = clock()
                bus.publish(namespace, ev)
                await future
        subscription.close()
        await task
        lat = [(received[v] - sent[v]) * 1000 for v in range(1, n + 1)]
        samples["bus_thread" if from_thread else "bus"].extend(lat)
        return median(lat)

    async def queue_round(from_thread: bool) -> float:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        received: list[float] = [0.0] * (n + 1)
        waiter: dict[str, Any] = {}

        async def consumer() -> None:
            while (ev := await queue.get()) is not None:
                received[ev.version] = clock()
                signal = waiter.pop("signal", None)
                if signal is not None:
                    signal()

        task = loop.create_task(consumer())
        await asyncio.sleep(0)
        sent: list[float] = [0.0] * (n + 1)
        if from_thread:

            def publish_all() -> None:
                done = threading.Event()
                for ev in events:
                    done.clear()
                    waiter["signal"] = done.set
                    sent[ev.version] = clock()
                    loop.call_soon_threadsafe(queue.put_nowait, ev)
                    done.wait(5)

            await loop.run_in_executor(thread, publish_all)
        else:
            for ev in events:
                future = loop.create_future()
                waiter["signal"] = lambda f=future: f.set_result(None)
                sent[ev.version] = clock()
                queue.put_nowait(ev)
                await future
        queue.put_nowait(None)
        await task
        lat = [(received[v] - sent[v]) * 1000 for v in range(1, n + 1)]
        samples["queue_thread" if from_thread else "queue"].extend(lat)
        return median(lat)

    try:
        await interleaved(
            {
                "bus": lambda: bus_round(False),
                "queue": lambda: queue_round(False),
                "bus_thread": lambda: bus_round(True),
                "queue_thread": lambda: queue_round(True),
            },
            rounds=sizes.rounds,
            warmup=1,
        )
    finally:
        thread.shutdown()
    # The warm-up round's samples are dropped: keep the measured rounds' only.
    for name, values in samples.items():
        samples[name] = values[n:]
    latency_rows(
        report,
        "1a",
        "local `EventBus.publish` → async subscriber, same loop",
        samples["bus"],
        samples["queue"],
        "asyncio.Queue to a waiting task",
        "p99 < 1 ms",
        1.0,
    )
    latency_rows(
        report,
        "1b",
        "local `EventBus.publish` from a plain thread → async subscriber",
        samples["bus_thread"],
        samples["queue_thread"],
        "call_soon_threadsafe(queue.put_nowait)",
        "p99 < 1 ms",
        1.0,
    )


# --- 2. cross-process delivery ----------------------------------------------------------


async def serve_subscriber(url: str, namespace: str, raw_stream: str, raw_filter: str) -> None:
    """The subscriber process: print one line per receipt, ``A|R version time``."""
    runtime = Runtime(url, name="bench-subscriber")
    bus = NATSEventBus(runtime=runtime)
    subscription = await bus.asubscribe(namespace, start="new")
    nc = await nats.connect(url, name="bench-subscriber-raw")
    js = nc.jetstream(timeout=10.0)
    out = sys.stdout

    async def on_raw(msg: Any) -> None:
        doc = json.loads(msg.data)
        t = now()
        out.write(f"R {doc['version']} {t!r}\n")
        out.flush()

    raw_sub = await js.subscribe(
        raw_filter,
        stream=raw_stream,
        cb=on_raw,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.NEW,
    )

    async def pump() -> None:
        async for delivery in subscription:
            t = now()
            out.write(f"A {delivery.event.version} {t!r}\n")
            out.flush()

    task = asyncio.create_task(pump())
    out.write("ready\n")
    out.flush()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()  # until the benchmark closes our stdin
    await subscription.aclose()
    task.cancel()
    await raw_sub.unsubscribe()
    await nc.close()
    await runtime.aclose()
    runtime.close()


async def bench_remote(report: Report, sizes: Sizes, url: str, runtime: Runtime) -> None:
    n = sizes.remote_events
    progress(f"2. cross-process delivery ({n} events each, one at a time)")
    namespace = "bench-latency"
    store = JetStreamEventStore(namespace, runtime=runtime)
    actor = "acct-latency"
    await store.asave_event(new_event(actor, 1))  # the stream exists before subscribing
    nc = await nats.connect(url, name="bench-raw")
    js = nc.jetstream(timeout=10.0)
    raw_stream, raw_template = await add_store_like_stream(js, "raw-latency", runtime)
    raw_subject = raw_template.subject_for(actor)
    raw_filter = raw_subject.rsplit(".", 1)[0] + ".*"

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bus",
        "--serve-subscriber",
        url,
        namespace,
        raw_stream,
        raw_filter,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    waiting: dict[tuple[str, int], asyncio.Future[float]] = {}
    ready = asyncio.get_running_loop().create_future()

    async def read_lines() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            parts = line.decode().split()
            if parts == ["ready"]:
                ready.set_result(None)
                continue
            future = waiting.pop((parts[0], int(parts[1])), None)
            if future is not None and not future.done():
                future.set_result(float(parts[2]))

    reader = asyncio.create_task(read_lines())
    latencies: dict[str, list[float]] = {"A": [], "R": []}
    versions = {"A": 1, "R": 0}
    raw_seq = 0

    async def one(kind: str) -> float:
        nonlocal raw_seq
        versions[kind] += 1
        version = versions[kind]
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        waiting[(kind, version)] = future
        if kind == "A":
            ev = new_event(actor, version)
            start = now()
            await store.asave_event(ev)
        else:
            event_id, payload = raw_payload(actor, version)
            start = now()
            ack = await js.publish(
                raw_subject, payload, headers={HDR_MSG_ID: event_id, HDR_EXPECTED: str(raw_seq)}
            )
            raw_seq = ack.seq
        received = await asyncio.wait_for(future, 10)
        return (received - start) * 1000

    try:
        await asyncio.wait_for(ready, 30)
        warmup = max(n // 10, 20)
        for i in range(warmup + n):
            order = ("A", "R") if i % 2 == 0 else ("R", "A")
            for kind in order:
                latency = await one(kind)
                if i >= warmup:
                    latencies[kind].append(latency)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        reader.cancel()
        await nc.close()
    latency_rows(
        report,
        "2",
        "save → receipt in another process (`asubscribe`)",
        latencies["A"],
        latencies["R"],
        "raw js.publish → ordered push consumer",
        "p99 < 10 ms",
        10.0,
    )


# --- 3. draining stored events ----------------------------------------------------------


async def fill(store: JetStreamEventStore, count: int, actors: int) -> None:
    """``count`` events over ``actors`` actors, saved one at a time by the store itself.

    So the stream holds exactly what single saves write (headers included);
    one task per actor keeps the server busy.
    """
    per = count // actors

    async def one(a: int) -> None:
        actor = f"acct-{a}"
        for version in range(1, per + 1):
            await store.asave_event(new_event(actor, version))

    await asyncio.gather(*(one(a) for a in range(actors)))


async def bench_drain(report: Report, sizes: Sizes, url: str, runtime: Runtime) -> None:
    count, actors = sizes.drain_events, sizes.drain_actors
    namespace = "bench-drain"
    store = JetStreamEventStore(namespace, runtime=runtime)
    nc = await nats.connect(url, name="bench-raw")
    js = nc.jetstream(timeout=10.0)
    progress(f"3. filling {namespace} with {count:,} events over {actors} actors")
    started = clock()
    await fill(store, count, actors)
    info = await js.stream_info(store.stream_name)
    assert info.state.messages == count, info.state.messages
    progress(f"3. filled in {clock() - started:.1f} s; draining ({sizes.drain_rounds} rounds)")
    bus = NATSEventBus(runtime=runtime)
    overflowed: list[str] = []

    async def aether() -> float:
        start = clock()
        subscription = await bus.asubscribe(namespace, start="all")
        received = 0
        try:
            async for _delivery in subscription:
                received += 1
                if received == count:
                    break
        except Exception as exc:  # an overflow ends the subscription: report it
            overflowed.append(f"{type(exc).__name__} after {received:,} events")
            raise
        elapsed = clock() - start
        await subscription.aclose()
        return count / elapsed

    async def raw(metadata: bool) -> float:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        received = 0

        async def on_msg(msg: Any) -> None:
            nonlocal received
            json.loads(msg.data)
            if metadata:  # the stream sequence, as a subscriber that can resume needs it
                msg.metadata.sequence.stream  # noqa: B018
            received += 1
            if received == count and not done.done():
                done.set_result(None)

        start = clock()
        sub = await js.subscribe(
            f"{store._subject_prefix}.*",
            stream=store.stream_name,
            cb=on_msg,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        await asyncio.wait_for(done, 120)
        elapsed = clock() - start
        await sub.unsubscribe()
        return count / elapsed

    try:
        res = await interleaved(
            {"aether": aether, "raw": lambda: raw(False), "raw_meta": lambda: raw(True)},
            rounds=sizes.drain_rounds,
            warmup=1,
        )
    finally:
        await nc.close()
    report.compare(
        "3",
        f'drain {count:,} stored events, `asubscribe(start="all")` + `async for`',
        "events/s",
        res["aether"],
        res["raw"],
        baseline_label="raw ordered push consumer + json.loads",
        target="≥ 0.8x raw",
        min_ratio=0.8,
    )
    report.compare(
        "3b",
        "  same, against raw that also reads `msg.metadata` (the stream sequence)",
        "events/s",
        res["aether"],
        res["raw_meta"],
        baseline_label="raw ordered push consumer + json.loads + msg.metadata",
    )
    if overflowed:
        report.meta["drain overflow"] = "; ".join(overflowed)


# --- main -------------------------------------------------------------------------------


async def run_all(report: Report, sizes: Sizes, url: str, only: list[str]) -> None:
    runtime = Runtime(url, name="aether-bench")
    sections: dict[str, Callable[[], Awaitable[None]]] = {
        "1": lambda: bench_local(report, sizes),
        "2": lambda: bench_remote(report, sizes, url, runtime),
        "3": lambda: bench_drain(report, sizes, url, runtime),
    }
    try:
        for key, section in sections.items():
            if only and key not in only:
                continue
            started = clock()
            await section()
            progress(f"{key}. done in {clock() - started:.1f} s")
    finally:
        logging.getLogger("aether_django.runtime").setLevel(logging.ERROR)
        await runtime.aclose()
        runtime.close()


def main(argv: list[str] | None = None) -> int:
    parser = base_parser((__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--only", default="", help="comma-separated figures to run, e.g. 1,3 (default: all)"
    )
    parser.add_argument("--serve-subscriber", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_subscriber:
        asyncio.run(serve_subscriber(*args.serve_subscriber))
        return 0
    only = parse_only(args)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds, drain_rounds=args.rounds)
    report = Report("aether_django event bus: latency and draining vs baselines")
    started = clock()
    with NatsServer() as server:
        nats_meta(report, server, args.quick)
        report.meta.update(
            {
                "storage": "file (temporary directory)",
                "samples": (
                    f"local: {sizes.rounds} x {sizes.local_per_round} per variant; "
                    f"cross-process: {sizes.remote_events} per side; "
                    f"drain: {sizes.drain_rounds} rounds after a warm-up"
                ),
            }
        )
        asyncio.run(run_all(report, sizes, server.url, only))
    finish(report, started, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
