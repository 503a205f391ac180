"""A bounded soak: under a minute of steady load on a real server process, whose memory,
open descriptors and NATS connections must not grow.

The test project runs under uvicorn in a process of its own (on a SQLite file, with its
own nats-server), and the test process loads it as bench/soak.py does (both run
aether_django.testing.soak), for SOAK_SECONDS after a warm-up: 100 WebSocket clients
subscribed from "new" and one reconnecting client that resumes where it left off,
saves through the HTTP API and through the event store, reads through the API on new
connections, and two cluster nodes ticking heartbeats. The server's RSS and open file
descriptors, the client connections nats-server reports and the test process's RSS are
sampled after the warm-up and at the end; their growth must stay within the bounds of that module
(SERVER_RSS_GROWTH_MIB, FD_GROWTH, NATS_CONNECTION_GROWTH, CLIENT_RSS_GROWTH_MIB, each
with the reason for its value). Every client must receive every event saved to its
namespace exactly once and in order, no socket may get an error frame or be closed by
the server, and no request may get a 5xx. ``-s`` prints the figures. Nothing here
asserts speed; the timeouts only catch a hung server.

The longer version: ``.venv/bin/python -m bench.soak`` (10 minutes by default).
"""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether_django.testing.processes import (
    find_free_port,
    start_process,
    stop_process,
    uvicorn_command,
    wait_for_http,
)
from aether_django.testing.soak import (
    CLIENT_RSS_GROWTH_MIB,
    FD_GROWTH,
    NATS_CONNECTION_GROWTH,
    SERVER_RSS_GROWTH_MIB,
    Load,
    Sample,
    Soak,
    Target,
)
from tests.serverproc import ROOT, prepared_project_env

pytestmark = pytest.mark.slow

#: Seconds of steady load between the start and the end samples.
SOAK_SECONDS = 45.0
#: Seconds of the same load before the start sample: long enough for every cache, pool
#: and buffer that the load fills once to be full, so that what grows later is growth.
WARMUP_SECONDS = 10.0
#: A sample every this many seconds during the soak, printed with ``-s``.
SAMPLE_EVERY = 15.0
CLIENTS = 100
USER, PASSWORD = "soaker", "soak-pw"

# A session for USER in the server's database: the cookie the WebSocket clients send.
LOGIN = (
    "import tests.api.asgi\n"
    "from django.contrib.auth.models import User\n"
    "from django.test import Client\n"
    "client = Client()\n"
    f"client.force_login(User.objects.get(username={USER!r}))\n"
    "print(client.cookies['sessionid'].value)\n"
)


@pytest.fixture
def soak_target(tmp_path: Path, aether_nats_server_factory) -> Iterator[Target]:
    """The test project under uvicorn, with a nats-server of its own (so that its
    connection counts are the soak's alone)."""
    nats = aether_nats_server_factory()
    env = prepared_project_env(tmp_path, nats.url, USER, PASSWORD)
    env["AETHER_TEST_WS_PER_USER"] = str(10 * CLIENTS)  # every client is USER
    session = subprocess.run(
        [sys.executable, "-c", LOGIN], cwd=ROOT, env=env, check=True, capture_output=True
    )
    port = find_free_port()
    log = tmp_path / "uvicorn.log"
    command = uvicorn_command(
        "tests.api.asgi:application",
        port,
        extra=["--log-level", "warning", "--timeout-keep-alive", "300"],
    )
    server = start_process(command, cwd=ROOT, env=env, log=log)
    try:
        wait_for_http(server, f"http://127.0.0.1:{port}/aether/healthz/", what="uvicorn", log=log)
        assert nats.process is not None
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        yield Target(
            port=port,
            server_pid=server.pid,
            authorization=f"Basic {token}",
            cookie=f"sessionid={session.stdout.decode().strip()}",
            nats_url=nats.url,
            nats_http_port=nats.http_port,
            nats_pid=nats.process.pid,
            server_log=log,
        )
        assert server.poll() is None, "the server exited during the soak"
    finally:
        # SIGINT: uvicorn's graceful shutdown, as Ctrl-C gives it.
        stop_process(server, 15.0, signal.SIGINT)


async def test_a_soak_under_steady_load_grows_neither_memory_nor_connections(soak_target):
    def show(sample: Sample) -> None:
        print(f"t={sample.at:3.0f} s: {sample.line()}")

    print()
    result = await Soak(soak_target, Load(clients=CLIENTS)).run(
        SOAK_SECONDS, warmup=WARMUP_SECONDS, sample_every=SAMPLE_EVERY, on_sample=show
    )
    for line in result.lines():
        print(line)

    assert result.ledger.http_saves and result.ledger.store_saves and result.ledger.reads
    assert result.server_errors == 0, result.ledger.statuses
    assert not result.clients_wrong, result.clients_wrong[:10]
    assert result.deliveries == result.expected_deliveries
    assert result.problems.count == 0, result.problems.first
    assert result.most_leaders <= 1, "two cluster leaders at once"
    assert sorted(result.alive_at_end) == sorted(result.nodes), "a cluster node was lost"
    assert result.server_tracebacks == 0, "the server logged a traceback"
    assert result.server_rss_growth_mib <= SERVER_RSS_GROWTH_MIB
    assert result.fd_growth <= FD_GROWTH
    assert result.connection_growth <= NATS_CONNECTION_GROWTH
    assert result.client_rss_growth_mib <= CLIENT_RSS_GROWTH_MIB
    assert result.failures() == []
