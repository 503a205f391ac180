"""The NATS users docker-compose.yml defines, on a real nats-server with that configuration.

The accounts block is taken from the compose file itself, so what is tested is what
is deployed: the web application's user can do its work but can neither serve a shard
nor touch the cluster's state, the workers' user runs the cluster, and nobody gets in
without a password.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path

import nats
import nats.errors
import pytest
from django.conf import settings
from django.test import override_settings

from aether_django.bus.nats import NATSEventBus
from aether_django.cluster.beatlease import BeatLease
from aether_django.cluster.coordinator import ClusterConfig
from aether_django.cluster.hashring import shard_for
from aether_django.events import ActorSnapshot
from aether_django.runtime import Runtime, get_runtime
from aether_django.sharding.node import ClusterNode
from aether_django.sharding.routing import send, shard_subject
from aether_django.store.jetstream import JetStreamEventStore
from aether_django.testing.contract import ev, unique_namespace

from ..aggregates.domain import Order

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
PASSWORDS = {
    "NATS_APP_PASSWORD": "appSecret7x",
    "NATS_WORKER_PASSWORD": "workerSecret9y",
    "NATS_BEAT_PASSWORD": "beatSecret3z",
}


def auth_config() -> str:
    import yaml

    content = yaml.safe_load(COMPOSE.read_text())["configs"]["nats-auth"]["content"]
    return content.replace("$$", "$")  # compose's escape for a literal "$"


@pytest.fixture
def secured(aether_nats_server_factory, monkeypatch):
    """A nats-server with the compose file's users; the passwords in its environment."""
    for name, value in PASSWORDS.items():
        monkeypatch.setenv(name, value)
    server = aether_nats_server_factory(extra_config=auth_config())
    # This process's own runtime (stores, shard host, coordinator) is a worker.
    monkeypatch.setenv("AETHER_NATS_URL", server.url)
    worker_options = {"user": "worker", "password": PASSWORDS["NATS_WORKER_PASSWORD"]}
    aether = {
        **settings.AETHER,
        "NATS_OPTIONS": worker_options,
        "CLUSTER_BUCKET": "aether_cluster",
        "NUM_SHARDS": 100,
    }
    with override_settings(AETHER=aether):
        yield server


def test_the_compose_file_gives_each_role_a_user():
    compose = __import__("yaml").safe_load(COMPOSE.read_text())
    services = compose["services"]
    for name in ("nats-1", "nats-2", "nats-3"):
        assert "--config /etc/nats/nats-server.conf" in services[name]["command"]
        assert {"source": "nats-auth", "target": "/etc/nats/auth.conf"} in services[name]["configs"]
        assert set(services[name]["environment"]) == set(PASSWORDS)
    assert "include ./auth.conf" in compose["configs"]["nats-server"]["content"]
    users = {
        name: service.get("environment", {}).get("AETHER_NATS_USER")
        for name, service in services.items()
    }
    assert users["app"] == "app" and users["worker"] == "worker"
    assert users["beat"] == users["beat-2"] == "beat"
    assert users["migrate"] is None  # it does not use NATS
    # No password is written in the file: each comes from the environment.
    assert services["app"]["environment"]["AETHER_NATS_PASSWORD"].startswith(
        "${NATS_APP_PASSWORD:?"
    )
    assert services["worker"]["environment"]["AETHER_NATS_PASSWORD"].startswith(
        "${NATS_WORKER_PASSWORD:?"
    )
    for name in ("beat", "beat-2"):
        assert services[name]["environment"]["AETHER_NATS_PASSWORD"].startswith(
            "${NATS_BEAT_PASSWORD:?"
        )


def test_the_example_settings_pass_the_user_to_nats(monkeypatch):
    import importlib

    import example_project.settings as example

    monkeypatch.setenv("AETHER_NATS_USER", "app")
    monkeypatch.setenv("AETHER_NATS_PASSWORD", "s3cret")
    try:
        reloaded = importlib.reload(example)
        assert reloaded.AETHER["NATS_OPTIONS"] == {"user": "app", "password": "s3cret"}
    finally:
        monkeypatch.delenv("AETHER_NATS_USER")
        importlib.reload(example)


async def test_without_a_password_nobody_connects(secured):
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        await nats.connect(secured.url, allow_reconnect=False, connect_timeout=2)
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        await nats.connect(
            secured.url, user="app", password="wrong", allow_reconnect=False, connect_timeout=2
        )


