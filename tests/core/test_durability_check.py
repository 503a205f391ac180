"""What an acknowledged save survives: the servers the demo and the testing helper start
sync as their configuration says, checked on a real nats-server (its monitoring endpoint).
"""

from __future__ import annotations

import json
import urllib.request

from aether_django.testing import NatsServer


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
