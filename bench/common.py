"""Shared helpers for the benchmarks: timing, percentiles, interleaved rounds, the result table.

Every benchmark measures a figure *beside a baseline doing the same work in the
same run*. :func:`interleaved` runs the variants of one figure in alternating
rounds (rotating which goes first) after warm-up rounds, so that drift of the
machine (CPU frequency, page cache, the server compacting) hits all of them
alike. Results go into a :class:`Report`, which prints a Markdown table with the
ratio to the baseline and whether each target is met. Benchmarks only *report*
targets; they never assert them.

Ratios are always "how many times as fast as the baseline": throughput divided
by the baseline's throughput, or the baseline's time divided by the time, so
> 1 means faster than the baseline and < 1 slower. When both sides were measured
in the same interleaved rounds, the ratio is the *median of the per-round
ratios* (each round's pair ran back to back, so slow drift of the machine cancels
out); the value and baseline columns show each side's median.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Report",
    "Row",
    "base_parser",
    "clock",
    "code_version",
    "fmt",
    "interleaved",
    "machine_info",
    "median",
    "paired_ratio",
    "percentile",
    "progress",
    "spread",
    "unique_name",
]

#: The clock every benchmark times with.
clock = time.perf_counter


def percentile(values: Iterable[float], pct: float) -> float:
    """The ``pct``-th percentile (0..100) with linear interpolation, as numpy's default."""
    data = sorted(values)
    if not data:
        return math.nan
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else math.nan


def paired_ratio(
    values: Sequence[float], baselines: Sequence[float], higher_is_better: bool = True
) -> float:
    """Median over rounds of value/baseline (or baseline/value for times)."""
    if higher_is_better:
        return median(v / b for v, b in zip(values, baselines, strict=True))
    return median(b / v for v, b in zip(values, baselines, strict=True))


def unique_name(prefix: str) -> str:
    """A fresh name (namespace, stream, actor) so that no run sees another's data."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def progress(message: str) -> None:
    """One progress line, so a long run shows where it is."""
    print(f"... {message}", file=sys.stderr, flush=True)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    try:
        load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # not available
        load = "unknown"
    return {
        "cpu": model,
        "cores": usable,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load average at start (1/5/15 min)": load,
        "code": code_version(),
    }


def code_version() -> str:
    """The commit measured, and whether aether_django had uncommitted changes (read-only git)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        # --no-optional-locks: only read, never refresh the index.
        changed = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--", "aether_django"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    files = [line[3:] for line in changed if line.strip()]
    if not files:
        return f"commit {commit}"
    return f"commit {commit} + uncommitted changes to {', '.join(files)}"


async def interleaved(
    variants: dict[str, Callable[[], Awaitable[float]]],
    *,
    rounds: int,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Run every variant once per round, rotating the order; return each one's values.

    Each variant is a coroutine function doing one round of work and returning
    what it measured (seconds, a rate, ...). Warm-up rounds run first and are
    thrown away. The garbage collector runs before each measured round so one
    variant's garbage is not collected on another's time.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            await variants[name]()
    results: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            results[name].append(await variants[name]())
    return results


# --- results -------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    """A number with its unit, rounded sensibly for a table."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):  # a count
        return f"{value:,} {unit}".strip()
    if unit.endswith("/s"):
        return f"{value:,.0f} {unit}"
    if unit == "ms":
        if value < 0.1:
            return f"{value * 1000:.0f} µs"
        if value < 10:
            return f"{value:.2f} ms"
        return f"{value:.1f} ms"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:,.3g} {unit}"


@dataclass
class Row:
    """One figure: aether's value, the baseline's, and the target if there is one."""

    section: str
    figure: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    #: Throughput-like figures are better high, times are better low.
    higher_is_better: bool = True
    target: str = ""
    met: bool | None = None
    #: Per-round values of both sides, when measured in the same interleaved rounds.
    samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.samples and len(self.samples) == len(self.baseline_samples):
            return paired_ratio(self.samples, self.baseline_samples, self.higher_is_better)
        if self.baseline is None or not self.value or not self.baseline:
            return None
        if self.higher_is_better:
            return self.value / self.baseline
        return self.baseline / self.value


@dataclass
class Report:
    """The rows of one benchmark run, printed as a Markdown table."""

    title: str
    meta: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    def add(
        self,
        section: str,
        figure: str,
        value: float,
        unit: str,
        *,
        min_ratio: float | None = None,
        max_value: float | None = None,
        **kwargs: Any,
    ) -> Row:
        """Add a row; ``min_ratio`` / ``max_value`` set ``met`` from the ratio / the value."""
        row = Row(section, figure, value, unit, **kwargs)
        if min_ratio is not None:
            ratio = row.ratio
            row.met = ratio is not None and ratio >= min_ratio
        if max_value is not None:
            row.met = value < max_value
        self.rows.append(row)
        return row

    def compare(
        self,
        section: str,
        figure: str,
        unit: str,
        samples: Sequence[float],
        baseline_samples: Sequence[float],
        **kwargs: Any,
    ) -> Row:
        """Add a row from per-round values of both sides (medians and the paired ratio)."""
        return self.add(
            section,
            figure,
            median(samples),
            unit,
            baseline=median(baseline_samples),
            samples=list(samples),
            baseline_samples=list(baseline_samples),
            **kwargs,
        )

    def table(self) -> str:
        header = ["#", "figure", "aether", "baseline", "ratio", "target", "status"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows:
            baseline = ""
            if row.baseline is not None:
                baseline = fmt(row.baseline, row.unit)
                if row.baseline_label:
                    baseline += f" ({row.baseline_label})"
            elif row.baseline_label:
                baseline = row.baseline_label
            ratio = fmt(row.ratio, "x") if row.ratio is not None else ""
            status = "" if row.met is None else ("met" if row.met else "**NOT MET**")
            cells = [
                row.section,
                row.figure,
                fmt(row.value, row.unit),
                baseline,
                ratio,
                row.target,
                status,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def targets(self) -> list[Row]:
        return [row for row in self.rows if row.met is not None]

    def print(self) -> None:
        print()
        print(f"## {self.title}")
        print()
        for key, value in self.meta.items():
            print(f"- {key}: {value}")
        print()
        print(self.table())
        print()
        missed = [row for row in self.targets() if not row.met]
        met = len(self.targets()) - len(missed)
        print(f"targets met: {met}/{len(self.targets())}")
        for row in missed:
            print(f"  NOT MET: {row.section} {row.figure} (target {row.target})")
        sys.stdout.flush()

    def write_json(self, path: str) -> None:
        doc = {
            "title": self.title,
            "meta": self.meta,
            "rows": [{**asdict(row), "ratio": row.ratio} for row in self.rows],
        }
        with open(path, "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=2, default=str)
            out.write("\n")


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick, --rounds, --json."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, for a smoke test (seconds)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="measured rounds per figure (default: by mode)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    return parser


def spread(values: Sequence[float]) -> str:
    """min..max of per-round values, to show how noisy a figure was."""
    if not values:
        return ""
    return f"{min(values):,.0f}..{max(values):,.0f}"