async def test_each_role_can_do_its_work_and_the_app_cannot_pose_as_a_node(secured, caplog):
    app = Runtime(secured.url, options={"user": "app", "password": PASSWORDS["NATS_APP_PASSWORD"]})
    node = ClusterNode(
        get_runtime(), "worker-1", ClusterConfig(bucket="aether_cluster", num_shards=100)
    )
    bus = NATSEventBus(runtime=app, node_id="web", timeout=5)
    try:
        # The worker runs the cluster: heartbeat, lease, shard map, serving shards.
        await node.tick()
        lease = await node.coordinator.read_lease()
        assert lease is not None and lease.node_id == "worker-1"
        assert len(node.host.shards) == 100

        # The app sends commands (served by the worker, which stores the events) ...
        actor = f"order-{uuid.uuid4().hex[:8]}"
        placed = await send(app, "test-orders", actor, "place", num_shards=100, customer="ann")
        assert (placed["node"], placed["version"]) == ("worker-1", 1)
        # ... and saves and reads events and snapshots, and follows them on the bus.
        ns = unique_namespace()
        store = JetStreamEventStore(ns, runtime=app)
        subscription = await bus.asubscribe(ns)
        await asyncio.sleep(0.2)
        stored = await store.asave_events([ev("a-1", 1), ev("a-1", 2)])
        assert [e.version for e in await store.aget_events("a-1")] == [1, 2]
        delivered = [await subscription.next(5) for _ in range(2)]
        assert [d.sequence for d in delivered] == [e.sequence for e in stored]
        await store.asave_snapshot(ActorSnapshot(actor_id="a-1", version=2, state={"n": 2}))
        snapshot = await store.aget_latest_snapshot("a-1")
        assert snapshot is not None and snapshot.version == 2
        # (The worker stored the placed order's event.)
        assert [e.event_type for e in await Order.get_store().aget_events(actor)] == ["OrderPlaced"]

        nc = await app.connection()
        # The app cannot serve a shard: its subscription is refused, so a command on
        # that subject still reaches only the worker.
        stolen: list[bytes] = []

        async def pose_as_owner(msg):
            stolen.append(msg.data)
            await msg.respond(json.dumps({"version": 999}).encode())

        with caplog.at_level(logging.ERROR, logger="aether_django.runtime"):
            await nc.subscribe(shard_subject(shard_for(actor, 100)), cb=pose_as_owner)
            await nc.flush()
            await asyncio.sleep(0.3)
        assert any("permissions violation" in r.getMessage().lower() for r in caplog.records)
        for _ in range(5):
            answer = await send(app, "test-orders", actor, None, num_shards=100)
            assert (answer["node"], answer["version"]) == ("worker-1", 1)
        assert stolen == []

        # Nor can it write the cluster's state: a forged lease is never stored.
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request(
                "$KV.aether_cluster.leader",
                json.dumps({"node_id": "web", "term": 1}).encode(),
                timeout=1,
            )
        lease = await node.coordinator.read_lease()
        assert lease is not None and lease.node_id == "worker-1"
        # Neither role may delete or purge a stream.
        for api in (
            f"$JS.API.STREAM.DELETE.{store.stream_name}",
            f"$JS.API.STREAM.PURGE.{store.stream_name}",
            "$JS.API.STREAM.DELETE.KV_aether_cluster",
        ):
            for runtime in (app, get_runtime()):
                with pytest.raises(nats.errors.TimeoutError):
                    await (await runtime.connection()).request(api, b"", timeout=1)
        assert [e.version for e in await store.aget_events("a-1")] == [1, 2]
    finally:
        await node.host.stop()
        bus.close()
        app.close()


async def test_the_beat_user_holds_the_beat_lease_and_touches_nothing_else(secured):
    options = {"user": "beat", "password": PASSWORDS["NATS_BEAT_PASSWORD"]}
    beat = Runtime(secured.url, options=options)
    config = ClusterConfig(bucket="aether_cluster", num_shards=100)
    node = ClusterNode(get_runtime(), "worker-1", config)
    try:
        # A beat may start before any worker: it creates the cluster bucket.
        lease = BeatLease(beat, "beat-a", config)
        holder = await lease.acquire_or_renew()
        assert holder is not None and holder.beat_id == "beat-a"
        assert await lease.renew_with_runs({"report": 1.0}) is not None
        assert await lease.read_runs() == {"report": 1.0}
        await node.tick()  # the worker's user runs the cluster in the same bucket
        # The beat cannot pose as a node: a forged leader lease is never stored.
        nc = await beat.connection()
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request(
                "$KV.aether_cluster.leader",
                json.dumps({"node_id": "beat", "term": 1}).encode(),
                timeout=1,
            )
        current = await node.coordinator.read_lease()
        assert current is not None and current.node_id == "worker-1"
        await lease.release()
    finally:
        await node.host.stop()
        beat.close()
