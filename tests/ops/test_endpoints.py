"""Health, readiness, Prometheus metrics (each one shown to move) and JSON logs."""

from __future__ import annotations

import json
import logging
import threading
import uuid

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings

from aether_django import metrics
from aether_django.cluster.coordinator import ClusterConfig, Coordinator
from aether_django.errors import VersionConflictError
from aether_django.logging import JSONFormatter
from aether_django.runtime import Runtime, get_runtime
from aether_django.store import get_event_store
from aether_django.testing.contract import ev

from ..cluster.nodes import NodeProcess, wait_until


def test_health_and_readiness():
    client = Client()
    assert client.get("/aether/healthz/").json() == {"status": "ok"}
    ready = client.get("/aether/readyz/")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_readiness_fails_when_nats_is_away(monkeypatch):
    from aether_django.testing import find_free_port

    monkeypatch.setenv("AETHER_NATS_URL", f"nats://127.0.0.1:{find_free_port()}")
    with override_settings(AETHER={"TIMEOUT": 1.0}):
        response = Client().get("/aether/readyz/")
    assert response.status_code == 503 and response.json()["status"] == "unavailable"


@pytest.mark.django_db
def test_metrics_count_saves_conflicts_and_latency():
    ns = f"met-{uuid.uuid4().hex[:8]}"
    store = get_event_store(ns)
    store.save_event(ev("a", 1))
    store.save_event(ev("a", 2))
    with pytest.raises(VersionConflictError):
        store.save_event(ev("a", 2))
    assert metrics.SAVES.value(namespace=ns) == 2
    assert metrics.SAVE_CONFLICTS.value(namespace=ns) == 1
    staff = Client()
    staff.force_login(User.objects.create_user("ops", password="pw", is_staff=True))
    text = staff.get("/aether/metrics/").content.decode()
    assert f'aether_saves_total{{namespace="{ns}"}} 2.0' in text
    assert f'aether_save_conflicts_total{{namespace="{ns}"}} 1.0' in text
    assert "# TYPE aether_save_seconds histogram" in text
    assert 'aether_save_seconds_bucket{le="+Inf"}' in text
    for name in (
        "aether_bus_lag_seconds",
        "aether_bus_subscriptions",
        "aether_cluster_nodes",
        "aether_leader_changes_total",
        "aether_shard_moves_total",
    ):
        assert f"# TYPE {name}" in text


