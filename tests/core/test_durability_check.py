"""System check W301/W302: what an acknowledged save survives with one replica in production.

The check cannot see the server's configuration, so it goes by the settings; the
servers the demo and the testing helper start are checked against what their
configuration promises, on a real nats-server (its monitoring endpoint).
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from aether_django.testing import NatsServer


def durability_ids() -> list[str]:
    return [m.id for m in run_checks() if m.id in ("aether_django.W301", "aether_django.W302")]


@override_settings(DEBUG=False, AETHER={})
def test_production_with_one_replica_on_a_server_that_does_not_sync_every_write_warns():
    (message,) = [m for m in run_checks() if m.id == "aether_django.W301"]
    assert "power loss" in message.msg and "sync_interval: always" in (message.hint or "")


@pytest.mark.parametrize(
    "debug, aether",
    [
        (True, {}),  # development
        (False, {"REPLICAS": 3}),  # a quorum of three servers acknowledges
        (False, {"NATS_SYNC_ALWAYS": True}),  # every write on disk before the ack
    ],
)
def test_no_durability_warning_where_an_acknowledged_save_survives_the_machine(debug, aether):
    with override_settings(DEBUG=debug, AETHER=aether):
        assert durability_ids() == []


@override_settings(DEBUG=False, AETHER={"STORAGE": "memory", "NATS_SYNC_ALWAYS": True})
def test_memory_storage_with_one_replica_warns_even_when_the_server_syncs():
    assert durability_ids() == ["aether_django.W302"]


def server_jetstream_config(server: NatsServer) -> dict:
    url = f"http://127.0.0.1:{server.http_port}/varz"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)["jetstream"]["config"]


def test_the_testing_server_syncs_every_write_when_asked_and_keeps_the_default_otherwise():
    with NatsServer(sync_interval="always") as synced, NatsServer() as default:
        assert server_jetstream_config(synced).get("sync_always") is True
        config = server_jetstream_config(default)
        assert not config.get("sync_always")
        assert config["sync_interval"] == 120 * 10**9  # 2 minutes, in nanoseconds


def test_the_demo_server_syncs_every_write(tmp_path, monkeypatch):
    from example_project import demo

    monkeypatch.setattr(demo, "NATS_DIR", tmp_path)
    server = demo.new_nats()
    try:
        server.start()
        assert server_jetstream_config(server).get("sync_always") is True
    finally:
        server.close()
