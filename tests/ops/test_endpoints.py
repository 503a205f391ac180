"""Health, readiness, Prometheus metrics and JSON logs."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

from aether_django import metrics
from aether_django.errors import VersionConflictError
from aether_django.logging import JSONFormatter
from aether_django.store import get_event_store
from aether_django.testing.contract import ev


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
    for value in (0.05, 0.5, 5.0):
        histogram.observe(value)
    lines = histogram.lines()
    assert 'test_hist_seconds_bucket{le="0.1"} 1' in lines
    assert 'test_hist_seconds_bucket{le="1.0"} 2' in lines
    assert 'test_hist_seconds_bucket{le="+Inf"} 3' in lines
    assert "test_hist_seconds_count 3" in lines


def test_json_logs():
    record = logging.LogRecord(
        "aether_django.x", logging.WARNING, "f.py", 1, "hello %s", ("you",), None
    )
    record.node = "node-a"
    doc = json.loads(JSONFormatter().format(record))
    assert doc["message"] == "hello you" and doc["level"] == "WARNING" and doc["node"] == "node-a"
    assert doc["logger"] == "aether_django.x" and doc["time"].endswith("+00:00")
