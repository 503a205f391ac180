"""Tracing benchmark: what OpenTelemetry tracing costs a save, off and on.

Run from the repository root::

    .venv/bin/python -m bench.tracing            # full run, about half a minute on 2 cores
    .venv/bin/python -m bench.tracing --quick    # smoke test, a few seconds

Sequential single-event saves on one actor (``asave_event``, as figure 1a of
``bench/store.py``), in interleaved rounds of the same run:

1. tracing **off** (``tracing.configure(False)``: what a process without the ``otel``
   extra, or with ``AETHER["TRACING"] = False``, runs) against raw nats-py doing the
   same work (``nc.request`` with ``Nats-Msg-Id`` and the expected sequence, a JSON
   parse of the ack);
2. the ``otel`` extra installed but **no tracer provider** configured (the API's
   default), against the same raw baseline;
3. tracing **on** with the SDK (a ``TracerProvider`` without exporter or processor: the
   cost of making the spans and the headers, not of shipping them), against tracing off;
4. the per-save cost of the hooks alone, timed in a loop without NATS: the two checks
   of ``tracing.enabled`` a save makes with tracing off, and what the same hooks do
   with the extra but no tracer provider;
5. with ``--against PATH`` (a checkout of the code before tracing, e.g. made with
   ``git archive``): the same saves by this code with ``opentelemetry`` not importable
   (a ``sys.meta_path`` finder refuses it, as if the extra were not installed), and
   with the extra but no tracer provider, each against the code at PATH. Every round
   runs each side in a fresh process, one after the other in rotating order, on the
   same nats-server, so the pairs see the same machine.

The ratio of figure 1 is the one to set beside figure 1a of ``bench/store.py`` run on
the code before tracing existed; figure 5 measures that comparison in one run
(docs/performance.md, "Tracing").
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import timeit
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aether_django import tracing
from aether_django.runtime import Runtime
from aether_django.testing import NatsServer

from ._setup import finish, nats_meta, new_event, parse_only
from .common import Report, base_parser, clock, interleaved, progress, unique_name
from .store import Bench, RawActor


@dataclass(frozen=True)
class Sizes:
    events: int
    rounds: int
    warmup: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(events=1000, rounds=15, warmup=2)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(events=100, rounds=3, warmup=1)


async def bench_saves(b: Bench, sizes: Sizes) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    n = sizes.events
    progress(f"1-3. sequential saves ({n} events a round, {sizes.rounds} rounds)")
    provider = TracerProvider()
    _, raw_prefix = await b.raw_stream("bench_trace_raw")
    raw = RawActor(b.nc, f"{raw_prefix}.acct-raw", "acct-raw")

    def saves(setting: bool, with_provider: bool) -> Callable[[], Awaitable[float]]:
        store = b.store(unique_name("bench_trace"))
        version = 0

        async def run() -> float:
            nonlocal version
            tracing.configure(setting, tracer_provider=provider if with_provider else None)
            start = clock()
            for _ in range(n):
                version += 1
                await store.asave_event(new_event("acct", version))
            return n / (clock() - start)

        return run

    async def raw_round() -> float:
        start = clock()
        for _ in range(n):
            await raw.request()
        return n / (clock() - start)

    try:
        res = await interleaved(
            {
                "off": saves(False, False),
                "no_provider": saves(True, False),
                "on": saves(True, True),
                "raw": raw_round,
            },
            rounds=sizes.rounds,
            warmup=sizes.warmup,
        )
    finally:
        tracing.configure(False)
    label = "raw nc.request + JSON ack"
    b.report.compare(
        "1",
        "save one event, async, tracing off (no `otel` extra, or TRACING False)",
        "events/s",
        res["off"],
        res["raw"],
        baseline_label=label,
        target="ratio ≥ 0.98x of `bench.store` 1a on the code before tracing",
    )
    b.report.compare(
        "2",
        "save one event, async, `otel` installed, no tracer provider",
        "events/s",
        res["no_provider"],
        res["raw"],
        baseline_label=label,
    )
    b.report.compare(
        "3",
        "save one event, async, tracing on (SDK provider, no exporter)",
        "events/s",
        res["on"],
        res["off"],
        baseline_label="tracing off",
    )


#: The hooks one save runs through (``Writer.save_event`` and ``Writer._publish``), as
#: statements on a save's headers, for figure 4.
SAVE_HOOKS = """
if tracing.enabled and tracing.recording():
    pass
if tracing.enabled:
    tracing.inject(headers)