@pytest.mark.django_db
def test_metrics_need_staff_or_the_token():
    assert Client().get("/aether/metrics/").status_code == 401
    plain = Client()
    plain.force_login(User.objects.create_user("plain", password="pw"))
    assert plain.get("/aether/metrics/").status_code == 401
    with override_settings(AETHER={"METRICS_TOKEN": "s3cret"}):
        client = Client()
        assert client.get("/aether/metrics/", HTTP_AUTHORIZATION="Bearer nope").status_code == 401
        assert client.get("/aether/metrics/", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200


def test_histogram_buckets_are_cumulative():
    histogram = metrics.Histogram("test_hist_seconds", "test", [0.1, 1.0])
    metrics._metrics.remove(histogram)  # not one of the library's: keep it out of /metrics
    for value in (0.05, 0.5, 5.0):
        histogram.observe(value)
    lines = histogram.lines()
    assert 'test_hist_seconds_bucket{le="0.1"} 1.0' in lines
    assert 'test_hist_seconds_bucket{le="1.0"} 2.0' in lines
    assert 'test_hist_seconds_bucket{le="+Inf"} 3.0' in lines
    assert "test_hist_seconds_count 3.0" in lines


def test_json_logs():
    record = logging.LogRecord(
        "aether_django.x", logging.WARNING, "f.py", 1, "hello %s", ("you",), None
    )
    record.node = "node-a"
    doc = json.loads(JSONFormatter().format(record))
    assert doc["message"] == "hello you" and doc["level"] == "WARNING" and doc["node"] == "node-a"
    assert doc["logger"] == "aether_django.x" and doc["time"].endswith("+00:00")


# --- every listed metric moves ------------------------------------------------------------
def scrape(client: Client) -> dict[str, float]:
    """The samples of a /metrics answer, keyed by name and labels as exposed."""
    response = client.get("/aether/metrics/")
    assert response.status_code == 200
    samples = {}
    for line in response.content.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


@pytest.fixture
def staff_client(db) -> Client:
    client = Client()
    client.force_login(User.objects.create_user(f"ops-{uuid.uuid4().hex[:6]}", is_staff=True))
    return client


def test_the_bus_metrics_count_deliveries_and_lag_and_follow_the_subscribers(staff_client):
    from aether_django.bus import Delivery, get_event_bus

    ns = f"met-{uuid.uuid4().hex[:8]}"
    store = get_event_store(ns)
    store.save_event(ev("a", 1))  # the stream exists before subscribing
    before = scrape(staff_client)
    # The lag histogram samples one delivery in 16 of each feed: deliver 16.
    received: list[int] = []
    all_received = threading.Event()

    def on_delivery(delivery: Delivery) -> None:
        received.append(delivery.event.version)
        if len(received) == 16:
            all_received.set()

    subscription = get_event_bus().subscribe(ns, callback=on_delivery)
    try:
        subscribed = scrape(staff_client)
        assert subscribed["aether_bus_subscriptions"] == before["aether_bus_subscriptions"] + 1
        store.save_events([ev("a", version) for version in range(2, 18)])
        assert all_received.wait(10)
        after = scrape(staff_client)
        delivered = after["aether_bus_delivered_total"] - before.get(
            "aether_bus_delivered_total", 0
        )
        assert delivered >= 16
        lag_count = after["aether_bus_lag_seconds_count"]
        assert lag_count >= before.get("aether_bus_lag_seconds_count", 0) + 1
        assert after['aether_bus_lag_seconds_bucket{le="+Inf"}'] == lag_count
    finally:
        subscription.close()
    closed = wait_until(
        lambda: (
            (s := scrape(staff_client))["aether_bus_subscriptions"]
            == before["aether_bus_subscriptions"]
            and s
        ),
        timeout=5,
    )
    assert closed["aether_bus_subscriptions"] == before["aether_bus_subscriptions"]


def test_a_node_counts_the_leases_it_takes_and_the_shards_its_rebalances_move(aether_nats_url):
    """The process-local counters of a node process (its own leadership and moves)."""
    leader_changes = metrics.LEADER_CHANGES.value()
    shard_moves = metrics.SHARD_MOVES.value()
    runtime = Runtime(aether_nats_url)
    config = ClusterConfig(bucket=f"met_{uuid.uuid4().hex[:8]}", num_shards=100)
    node = Coordinator(runtime, "node-m", config)
    try:
        runtime.run(node.tick())
        assert metrics.LEADER_CHANGES.value() == leader_changes + 1
        assert metrics.SHARD_MOVES.value() == shard_moves + 100
        runtime.run(node.tick())  # renewing is no change of leader, and nothing moves
        assert metrics.LEADER_CHANGES.value() == leader_changes + 1
        assert metrics.SHARD_MOVES.value() == shard_moves + 100
    finally:
        runtime.run(node.leave())
        runtime.close()


def test_the_metrics_endpoint_reads_the_cluster_that_node_processes_run(staff_client):
    """Two `aether_node` processes (no HTTP) lead and rebalance; this process's /metrics
    reports their nodes, leader, term, shards and moves, read from the cluster bucket."""
    bucket = f"met_{uuid.uuid4().hex[:8]}"
    with override_settings(AETHER={**settings.AETHER, "CLUSTER_BUCKET": bucket}):
        empty = scrape(staff_client)
        assert empty["aether_cluster_readable"] == 1
        assert empty['aether_cluster_nodes{status="alive"}'] == 0
        assert empty["aether_cluster_leader_term"] == 0
        assert empty["aether_cluster_shard_moves_total"] == 0

        a = NodeProcess("node-ma", bucket)
        b = None
        try:
            # a alone: leader, owns the 100 shards, which all moved to it.
            one = wait_until(
                lambda: (
                    (s := scrape(staff_client)).get('aether_cluster_shards{node="node-ma"}') == 100
                    and s
                ),
                timeout=30,
            )
            assert one['aether_cluster_nodes{status="alive"}'] == 1
            assert one['aether_cluster_leader{node="node-ma"}'] == 1
            first_term = one["aether_cluster_leader_term"]
            assert first_term > 0
            assert one["aether_cluster_shard_moves_total"] == 100

            # b joins: half the shards move to it; the leader and term stay.
            b = NodeProcess("node-mb", bucket)
            two = wait_until(
                lambda: (
                    (s := scrape(staff_client)).get('aether_cluster_shards{node="node-mb"}') == 50
                    and s
                ),
                timeout=30,
            )
            assert two['aether_cluster_shards{node="node-ma"}'] == 50
            assert two['aether_cluster_nodes{status="alive"}'] == 2
            assert two["aether_cluster_leader_term"] == first_term
            assert two["aether_cluster_shard_moves_total"] == 150

            # a stops (it leaves, giving up the lease): b leads in a new term and takes
            # a's 50 shards back; a is listed as failed.
            a.stop()
            three = wait_until(
                lambda: (
                    (s := scrape(staff_client)).get('aether_cluster_shards{node="node-mb"}') == 100
                    and s
                ),
                timeout=30,
            )
            assert three['aether_cluster_leader{node="node-mb"}'] == 1
            assert 'aether_cluster_leader{node="node-ma"}' not in three
            assert three["aether_cluster_leader_term"] > first_term
            assert three['aether_cluster_nodes{status="alive"}'] == 1
            assert three['aether_cluster_nodes{status="failed"}'] == 1
            assert three["aether_cluster_shard_moves_total"] == 200
        finally:
            a.stop()
            if b is not None:
                b.stop()


def test_cluster_figures_are_marked_unreadable_when_nats_is_away(monkeypatch):
    from aether_django.testing import find_free_port

    monkeypatch.setenv("AETHER_NATS_URL", f"nats://127.0.0.1:{find_free_port()}")
    with override_settings(AETHER={"TIMEOUT": 1.0, "METRICS_TOKEN": "t0ken"}):
        response = Client().get("/aether/metrics/", HTTP_AUTHORIZATION="Bearer t0ken")
    assert response.status_code == 200
    text = response.content.decode()
    assert "\naether_cluster_readable 0.0\n" in text
    # No stale or made-up figure: the cluster families are there, without samples.
    assert "# TYPE aether_cluster_leader_term gauge\n# HELP" in text
    assert "aether_cluster_nodes{" not in text


# --- structured logs ----------------------------------------------------------------------
def test_a_real_leader_election_is_logged_as_json_with_its_node_and_term(aether_nats_url):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign,assignment]
    coordinator_logger = logging.getLogger("aether_django.cluster.coordinator")
    coordinator_logger.addHandler(handler)
    previous_level = coordinator_logger.level
    coordinator_logger.setLevel(logging.INFO)
    runtime = Runtime(aether_nats_url)
    node = Coordinator(
        runtime, "node-log", ClusterConfig(bucket=f"log_{uuid.uuid4().hex[:8]}", num_shards=100)
    )
    try:
        lease = runtime.run(node.tick())
    finally:
        coordinator_logger.removeHandler(handler)
        coordinator_logger.setLevel(previous_level)
        runtime.run(node.leave())
        runtime.close()
    docs = [json.loads(JSONFormatter().format(record)) for record in records]
    elected = next(doc for doc in docs if doc["message"].endswith(f"is leader (term {lease.term})"))
    assert elected["node"] == "node-log" and elected["term"] == lease.term
    assert elected["logger"] == "aether_django.cluster.coordinator" and elected["level"] == "INFO"
    moved = next(doc for doc in docs if doc["message"].startswith("leader node-log moved"))
    assert (moved["node"], moved["term"], moved["moved"], moved["nodes"]) == (
        "node-log",
        lease.term,
        100,
        1,
    )


