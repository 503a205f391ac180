"""Process-local metrics in the Prometheus text format, with no dependency.

Pure: imports neither Django nor nats. Counters and histograms are plain dict
updates under the GIL, cheap enough for the save path. ``render()`` is what the
``metrics/`` endpoint serves.

Most metrics count what this process did. The ``aether_cluster_*`` figures (and
``aether_cluster_nodes``) describe the whole cluster instead: the endpoint reads
them from the cluster bucket at each scrape and hands them to ``render(collected)``,
because the nodes that lead, rebalance and heartbeat (Celery workers) serve no HTTP.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = [
    "BUS_DELIVERED",
    "BUS_LAG",
    "BUS_OVERFLOWS",
    "BUS_SUBSCRIPTIONS",
    "CLUSTER_LEADER",
    "CLUSTER_LEADER_TERM",
    "CLUSTER_READABLE",
    "CLUSTER_SHARDS",
    "CLUSTER_SHARD_MOVES",
    "LEADER_CHANGES",
    "NODES",
    "SAVES",
    "SAVE_CONFLICTS",
    "SAVE_SECONDS",
    "SHARD_MOVES",
    "Counter",
    "Gauge",
    "Histogram",
    "Samples",
    "render",
]

Labels = tuple[tuple[str, str], ...]
#: Samples computed at scrape time: (labels, value) pairs, e.g. ``[({"status": "alive"}, 3)]``.
Samples = Iterable[tuple[Mapping[str, str], float]]
_metrics: list[_Metric] = []


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _format_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str) -> None:
        self.name = name
        self.help = help
        _metrics.append(self)

    def lines(self) -> list[str]:
        raise NotImplementedError

    def sample_lines(self, samples: Samples) -> list[str]:
        """``samples`` as exposition lines of this metric (for values collected at scrape time)."""
        values = {_labels(dict(labels)): float(value) for labels, value in samples}
        return [f"{self.name}{_format_labels(k)} {v}" for k, v in sorted(values.items())]


class Counter(_Metric):
    """A number that only goes up."""

    kind = "counter"

    def __init__(self, name: str, help: str) -> None:
        super().__init__(name, help)
        self._values: dict[Labels, float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._values[_labels(labels)] += amount

    def value(self, **labels: str) -> float:
        return self._values.get(_labels(labels), 0.0)

    def lines(self) -> list[str]:
        return [f"{self.name}{_format_labels(k)} {v}" for k, v in sorted(self._values.items())]


class Gauge(_Metric):
    """A number read when metrics are rendered (or set explicitly)."""

    kind = "gauge"

    def __init__(self, name: str, help: str, read: Callable[[], float] | None = None) -> None:
        super().__init__(name, help)
        self._values: dict[Labels, float] = {}
        self.read = read

    def set(self, value: float, **labels: str) -> None:
        self._values[_labels(labels)] = value

    def lines(self) -> list[str]:
        values = dict(self._values)
        if self.read is not None:
            values[()] = self.read()
        return [f"{self.name}{_format_labels(k)} {v}" for k, v in sorted(values.items())]


class Histogram(_Metric):
    """Observations counted into cumulative buckets, plus their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help)
        self.buckets = sorted(buckets)
        self._counts: dict[Labels, list[int]] = {}
        self._sums: dict[Labels, float] = defaultdict(float)
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        key = _labels(labels)
        with self._lock:
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = [0] * (len(self.buckets) + 1)
            counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sums[key] += value

    def lines(self) -> list[str]:
        out = []
        with self._lock:
            items = [(k, list(v), self._sums[k]) for k, v in sorted(self._counts.items())]
        for key, counts, total in items:
            running = 0
            for bound, count in zip([*self.buckets, float("inf")], counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f"{self.name}_bucket{_format_labels(key, (('le', le),))} {running}")
            out.append(f"{self.name}_sum{_format_labels(key)} {total}")
            out.append(f"{self.name}_count{_format_labels(key)} {running}")
        return out


def render(collected: Mapping[_Metric, Samples] | None = None) -> str:
    """Every metric in the Prometheus text exposition format (version 0.0.4).

    ``collected`` gives the samples of metrics computed at scrape time; they replace
    whatever this process holds for those metrics, so a stale local value is never
    shown next to (or instead of) the value just read.
    """
    out: list[str] = []
    for metric in _metrics:
        out.append(f"# HELP {metric.name} {metric.help}")
        out.append(f"# TYPE {metric.name} {metric.kind}")
        if collected is not None and metric in collected:
            out.extend(metric.sample_lines(collected[metric]))
        else:
            out.extend(metric.lines())
    return "\n".join(out) + "\n"


_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

SAVES = Counter("aether_saves_total", "Saves acknowledged by the store, by namespace.")
SAVE_CONFLICTS = Counter(
    "aether_save_conflicts_total", "Saves refused with VersionConflictError, by namespace."
)
SAVE_SECONDS = Histogram("aether_save_seconds", "Time from save call to acknowledgement.", _LATENCY)
BUS_DELIVERED = Counter("aether_bus_delivered_total", "Events handed to bus subscribers.")
BUS_LAG = Histogram(
    "aether_bus_lag_seconds", "Time from an event's timestamp to its delivery.", _LATENCY
)
BUS_SUBSCRIPTIONS = Gauge("aether_bus_subscriptions", "Live bus subscriptions in this process.")
BUS_OVERFLOWS = Counter(
    "aether_bus_overflows_total",
    "Bus subscriptions ended because their subscriber fell a full buffer behind.",
)
NODES = Gauge(
    "aether_cluster_nodes",
    "Nodes by status (alive, failed), read from the cluster bucket at each scrape.",
)
LEADER_CHANGES = Counter(
    "aether_leader_changes_total", "Times this process took the leader lease (node processes)."
)
SHARD_MOVES = Counter(
    "aether_shard_moves_total", "Shards moved by this process's rebalances (node processes)."
)
# Read from the cluster bucket at each scrape (see the module docstring).
CLUSTER_READABLE = Gauge(
    "aether_cluster_readable", "1 when the cluster figures were read at this scrape, else 0."
)
CLUSTER_LEADER_TERM = Gauge(
    "aether_cluster_leader_term",
    "Term of the leader lease, 0 when nobody holds it; every change is a leader change.",
)
CLUSTER_LEADER = Gauge("aether_cluster_leader", "1 for the node that holds the leader lease.")
CLUSTER_SHARDS = Gauge("aether_cluster_shards", "Shards each node owns in the shard map.")
CLUSTER_SHARD_MOVES = Counter(
    "aether_cluster_shard_moves_total",
    "Shards moved by every rebalance of every leader, as recorded in the shard map.",
)
