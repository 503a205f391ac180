"""The Celery tasks of ``aether_django.tasks``, called directly, and the helpers that wire them.

Each task is run in this process as a given node (``AETHER["NODE_ID"]``) against a
real nats-server and a fresh cluster bucket; an observer with a connection of its
own reads what they wrote. The real worker and beat are in test_celery_cluster.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery
from django.conf import settings
from django.test import override_settings

from aether_django import tasks
from aether_django.cluster.coordinator import ClusterConfig, Coordinator
from aether_django.runtime import Runtime

SHARDS = 20
TASK_NAMES = [f"aether_django.{name}" for name in tasks._TASKS]


class Cluster:
    """Settings that make this process a named node of a fresh bucket, and an observer."""

    def __init__(self, aether_nats_url: str) -> None:
        self.bucket = f"cluster_{uuid.uuid4().hex[:8]}"
        self.runtime = Runtime(aether_nats_url)
        self.observer = Coordinator(
            self.runtime, "observer", ClusterConfig(bucket=self.bucket, num_shards=SHARDS)
        )

    def node(self, name: str) -> AbstractContextManager[Any]:
        """Within the block, the tasks run as node ``name``."""
        aether = {
            **settings.AETHER,
            "CLUSTER_BUCKET": self.bucket,
            "NODE_ID": name,
            "NUM_SHARDS": SHARDS,
        }
        return override_settings(AETHER=aether)

    def run(self, coro: Any) -> Any:
        return self.runtime.run(coro)

    def lease(self) -> Any:
        return self.run(self.observer.read_lease())

    def shard_map(self) -> Any:
        return self.run(self.observer.read_shard_map())

    def short_lived(self, name: str) -> Coordinator:
        """A node whose heartbeat lives one second (so that it can die quickly)."""
        config = ClusterConfig(bucket=self.bucket, num_shards=SHARDS, failure_timeout=1.0)
        return Coordinator(self.runtime, name, config)


@pytest.fixture
def cluster(aether_nats_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    monkeypatch.delenv("AETHER_NODE_ID", raising=False)  # it would win over NODE_ID
    c = Cluster(aether_nats_url)
    yield c
    c.runtime.close()


def test_each_task_run_twice_changes_nothing_the_second_time(cluster: Cluster) -> None:
    with cluster.node("node-a"):
        assert tasks.heartbeat() == "node-a"
        assert tasks.heartbeat() == "node-a"
    assert cluster.run(cluster.observer.alive_nodes()) == ["node-a"]
    assert cluster.lease() is None and cluster.shard_map() is None  # beats write neither

    with cluster.node("node-a"):
        assert tasks.elect_or_renew() == "node-a"
        elected, first = cluster.lease(), cluster.shard_map()
        assert tasks.elect_or_renew() == "node-a"
    renewed = cluster.lease()
    assert (renewed.node_id, renewed.term) == ("node-a", elected.term)  # same term
    assert renewed.revision > elected.revision  # the second call only renewed
    # Taking the lease wrote the map in the same task; renewing did not write it again.
    assert first.counts() == {"node-a": SHARDS} and first.term == elected.term
    assert cluster.shard_map().revision == first.revision

    with cluster.node("node-a"):
        assert tasks.rebalance() == 0
        assert tasks.rebalance() == 0
        assert tasks.detect_failures() == []
        assert tasks.detect_failures() == []
    assert cluster.shard_map().revision == first.revision
    assert cluster.lease().term == elected.term


def test_leader_only_tasks_write_nothing_on_a_node_that_does_not_lead(cluster: Cluster) -> None:
    doomed = cluster.short_lived("node-x")
    cluster.run(doomed.heartbeat())
    with cluster.node("node-a"):
        tasks.heartbeat()
        assert tasks.elect_or_renew() == "node-a"  # and it writes the map at once
        assert tasks.rebalance() == 0
    with cluster.node("node-b"):
        tasks.heartbeat()
    spread = cluster.shard_map()
    assert sorted(spread.counts()) == ["node-a", "node-x"]  # node-b came after

    # node-x stops beating and its heartbeat expires: there is work for a leader.
    deadline = time.monotonic() + 5
    while "node-x" in cluster.run(cluster.observer.alive_nodes()):
        assert time.monotonic() < deadline, "node-x's heartbeat did not expire"
        time.sleep(0.1)
    lease = cluster.lease()

    with cluster.node("node-b"):
        assert tasks.elect_or_renew() == "node-a"  # it sees the holder, takes nothing
        assert tasks.detect_failures() == []
        assert tasks.rebalance() == 0
    assert cluster.lease() == lease  # not renewed, not taken
    assert cluster.shard_map().revision == spread.revision  # not written

    # The leader does the work once; doing it again changes nothing.
    with cluster.node("node-a"):
        assert tasks.detect_failures() == ["node-x"]
        moved = cluster.shard_map()
        assert tasks.detect_failures() == []
        assert tasks.rebalance() == 0
    assert sorted(moved.counts()) == ["node-a", "node-b"] and moved.term == lease.term
    assert cluster.shard_map().revision == moved.revision


def test_the_beat_schedule_sends_one_tick_every_heartbeat_to_the_fanout_exchange() -> None:
    with override_settings(AETHER={**settings.AETHER, "HEARTBEAT_INTERVAL": 2.5}):
        config = tasks.cluster_celery_config()
    schedule = config["beat_schedule"]
    assert sorted(schedule) == [tasks.TICK_TASK]
    entry = schedule[tasks.TICK_TASK]
    assert entry["task"] == tasks.TICK_TASK
    assert entry["schedule"] == timedelta(seconds=2.5)
    assert entry["options"]["expires"] == 2.5  # a tick older than an interval is dropped
    for name in [tasks.TICK_TASK, *TASK_NAMES]:
        route = config["task_routes"][name]
        assert route["queue"] == route["exchange"] == tasks.BROADCAST_QUEUE
        assert route["exchange_type"] == "fanout"
        assert route["declare"][0].type == "fanout"
    # The pool does not consume the exchange: the worker's main process does.
    assert "task_queues" not in config


def test_setting_up_the_cluster_keeps_the_projects_own_beat_schedule() -> None:
    app = Celery("a-project", set_as_current=False)
    mine = {"task": "shop.tasks.nightly_report", "schedule": timedelta(hours=24)}
    app.conf.beat_schedule = {"nightly-report": mine}
    tasks.setup_cluster(app)
    tasks.setup_cluster(app)  # twice is once
    schedule = app.conf.beat_schedule
    assert schedule["nightly-report"] == mine
    assert set(schedule) == {"nightly-report", tasks.TICK_TASK}
    assert app.conf.task_routes["aether_django.heartbeat"]["queue"] == tasks.BROADCAST_QUEUE
    assert list(app.steps["worker"]).count(tasks.ClusterStep) == 1


def test_a_tick_older_than_its_expiry_is_stale() -> None:
    now = datetime.now(UTC)
    assert tasks._expired((now - timedelta(seconds=0.1)).isoformat())
    assert not tasks._expired((now + timedelta(seconds=1)).isoformat())
    assert not tasks._expired(None)
