"""The operations commands: aether_status, aether_streams, aether_replay."""

from __future__ import annotations

import io
import json
import uuid

import nats
import pytest
from django.core.management import CommandError, call_command

from aether_django.events import ActorSnapshot
from aether_django.store import get_event_store
from aether_django.testing.contract import ev


def run(*args, **options):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def test_aether_status_shows_streams_and_cluster():
    ns = f"ops-{uuid.uuid4().hex[:8]}"
    get_event_store(ns).save_event(ev("a", 1))
    get_event_store(ns).save_event(ev("b", 1))
    out, _ = run("aether_status", "--json")
    status = json.loads(out)
    assert {"name": ns, "events": 2, "actors": 2} == {
        k: v
        for k, v in next(n for n in status["namespaces"] if n["name"] == ns).items()
        if k != "bytes"
    }
    assert status["num_shards"] == 100 and "leader" in status
    text, _ = run("aether_status")
    assert ns in text and "Leader" in text


def test_aether_streams_creates_and_checks(nats_url):
    ns = f"ops-{uuid.uuid4().hex[:8]}"
    with pytest.raises(CommandError):
        run("aether_streams", ns, "--check")
    out, _ = run("aether_streams", ns)
    assert f"created stream {ns}_events" in out and f"created bucket {ns}_snapshots" in out
    out, _ = run("aether_streams", ns, "--check")
    assert f"{ns}: ok" in out
    # A registered aggregate's namespace is included by default.
    from ..aggregates import domain  # noqa: F401  (registers test-orders)

    out, _ = run("aether_streams")
    assert "test-orders" in out


def test_aether_replay_reports_decoding_errors_and_rebuilds_aggregates(nats_url):
    import asyncio

    ns = f"ops-{uuid.uuid4().hex[:8]}"
    store = get_event_store(ns)
    store.save_events([ev("a", 1), ev("a", 2)])
    store.save_event(ev("b", 1))
    out, _ = run("aether_replay", ns)
    assert "2 actors, 3 events, 0 replay errors, no aggregate class" in out

    async def corrupt():
        nc = await nats.connect(nats_url)
        await nc.jetstream().publish(store.subject_for("b"), b"garbage")  # type: ignore[attr-defined]
        await nc.close()

    asyncio.run(corrupt())
    with pytest.raises(CommandError):
        run("aether_replay", ns)


def test_aether_replay_verifies_snapshots_of_an_aggregate():
    from ..aggregates.domain import Counter

    actor = f"counter-{uuid.uuid4().hex[:8]}"
    counter = Counter.objects.create(actor)
    for i in range(30):
        counter.increment(by=str(i))
    counter.save()  # crosses 25: a snapshot at 30
    out, _ = run("aether_replay", "test-counters", "--verify", "--no-progress")
    assert "0 replay errors, 0 actors not rebuilt, 0 snapshot mismatches" in out
    # A snapshot that disagrees with the history is found.
    bad = {
        "aggregate": Counter._meta.label,
        "snapshot_version": 1,
        "state": {"count": 999, "seen": []},
    }
    Counter.get_store().save_snapshot(ActorSnapshot(actor_id=actor, version=30, state=bad))
    with pytest.raises(CommandError):
        out, _ = run("aether_replay", "test-counters", "--verify", "--no-progress")


def test_aether_replay_refuses_a_bad_namespace():
    with pytest.raises(CommandError):
        run("aether_replay", "bad..ns")
