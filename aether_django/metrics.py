"""The library's Prometheus metrics, kept and exposed by ``prometheus-client``.

Imports neither Django nor nats. Each metric here wraps a ``prometheus_client``
metric, whose updates take a lock per labelled value: safe from any thread, cheap
enough for the save path. ``render()`` is what the ``metrics/`` endpoint serves.

Most metrics count what this process did. The ``aether_cluster_*`` figures describe
the whole cluster instead: they hold no value in any process and come from a
:class:`ClusterCollector`, which reads them from the cluster bucket at each scrape,
because the nodes that lead, rebalance and heartbeat (Celery workers) serve no HTTP.
The projections' lag and state are read the same way, at each scrape, from their
checkpoints and the stream heads (``aether_django.views.projection_samples``): a
runner may live in any process, or in none, and a lag that nobody is left to report
is the one that matters.

Several worker processes (uvicorn or gunicorn ``--workers``, Celery's prefork pool)
are prometheus-client's multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set in the
environment *before* this module is imported, every process writes its values to
files in that directory and ``render()`` adds up the files of all of them. The
process and Python collectors (CPU, memory, garbage collection) describe only the
process that answers a scrape, so they are exposed in single-process mode only, as
prometheus-client itself does.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import prometheus_client
from prometheus_client import multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
    "CONTENT_TYPE",
    "LEADER_CHANGES",
    "LIBRARY_COLLECTOR",
    "MULTIPROCESS",
    "NODES",
    "PROJECTION_BATCH_SECONDS",
    "PROJECTION_EVENTS",
    "PROJECTION_FAILURES",
    "PROJECTION_HANDLER_ERRORS",
    "PROJECTION_LAG",
    "PROJECTION_STATE",
    "SAVES",
    "SAVE_CONFLICTS",
    "SAVE_SECONDS",
    "SHARD_MOVES",
    "ClusterCollector",
    "ClusterFigure",
    "Counter",
    "Gauge",
    "Histogram",
    "Samples",
    "render",
]

#: Samples computed at scrape time: (labels, value) pairs, e.g. ``[({"status": "alive"}, 3)]``.
Samples = Iterable[tuple[Mapping[str, str], float]]
#: The exposition format ``render()`` writes (Prometheus text, version 0.0.4).
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_PLAIN_0_0_4
#: Whether this process writes its values to ``PROMETHEUS_MULTIPROC_DIR``. Read once, at
#: import, as prometheus-client reads it to choose where values live.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

_metrics: list[_Metric] = []


class _Metric:
    """One of the library's metrics: its name, kind and help, as the docs list them."""

    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labels)
        _metrics.append(self)

    def collect(self) -> Iterable[Metric]:
        """This process's samples of the metric, as prometheus-client families."""
        raise NotImplementedError

    def lines(self) -> list[str]:
        """This process's samples as exposition lines (no HELP or TYPE)."""
        text = prometheus_client.generate_latest(_Only(self)).decode()
        return [line for line in text.splitlines() if line and not line.startswith("#")]


class _Live(_Metric):
    """A metric this process updates; its values live in a ``prometheus_client`` metric."""

    _prom: Any  # prometheus_client.metrics.MetricWrapperBase

    def _child(self, labels: Mapping[str, str]) -> Any:
        return self._prom.labels(**labels) if labels else self._prom

    def collect(self) -> Iterable[Metric]:
        return self._prom.collect()  # type: ignore[no-any-return]

    def value(self, **labels: str) -> float:
        """This process's current value (a counter's total, a gauge's level)."""
        wanted = dict(labels)
        for family in self.collect():
            for sample in family.samples:
                if sample.name == self.name and sample.labels == wanted:
                    return float(sample.value)
        return 0.0