"""


def bench_disabled_hooks(b: Bench) -> None:
    progress("4. the hooks of one save alone")
    loops = 200_000

    def per_save(setting: bool) -> float:
        tracing.configure(setting)
        names = {"tracing": tracing, "headers": {"Nats-Msg-Id": "x"}}
        hooked = min(timeit.repeat(SAVE_HOOKS, globals=names, number=loops, repeat=5))
        bare = min(timeit.repeat("pass", number=loops, repeat=5))
        return max(hooked - bare, 0.0) / loops * 1e9

    try:
        off, no_provider = per_save(False), per_save(True)
    finally:
        tracing.configure(False)
    b.report.add(
        "4a",
        "the hooks of one save, tracing off (two checks of `tracing.enabled`)",
        off,
        "ns",
        higher_is_better=False,
        baseline_label="per save, no NATS involved",
    )
    b.report.add(
        "4b",
        "the hooks of one save, `otel` installed, no tracer provider",
        no_provider,
        "ns",
        higher_is_better=False,
        baseline_label="per save, no NATS involved",
    )


#: One side of figure 5, run in a fresh interpreter with PYTHONPATH naming the code to
#: measure: warm-up saves, then the timed ones; prints the rate as JSON.
_CHILD = """
import asyncio, importlib.abc, json, sys, time

url, namespace, events, warmup, block = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


if block:
    sys.meta_path.insert(0, Refuse())

from aether_django.events import Event
from aether_django.runtime import Runtime
from aether_django.store.base import StoreConfig
from aether_django.store.jetstream import JetStreamEventStore

DATA = {"amount": 1, "currency": "EUR", "reference": "bench"}


def event(version):
    return Event(event_type="Deposited", actor_id="acct", version=version, data=DATA)


async def main():
    runtime = Runtime(url, name="aether-bench-child")
    store = JetStreamEventStore(namespace, runtime=runtime, config=StoreConfig(storage="file"))
    for version in range(1, warmup + 1):
        await store.asave_event(event(version))
    start = time.perf_counter()
    for version in range(warmup + 1, warmup + events + 1):
        await store.asave_event(event(version))
    rate = events / (time.perf_counter() - start)
    await runtime.aclose()
    tracing = sys.modules.get("aether_django.tracing")
    print(json.dumps({"rate": rate, "tracing": bool(tracing and tracing.enabled),
                      "otel": "opentelemetry" in sys.modules}))


asyncio.run(main())
"""


def child_rate(root: str, url: str, sizes: Sizes, *, block: bool) -> dict[str, float]:
    """The save rate of the code at ``root``, measured in a fresh process."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            url,
            unique_name("bench_trace_ab"),
            str(sizes.events),
            str(max(100, sizes.events // 5)),
            str(int(block)),
        ],
        env={**os.environ, "PYTHONPATH": root},
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the save loop at {root} failed:\n{result.stderr[-2000:]}")
    answer: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


#: The checkout this module belongs to (the code figure 5 measures against ``--against``).
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def bench_against(b: Bench, sizes: Sizes, against: str) -> None:
    here = HERE
    progress(f"5. fresh processes: this code and {against} ({sizes.rounds} rounds)")
    sides = {
        "not_installed": (here, True),
        "no_provider": (here, False),
        "before": (against, False),
    }
    rates: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(sizes.rounds + 1):  # the first round warms the machine up
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            root, block = sides[name]
            answer = await asyncio.to_thread(child_rate, root, b.url, sizes, block=block)
            if name == "not_installed":
                assert not answer["otel"] and not answer["tracing"], answer
            if i:
                rates[name].append(answer["rate"])
    b.report.compare(
        "5a",
        "save one event, async, fresh process, `opentelemetry` not importable",
        "events/s",
        rates["not_installed"],
        rates["before"],
        baseline_label=f"the code before tracing ({against})",
        target="≥ 0.98x",
        min_ratio=0.98,
    )
    b.report.compare(
        "5b",
        "the same, `otel` installed, no tracer provider",
        "events/s",
        rates["no_provider"],
        rates["before"],
        baseline_label=f"the code before tracing ({against})",
    )


async def run_all(b: Bench, sizes: Sizes, only: list[str], against: str | None) -> None:
    await b.connect()
    try:
        if not only or {"1", "2", "3"} & set(only):
            await bench_saves(b, sizes)
        if not only or "4" in only:
            bench_disabled_hooks(b)
        if against and (not only or "5" in only):
            await bench_against(b, sizes, against)
    finally:
        await b.close()


def main(argv: list[str] | None = None) -> int:
    parser = base_parser((__doc__ or "").splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated figures (default: all)")
    parser.add_argument(
        "--against",
        metavar="PATH",
        help="a checkout of the code before tracing, for figure 5 (e.g. from git archive)",
    )
    args = parser.parse_args(argv)
    only = parse_only(args)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    report = Report("aether_django tracing: saves with tracing off and on")
    started = clock()
    with NatsServer() as server:
        nats_meta(report, server, args.quick)
        report.meta["rounds"] = (
            f"{sizes.rounds} of {sizes.events} saves after {sizes.warmup} warm-up; values are "
            "medians, ratios medians of per-round ratios"
        )
        runtime = Runtime(server.url, name="aether-bench")
        try:
            bench = Bench(server.url, runtime, None, report)  # type: ignore[arg-type]
            asyncio.run(run_all(bench, sizes, only, args.against))
        finally:
            runtime.close()
    finish(report, started, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
