"""The beat lease and the leased scheduler's wiring, in one process against a real nats-server."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from celery import Celery

from aether_django import tasks
from aether_django.beat import LEASED_SCHEDULER, BeatLeaseMixin, LeasedScheduler
from aether_django.cluster.beatlease import BeatLease
from aether_django.cluster.coordinator import ClusterConfig
from aether_django.runtime import Runtime


@pytest.fixture
def runtime(aether_nats_url):
    runtime = Runtime(aether_nats_url)
    yield runtime
    runtime.close()


@pytest.fixture
def config():
    return ClusterConfig(bucket=f"beat_{uuid.uuid4().hex[:8]}")


def test_one_beat_holds_the_lease_and_renews_it_while_another_stands_by(runtime, config):
    a = BeatLease(runtime, "beat-a", config)
    b = BeatLease(runtime, "beat-b", config)
    holder = runtime.run(a.acquire_or_renew())
    assert holder is not None and holder.beat_id == "beat-a" and a.held == holder
    assert runtime.run(b.acquire_or_renew()) == holder and b.held is None
    renewed = runtime.run(a.acquire_or_renew())
    assert renewed.revision > holder.revision and renewed.term == holder.term
    assert runtime.run(b.read()) == renewed


def test_a_lease_not_renewed_expires_and_the_standby_takes_it(runtime, config):
    a = BeatLease(runtime, "beat-a", config, ttl=1.0)
    b = BeatLease(runtime, "beat-b", config, ttl=1.0)
    first = runtime.run(a.acquire_or_renew())
    started = time.monotonic()
    while runtime.run(b.acquire_or_renew()).beat_id != "beat-b":
        assert time.monotonic() - started < 3.0, "the lease did not expire"
        time.sleep(0.05)
    assert b.held is not None and b.held.term > first.term
    # The paused holder's renewal is refused: the revision it expects moved on.
    assert runtime.run(a.acquire_or_renew()).beat_id == "beat-b"
    assert a.held is None


def test_a_lease_written_under_its_own_id_is_taken_back_and_renewed_at_once(runtime, config):
    # As when a renewal was stored but its reply never came: the beat does not know
    # it holds the lease, finds its own id on it, and renews it (a fresh write).
    before = runtime.run(BeatLease(runtime, "beat-a", config).acquire_or_renew())
    again = BeatLease(runtime, "beat-a", config)
    holder = runtime.run(again.acquire_or_renew())
    assert again.held == holder and holder.term == before.term
    assert holder.revision > before.revision


def test_the_ttl_is_rounded_up_to_whole_seconds(runtime, config):
    # The server counts message TTLs in whole seconds: 1.5 s would live 1 s.
    assert BeatLease(runtime, "x", config, ttl=1.5).ttl == 2.0
    assert BeatLease(runtime, "x", config, ttl=0.2).ttl == 1.0
    assert BeatLease(runtime, "x", config, ttl=2.0).ttl == 2.0


def test_a_released_lease_is_taken_at_once(runtime, config):
    a = BeatLease(runtime, "beat-a", config)
    b = BeatLease(runtime, "beat-b", config)
    runtime.run(a.acquire_or_renew())
    runtime.run(a.release())
    assert runtime.run(b.read()) is None
    assert runtime.run(b.acquire_or_renew()).beat_id == "beat-b"


def test_send_times_are_stored_only_by_the_holder(runtime, config):
    a = BeatLease(runtime, "beat-a", config, ttl=1.0)
    b = BeatLease(runtime, "beat-b", config, ttl=1.0)
    runtime.run(a.acquire_or_renew())
    assert runtime.run(a.renew_with_runs({"report": 100.0})) is not None
    assert runtime.run(b.read_runs()) == {"report": 100.0}
    # b takes over once a's lease expired; a's late write is refused whole.
    while runtime.run(b.acquire_or_renew()).beat_id != "beat-b":
        time.sleep(0.05)
    assert runtime.run(a.renew_with_runs({"report": 200.0})) is None and a.held is None
    assert runtime.run(b.read_runs()) == {"report": 100.0}


def test_setup_cluster_makes_beat_use_the_leased_scheduler():
    app = Celery("a-project", set_as_current=False)
    tasks.setup_cluster(app)
    assert app.conf.beat_scheduler == LEASED_SCHEDULER
    assert issubclass(LeasedScheduler, BeatLeaseMixin)


def test_a_projects_own_scheduler_is_kept_with_a_warning(caplog):
    app = Celery("a-project", set_as_current=False)
    app.conf.beat_scheduler = "django_celery_beat.schedulers:DatabaseScheduler"
    with caplog.at_level(logging.WARNING, logger="aether_django.beat"):
        tasks.setup_cluster(app)
    assert app.conf.beat_scheduler == "django_celery_beat.schedulers:DatabaseScheduler"
    assert "BeatLeaseMixin" in caplog.text
