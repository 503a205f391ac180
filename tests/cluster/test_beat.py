"""Several Celery beats, one active: real beats, real workers, a real broker and nats-server.

Each beat runs ``aether_django.beat.LeasedScheduler`` (``setup_cluster`` sets it).
Which beat is active is read from the beat lease in the cluster bucket: its
holder id carries the beat's process id. What the beats send is watched on the
broker itself: a consumer of the cluster's broadcast exchange receives every
cluster tick (as every worker does), and a consumer of the ``probe`` queue every
message of the project's own periodic task.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kombu.common import Broadcast
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from aether_django.beat import beat_timing
from aether_django.cluster.beatlease import BeatHolder, BeatLease
from aether_django.cluster.coordinator import ClusterConfig, Coordinator
from aether_django.runtime import Runtime
from aether_django.sharding import send_command
from aether_django.tasks import BROADCAST_QUEUE, TICK_TASK
from aether_django.testing.contract import unique_namespace  # noqa: F401

from .celery_nodes import app_env, cluster_broker
from .nodes import wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT = 1.0
APP = ["-m", "celery", "-A", "tests.cluster.celery_cluster_app"]


@dataclass
class Sent:
    """One message a beat sent, as the broker delivered it."""

    at: float  # monotonic time of receipt
    task: str
    beat: str  # the aether_beat header: "<beat id> <lease revision>"


@dataclass
class Listener:
    """Receives every message on the given queues, in a thread of its own."""

    url: str
    queues: list[Queue]
    received: list[Sent] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Listener:
        threading.Thread(target=self._run, daemon=True).start()
        assert self._ready.wait(15), "the listener did not connect to the broker"
        return self

    def _run(self) -> None:
        with Connection(self.url) as conn:

            def on_message(body: Any, message: Any) -> None:
                headers = message.headers or {}
                task, beat = str(headers.get("task")), str(headers.get("aether_beat"))
                self.received.append(Sent(time.monotonic(), task, beat))
                message.ack()

            with conn.Consumer(self.queues, callbacks=[on_message], accept=["json"]):
                self._ready.set()
                while not self._stop.is_set():
                    try:
                        conn.drain_events(timeout=0.2)
                    except TimeoutError:
                        pass
                    except OSError:
                        time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()

    def between(self, start: float, end: float, task: str | None = None) -> list[Sent]:
        received = list(self.received)
        return [s for s in received if start <= s.at < end and task in (None, s.task)]


@pytest.fixture
def beat_cluster(aether_nats_url, tmp_path, monkeypatch):
    bucket = f"cluster_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AETHER_TEST_CLUSTER_BUCKET", bucket)
    broker, broker_url = cluster_broker()
    env = app_env(broker_url, bucket, AETHER_TEST_PROBE_PERIOD="2")
    runtime = Runtime(aether_nats_url)
    config = ClusterConfig(bucket=bucket, num_shards=100)
    cluster = BeatCluster(env, tmp_path, runtime, config, broker_url)
    try:
        yield cluster
    finally:
        cluster.stop_all()
        runtime.close()
        if broker is not None:
            broker.stop()


class BeatCluster:
    """Workers and beats as processes, an observer of the bucket, listeners on the broker."""

    def __init__(
        self, env: dict[str, str], tmp: Path, runtime: Runtime, config: ClusterConfig, url: str
    ) -> None:
        self.env = env
        self.tmp = tmp
        self.runtime = runtime
        self.config = config
        self.broker_url = url
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.observer = Coordinator(runtime, "observer", config)
        self.beat_lease = BeatLease(runtime, "observer", config)
        self.listeners: list[Listener] = []

    def worker(self, name: str) -> None:
        self.processes[name] = subprocess.Popen(
            [sys.executable, *APP, "worker", "--pool=prefork", "--concurrency=1",
             "-n", f"{name}@%h", "--without-mingle", "--without-gossip", "--loglevel=WARNING"],
            cwd=ROOT, env={**self.env, "AETHER_NODE_ID": name},
            stdout=subprocess.DEVNULL, stderr=(self.tmp / f"{name}.log").open("a"),
        )  # fmt: skip

    def beat(self, name: str) -> None:
        self.processes[name] = subprocess.Popen(
            [sys.executable, *APP, "beat", "--schedule", str(self.tmp / f"{name}-schedule"),
             "--loglevel=INFO"],
            cwd=ROOT, env=self.env,
            stdout=subprocess.DEVNULL, stderr=(self.tmp / f"{name}.log").open("a"),
        )  # fmt: skip

    def listen(self, *queues: Queue) -> Listener:
        listener = Listener(self.broker_url, list(queues)).start()
        self.listeners.append(listener)
        return listener

    def listen_ticks(self) -> Listener:
        return self.listen(Broadcast(BROADCAST_QUEUE, routing_key=BROADCAST_QUEUE))

    def listen_probe(self) -> Listener:
        return self.listen(Queue("probe", Exchange("probe"), routing_key="probe"))

    # --- what the bucket says ---------------------------------------------------
    def holder(self) -> BeatHolder | None:
        return self.runtime.run(self.beat_lease.read())

    def active_beat(self) -> str | None:
        """The name of the beat process holding the beat lease, or None."""
        holder = self.holder()
        if holder is None:
            return None
        pid = int(holder.beat_id.split("-")[-2])
        for name, process in self.processes.items():
            if name.startswith("beat") and process.pid == pid:
                return name
        return f"pid {pid}"

    def lease(self):
        return self.runtime.run(self.observer.read_lease())

    def nodes(self):
        return self.runtime.run(self.observer.nodes())

    def spread_over(self, names):
        shard_map = self.runtime.run(self.observer.read_shard_map())
        return shard_map if shard_map and set(shard_map.counts()) == set(names) else None

    def kill(self, name: str) -> None:
        self.processes[name].kill()
        self.processes[name].wait(10)

    def signal(self, name: str, signum: int) -> None:
        os.kill(self.processes[name].pid, signum)

    def stop_all(self) -> None:
        for listener in self.listeners:
            listener.stop()
        for process in self.processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")


class ActiveWatch:
    """Polls which beat is active every 50 ms, keeping each change with its time."""

    def __init__(self, cluster: BeatCluster) -> None:
        self.cluster = cluster
        self.changes: list[tuple[float, str | None]] = []
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            active = _try(self.cluster.active_beat)
            if not self.changes or self.changes[-1][1] != active:
                self.changes.append((time.monotonic(), active))
            time.sleep(0.05)

    def first(self, name: str, after: float) -> float | None:
        """When ``name`` was first seen active after ``after``."""
        return next((at for at, active in self.changes if at >= after and active == name), None)

    def stop(self) -> None:
        self._stop.set()


def _probe_gaps(probes: Listener, start: float, end: float) -> list[float]:
    times = [s.at for s in probes.between(start, end, "tests.probe")]
    return [b - a for a, b in itertools.pairwise(times)]


def _try(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception:
        return None


def _start(cluster: BeatCluster) -> dict[str, Any]:
    """Two workers and two beats; wait for a leader, an even map and one active beat."""
    cluster.worker("w1")
    cluster.worker("w2")
    cluster.beat("beat1")
    cluster.beat("beat2")
    lease = wait_until(cluster.lease, 60, interval=0.05)
    shard_map = wait_until(lambda: cluster.spread_over({"w1", "w2"}), 60)
    active = wait_until(cluster.active_beat, 30)
    assert active in {"beat1", "beat2"}
    return {"lease": lease, "map": shard_map, "active": active}


def test_timing_of_the_beat_lease():
    """The numbers docs/cluster.md gives: takeover well inside 3 x HEARTBEAT_INTERVAL."""
    timing = beat_timing(HEARTBEAT)
    assert timing == {"ttl": 2.0, "renew_every": 1.0, "fresh_for": 0.5, "poll_every": 0.2}
    assert timing["ttl"] + timing["poll_every"] < 3 * HEARTBEAT
    # A send needs a renewal younger than fresh_for; the lease outlives it by far.
    assert timing["fresh_for"] < timing["ttl"] - timing["renew_every"]


def test_killed_active_beat_is_replaced_and_the_cluster_does_not_notice(beat_cluster):
    cluster = beat_cluster
    started = _start(cluster)
    ticks = cluster.listen_ticks()
    probes = cluster.listen_probe()
    watch = ActiveWatch(cluster)
    old_active = started["active"]
    standby = "beat2" if old_active == "beat1" else "beat1"
    leader = cluster.lease()
    actor = f"order-{uuid.uuid4().hex[:8]}"
    wait_until(lambda: _try(lambda: send_command("test-orders", actor, "place", customer="c")), 30)
    listening = time.monotonic()
    time.sleep(4 * HEARTBEAT)  # the cluster settles; ticks flow

    cluster.kill(old_active)
    killed = time.monotonic()
    last_tick_before = max(s.at for s in ticks.between(0, killed))

    # For 15 s, every 0.5 s: the leader stays, no node is failed, a routed command
    # succeeds (each within 1 s); and the standby becomes active.
    samples = failed_seen = 0
    slowest = 0.0
    while time.monotonic() < killed + 15:
        sample_at = time.monotonic()
        lease = cluster.lease()
        assert lease is not None and lease.node_id == leader.node_id, lease
        assert lease.term == leader.term
        nodes = {n.node_id: n.status for n in cluster.nodes()}
        if any(status != "alive" for status in nodes.values()):
            failed_seen += 1
        began = time.monotonic()
        answer = send_command("test-orders", actor)
        slowest = max(slowest, time.monotonic() - began)
        assert answer["actor_id"] == actor
        samples += 1
        time.sleep(max(0.0, 0.5 - (time.monotonic() - sample_at)))

    first_tick_after = min(s.at for s in ticks.between(killed, killed + 15))
    gap = first_tick_after - last_tick_before
    active_at = watch.first(standby, killed)
    took_over = None if active_at is None else active_at - killed
    gaps = _probe_gaps(probes, listening, time.monotonic())
    print(
        f"\nactive beat {old_active} killed: {standby} active after {took_over:.2f}s; "
        f"tick gap {gap:.2f}s; {samples} samples, {failed_seen} with a failed node; "
        f"slowest command {slowest:.2f}s; probe gaps {[round(g, 2) for g in gaps]}"
    )
    assert took_over is not None and took_over <= 3 * HEARTBEAT, took_over
    assert failed_seen == 0, f"a node was reported failed (tick gap {gap:.2f}s)"
    assert slowest <= 1.0, slowest
    # The project's task (every 2 s) is never sent twice in one period, even by the
    # beat that took over: it went on from the send time the killed beat stored.
    assert len(gaps) >= 6 and min(gaps) >= 2.0 - 0.3, gaps

    # The killed beat comes back: it stands by; exactly one beat sends.
    cluster.beat(old_active)
    time.sleep(4 * HEARTBEAT)
    assert cluster.active_beat() == standby
    window_start = time.monotonic()
    time.sleep(5 * HEARTBEAT)
    sent = ticks.between(window_start, time.monotonic())
    senders = {s.beat.split()[0] for s in sent}
    assert len(senders) == 1 and cluster.holder().beat_id in senders, senders
    heartbeats = [s for s in sent if s.task == TICK_TASK]
    assert 4 <= len(heartbeats) <= 6, len(heartbeats)

    # A beat stopped normally (SIGTERM) releases the lease: the other takes over at once.
    cluster.signal(standby, signal.SIGTERM)
    stopped = time.monotonic()
    wait_until(lambda: cluster.active_beat() == old_active, 3 * HEARTBEAT, interval=0.05)
    handed_over = watch.first(old_active, stopped) or time.monotonic()
    print(f"{standby} stopped: {old_active} active after {handed_over - stopped:.2f}s")
    assert handed_over - stopped <= 1.5, handed_over - stopped
    watch.stop()


def test_paused_active_beat_resumes_as_standby_and_sends_nothing(beat_cluster):
    cluster = beat_cluster
    started = _start(cluster)
    ticks = cluster.listen_ticks()
    probes = cluster.listen_probe()
    watch = ActiveWatch(cluster)
    paused = started["active"]
    standby = "beat2" if paused == "beat1" else "beat1"
    leader = cluster.lease()
    time.sleep(3 * HEARTBEAT)
    paused_id = cluster.holder().beat_id

    cluster.signal(paused, signal.SIGSTOP)
    stopped = time.monotonic()
    wait_until(lambda: cluster.active_beat() == standby, 3 * HEARTBEAT + 1, interval=0.05)
    while time.monotonic() < stopped + 10:  # the takeover changes nothing in the cluster
        lease = cluster.lease()
        assert lease is not None and (lease.node_id, lease.term) == (leader.node_id, leader.term)
        assert all(n.status == "alive" for n in cluster.nodes())
        time.sleep(0.25)
    cluster.signal(paused, signal.SIGCONT)
    resumed = time.monotonic()
    active_at = watch.first(standby, stopped)
    assert active_at is not None

    # Afterwards, for 8 s: the leader never changes, no node fails, the standby stays
    # active, and the resumed beat sends nothing at all: not one stale tick, not one probe.
    while time.monotonic() < resumed + 8:
        lease = cluster.lease()
        assert lease is not None and (lease.node_id, lease.term) == (leader.node_id, leader.term)
        assert all(n.status == "alive" for n in cluster.nodes())
        assert cluster.active_beat() == standby
        time.sleep(0.25)
    after = ticks.between(resumed, time.monotonic())
    from_paused = [s for s in after if s.beat.split()[0] == paused_id]
    # Exactly one schedule: one heartbeat tick per interval, never two close together.
    heartbeats = [s.at for s in after if s.task == TICK_TASK]
    tick_gaps = [b - a for a, b in itertools.pairwise(heartbeats)]
    gaps = _probe_gaps(probes, stopped, time.monotonic())
    print(
        f"\n{paused} paused 10 s: {standby} active after {active_at - stopped:.2f}s; "
        f"after resuming: {len(from_paused)} messages from {paused}, {len(heartbeats)} "
        f"heartbeat ticks in 8 s, {min(tick_gaps):.2f}-{max(tick_gaps):.2f}s apart; "
        f"probe gaps {[round(g, 2) for g in gaps]}"
    )
    assert active_at - stopped <= 3 * HEARTBEAT
    assert from_paused == []
    assert 7 <= len(heartbeats) <= 9, heartbeats
    assert min(tick_gaps) >= 0.5 * HEARTBEAT and max(tick_gaps) <= 1.5 * HEARTBEAT, tick_gaps
    assert gaps and min(gaps) >= 2.0 - 0.3, gaps
    log = cluster.log(paused)
    assert "lost the beat lease" in log
    watch.stop()