def test_json_logs_keep_lists_and_write_what_json_cannot_hold_as_repr():
    record = logging.LogRecord("aether_django.x", logging.WARNING, "f.py", 1, "m", (), None)
    record.failed = ["node-a", "node-b"]
    record.odd = {("a", 1): object()}
    doc = json.loads(JSONFormatter().format(record))
    assert doc["failed"] == ["node-a", "node-b"] and doc["odd"].startswith("{('a', 1)")


def test_a_node_failure_found_by_the_leaders_task_is_logged_with_leader_term_and_failed(
    aether_nats_url,
):
    from aether_django import tasks

    leader_id = f"node-{uuid.uuid4().hex[:6]}"  # tasks keep one coordinator per node id
    bucket = f"log_{uuid.uuid4().hex[:8]}"
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign,assignment]
    tasks_logger = logging.getLogger("aether_django.tasks")
    tasks_logger.addHandler(handler)
    runtime = Runtime(aether_nats_url)
    other = Coordinator(runtime, "node-gone", ClusterConfig(bucket=bucket, num_shards=100))
    aether = {**settings.AETHER, "NODE_ID": leader_id, "CLUSTER_BUCKET": bucket}
    try:
        with override_settings(AETHER=aether):
            runtime.run(other.heartbeat())
            tasks.heartbeat()
            tasks.elect_or_renew()  # the leader's first map gives node-gone half the shards
            lease = tasks.get_coordinator().lease
            assert lease is not None and lease.node_id == leader_id
            runtime.run(other.leave())
            assert tasks.detect_failures() == ["node-gone"]
            get_runtime().run(tasks.get_coordinator().leave())  # on its own runtime
    finally:
        tasks_logger.removeHandler(handler)
        runtime.close()
    (doc,) = [
        json.loads(JSONFormatter().format(r)) for r in records if r.msg.startswith("nodes failed")
    ]
    assert doc["message"] == "nodes failed: node-gone; rebalancing"
    assert (doc["node"], doc["term"], doc["failed"]) == (leader_id, lease.term, ["node-gone"])
    assert doc["level"] == "WARNING" and doc["logger"] == "aether_django.tasks"