class Counter(_Live):
    """A number that only goes up."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        # registry=None: the library's metrics are collected by LIBRARY_COLLECTOR.
        self._prom = prometheus_client.Counter(name, help, self.labelnames, registry=None)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).inc(amount)


class Gauge(_Live):
    """A number set explicitly, or read from ``read`` when metrics are rendered.

    In multiprocess mode the exposition shows the sum over live processes
    (prometheus-client's ``livesum``); a ``read`` gauge is refreshed by the process
    that renders, from its own ``read``.
    """

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help: str,
        read: Callable[[], float] | None = None,
        labels: Sequence[str] = (),
    ) -> None:
        super().__init__(name, help, labels)
        self._prom = prometheus_client.Gauge(
            name, help, self.labelnames, registry=None, multiprocess_mode="livesum"
        )
        self.read = read

    def set(self, value: float, **labels: str) -> None:
        self._child(labels).set(value)

    def refresh(self) -> None:
        """Take the value of ``read``, if there is one (called before each exposition)."""
        if self.read is not None:
            self._prom.set(self.read())

    def collect(self) -> Iterable[Metric]:
        self.refresh()
        return super().collect()


class Histogram(_Live):
    """Observations counted into cumulative buckets, plus their sum and count."""

    kind = "histogram"

    def __init__(
        self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> None:
        super().__init__(name, help, labels)
        self.buckets = sorted(buckets)
        self._prom = prometheus_client.Histogram(
            name, help, self.labelnames, registry=None, buckets=self.buckets
        )

    def observe(self, value: float, **labels: str) -> None:
        self._child(labels).observe(value)


class ClusterFigure(_Metric):
    """A figure of the whole cluster: no process holds it, a :class:`ClusterCollector`
    reads it at each scrape (so no stale local value can ever be shown)."""

    def __init__(self, name: str, help: str, kind: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self.kind = kind

    def family(self, samples: Samples) -> Metric:
        """``samples`` as a prometheus-client family of this figure."""
        return _family(self, samples)

    def collect(self) -> Iterable[Metric]:
        return [self.family(())]  # the family with no samples: nothing was read

    def set(self, value: float, **labels: str) -> None:
        """Deprecated: does nothing. The figure is read from the cluster at each scrape."""
        warnings.warn(
            f"{self.name} is read from the cluster bucket at each scrape; setting it "
            "does nothing and will be removed",
            DeprecationWarning,
            stacklevel=2,
        )


class ClusterCollector(Collector):
    """The cluster figures, as a prometheus-client collector.

    ``read`` is called at each ``collect()`` (each scrape) and returns the samples
    of the figures it could read; a figure it leaves out is exposed without samples.
    Register one in your own registry to expose the figures from another endpoint,
    e.g. ``REGISTRY.register(ClusterCollector(aether_django.views.cluster_samples))``.
    """

    def __init__(self, read: Callable[[], Mapping[_Metric, Samples]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        samples = self.read()
        for metric in _metrics:
            if isinstance(metric, ClusterFigure):
                yield metric.family(samples.get(metric, ()))


class _Only(Collector):
    def __init__(self, metric: _Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterable[Metric]:
        return self.metric.collect()


class _LibraryCollector(Collector):
    """This process's values of the library's metrics (the cluster figures excepted)."""

    def __init__(self, skip: Iterable[_Metric] = ()) -> None:
        self.skip = set(skip)

    def collect(self) -> Iterator[Metric]:
        for metric in list(_metrics):
            if isinstance(metric, _Live) and metric not in self.skip:
                yield from metric.collect()


# prometheus-client's default collectors (process_*, python_info, python_gc_*), in a
# registry of their own rather than the global one, which a host may already expose.
_DEFAULTS = prometheus_client.CollectorRegistry(auto_describe=True)
prometheus_client.ProcessCollector(registry=_DEFAULTS)
prometheus_client.PlatformCollector(registry=_DEFAULTS)
prometheus_client.GCCollector(registry=_DEFAULTS)

#: This process's values of the library's metrics, for a registry of your own:
#: ``prometheus_client.REGISTRY.register(LIBRARY_COLLECTOR)``.
LIBRARY_COLLECTOR = _LibraryCollector()


class _Registry(Collector):
    """The collectors of one exposition, in order, without prometheus-client's name
    bookkeeping (a registry refuses to hold two collectors of the same names)."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


class _Without(Collector):
    """``collector``'s families, less those named in ``names``."""

    def __init__(self, collector: Collector, names: set[str]) -> None:
        self.collector = collector
        self.names = names

    def collect(self) -> Iterator[Metric]:
        for family in self.collector.collect():
            if family.name not in self.names:
                yield family


def _family_name(metric: _Metric) -> str:
    # prometheus-client names a counter's family without its "_total".
    return metric.name.removesuffix("_total") if metric.kind == "counter" else metric.name


def render(collected: Mapping[_Metric, Samples] | None = None) -> str:
    """Every metric in the Prometheus text exposition format (version 0.0.4).

    ``collected`` gives the samples of metrics computed at scrape time (the cluster
    figures); they replace whatever this process holds for those metrics, so a stale
    local value is never shown next to (or instead of) the value just read.

    In multiprocess mode the values are those of every process that wrote to
    ``PROMETHEUS_MULTIPROC_DIR``, added up; otherwise this process's, followed by the
    process and Python figures of prometheus-client's default collectors.
    """
    collected = dict(collected or {})
    replaced = [metric for metric in collected if not isinstance(metric, ClusterFigure)]
    collectors: list[Collector] = []
    if MULTIPROCESS:
        for metric in _metrics:
            if isinstance(metric, Gauge):
                metric.refresh()  # this process's file has its current value
        names = {_family_name(metric) for metric in replaced}
        collector = multiprocess.MultiProcessCollector(None)  # type: ignore[no-untyped-call]
        collectors.append(_Without(collector, names))
    else:
        collectors.append(_LibraryCollector(skip=replaced))
    collectors.append(ClusterCollector(lambda: collected))
    for metric in replaced:
        collectors.append(_Samples(metric, collected[metric]))
    if not MULTIPROCESS:
        collectors.append(_DEFAULTS)
    return prometheus_client.generate_latest(_Registry(collectors)).decode()


class _Samples(Collector):
    """Samples collected at scrape time for a metric this process also keeps."""

    def __init__(self, metric: _Metric, samples: Samples) -> None:
        self.metric = metric
        self.samples = list(samples)

    def collect(self) -> Iterator[Metric]:
        yield _family(self.metric, self.samples)


def _family(metric: _Metric, samples: Samples) -> Metric:
    """``samples`` of ``metric`` as a prometheus-client family."""
    family_class = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
    family = family_class(metric.name, metric.help, labels=metric.labelnames)
    for labels, value in samples:
        family.add_metric([str(labels[name]) for name in metric.labelnames], float(value))
    return family


_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

SAVES = Counter(
    "aether_saves_total", "Saves acknowledged by the store, by namespace.", labels=["namespace"]
)
SAVE_CONFLICTS = Counter(
    "aether_save_conflicts_total",
    "Saves refused with VersionConflictError, by namespace.",
    labels=["namespace"],
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
NODES = ClusterFigure(
    "aether_cluster_nodes",
    "Nodes by status (alive, failed), read from the cluster bucket at each scrape.",
    "gauge",
    labels=["status"],
)
LEADER_CHANGES = Counter(
    "aether_leader_changes_total", "Times this process took the leader lease (node processes)."
)
SHARD_MOVES = Counter(
    "aether_shard_moves_total", "Shards moved by this process's rebalances (node processes)."
)
# Read from the cluster bucket at each scrape (see the module docstring).
CLUSTER_READABLE = ClusterFigure(
    "aether_cluster_readable",
    "1 when the cluster figures were read at this scrape, else 0.",
    "gauge",
)
CLUSTER_LEADER_TERM = ClusterFigure(
    "aether_cluster_leader_term",
    "Term of the leader lease, 0 when nobody holds it; every change is a leader change.",
    "gauge",
)
CLUSTER_LEADER = ClusterFigure(
    "aether_cluster_leader", "1 for the node that holds the leader lease.", "gauge", ["node"]
)
CLUSTER_SHARDS = ClusterFigure(
    "aether_cluster_shards", "Shards each node owns in the shard map.", "gauge", ["node"]
)
CLUSTER_SHARD_MOVES = ClusterFigure(
    "aether_cluster_shard_moves_total",
    "Shards moved by every rebalance of every leader, as recorded in the shard map.",
    "counter",
)

# --- projections -----------------------------------------------------------------------
# Counted by the process whose runner applied the batch (multiprocess mode adds them up).
PROJECTION_EVENTS = Counter(
    "aether_projection_events_total",
    "Events applied by projection runners in this process, committed with their checkpoint.",
    labels=["projection", "namespace"],
)
PROJECTION_HANDLER_ERRORS = Counter(
    "aether_projection_handler_errors_total",
    "Batches rolled back because a projection's handler raised (every try counts).",
    labels=["projection", "namespace"],
)
PROJECTION_FAILURES = Counter(
    "aether_projection_failures_total",
    "Times a projection stopped at an event after its retries (checkpoint marked failed).",
    labels=["projection", "namespace"],
)
# By projection only: a histogram's buckets times every namespace of a pattern source
# would be many series for little more insight.
PROJECTION_BATCH_SECONDS = Histogram(
    "aether_projection_batch_seconds",
    "Time to apply a batch of events and commit it with its checkpoint, by projection.",
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    labels=["projection"],
)
# Read from the checkpoints and the stream heads at each scrape (see the module docstring).
PROJECTION_LAG = ClusterFigure(
    "aether_projection_lag",
    "Events stored but not yet applied (stream head minus checkpoint), read at each scrape.",
    "gauge",
    labels=["projection", "namespace"],
)
PROJECTION_STATE = ClusterFigure(
    "aether_projection_state",
    "1 for the state (running, paused, failed, new) each projection is in, by namespace.",
    "gauge",
    labels=["projection", "namespace", "state"],
)
