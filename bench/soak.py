"""Soak: minutes of steady load on one server process, whose memory and connections must not grow.

Run from the repository root::

    .venv/bin/python -m bench.soak                  # 10 minutes, 100 WebSocket clients
    .venv/bin/python -m bench.soak --minutes 60     # an hour
    .venv/bin/python -m bench.soak --clients 500    # more subscribers
    .venv/bin/python -m bench.soak --json out.json  # also write the figures as JSON

One run starts its own nats-server (free ports, file storage in a temporary
directory) and serves the example project with uvicorn in a child process, as
bench/ws.py does: a temporary SQLite database, ``DEBUG = False``, the MD5 password
hasher. For the whole run:

* N WebSocket clients (the ``websockets`` library, offering permessage-deflate as
  browsers do; uvicorn declines it, as the demo serves it) stay connected, half of
  them subscribed from "new" to one namespace and half to another;
* one more client reconnects every few seconds and subscribes from the sequence
  after the last event it received (docs/websocket.md, "Resuming");
* one writer appends events through the HTTP API (basic auth, one keep-alive
  connection) and another saves them through the event store, both into both
  namespaces, each at a fixed pace;
* readers ask the API for an actor's version and then its latest events, each read
  on a new connection, so the server accepts and closes sockets all the time;
* two cluster nodes (:class:`~aether_django.cluster.coordinator.Coordinator`) tick
  every second: heartbeat, leader lease, shard map.

After a warm-up, the run samples the server process's resident memory (``VmRSS``)
and open file descriptors (from /proc), the client connections nats-server reports
(its monitoring endpoint ``/connz``) and the load process's own resident memory;
again once a minute, and at the end, still under load. The growth from the start to
the end is compared with the bounds of :mod:`aether_django.testing.soak` (which
holds the load and the measurements this module runs). Then the load stops, and the
run checks that every client received every event saved to its namespace exactly
once and in order, that no HTTP request failed, and that both cluster nodes stayed
alive.

There is no baseline to compare with: the figures are the growth and whether it
stays within the bounds. tests/reliability/test_soak.py runs the same load for
under a minute and asserts the bounds and the deliveries.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.metadata
import logging
import sys
import tempfile
from pathlib import Path

from aether_django.testing import NatsServer, find_free_port
from aether_django.testing.soak import (
    CLIENT_RSS_GROWTH_MIB,
    FD_GROWTH,
    NATS_CONNECTION_GROWTH,
    SERVER_RSS_GROWTH_MIB,
    Load,
    Result,
    Sample,
    Soak,
    Target,
)

from ._setup import (
    PASSWORD,
    USER,
    finish,
    load_at_end,
    prepare_project,
    project_env,
    wait_for_server,
)
from .common import Report, clock, machine_info, progress
from .ws import raise_open_files_limit, start_uvicorn, stop_uvicorn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="minutes of soak after the warm-up (default 10)"
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=Load.clients,
        help=f"WebSocket clients (default {Load.clients})",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=20.0,
        help="seconds of load before the first sample (default 20)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    load = Load(clients=args.clients)
    # Each client is a socket here and one in uvicorn (which inherits the limit).
    limit = raise_open_files_limit(2 * load.clients + 1024)
    report = Report("aether_django soak: memory and connections under steady load")
    started = clock()
    with NatsServer() as server, tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        port = find_free_port()
        env = project_env("soak", server.url, tmp)
        progress("migrating a temporary database and logging a user in")
        cookie = prepare_project("soak", Path(tmp), env, login=True)
        log = Path(tmp) / "uvicorn.log"
        progress(f"starting uvicorn on 127.0.0.1:{port}")
        uvicorn = start_uvicorn(port, env, log=log)
        try:
            wait_for_server(port, uvicorn, "bench.soak: uvicorn", log=log)
            assert server.process is not None
            token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            target = Target(
                port=port,
                server_pid=uvicorn.pid,
                authorization=f"Basic {token}",
                cookie=cookie,
                nats_url=server.url,
                nats_http_port=server.http_port,
                nats_pid=server.process.pid,
                server_log=log,
            )
            report.meta.update(machine_info())
            report.meta.update(
                {
                    "server": (
                        f"uvicorn {importlib.metadata.version('uvicorn')} (--ws websockets, "
                        "permessage-deflate declined), one worker, example_project.asgi"
                    ),
                    "open files limit": limit,
                    "load": (
                        f'{load.clients} WebSocket clients (from "new", 2 namespaces) + 1 '
                        f"reconnecting every {load.reconnect_every:.0f} s; "
                        f"{load.http_saves_per_second:g} saves/s through the API + "
                        f"{load.store_saves_per_second:g} through the store; "
                        f"{load.reads_per_second:g} reads/s by {load.readers} readers; 2 cluster "
                        f"nodes ticking every {load.heartbeat_interval:g} s"
                    ),
                    "duration": f"{args.warmup:.0f} s warm-up, then {args.minutes:g} min",
                }
            )

            def minute(sample: Sample) -> None:
                print(f"minute {sample.at / 60:5.1f}: {sample.line()}", flush=True)

            result = asyncio.run(
                Soak(target, load).run(
                    args.minutes * 60, warmup=args.warmup, sample_every=60.0, on_sample=minute
                )
            )
        finally:
            stop_uvicorn(uvicorn)
    load_at_end(report)
    for line in result.lines():
        print(line)
    add_rows(report, result)
    finish(report, started, args.json)
    failures = result.failures()
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


def add_rows(report: Report, result: Result) -> None:
    """The growth figures and the bounds as a report table (no baselines: a soak has none)."""
    start, end = result.start, result.end
    rows = [
        (
            "server RSS",
            start.server_rss_kib / 1024,
            end.server_rss_kib / 1024,
            "MiB",
            SERVER_RSS_GROWTH_MIB,
        ),
        ("server open fds", start.server_fds, end.server_fds, "", FD_GROWTH),
        (
            "NATS client connections",
            start.nats_connections,
            end.nats_connections,
            "",
            NATS_CONNECTION_GROWTH,
        ),
        (
            "  of which the server's",
            start.server_nats_connections,
            end.server_nats_connections,
            "",
            None,
        ),
        (
            "load process RSS",
            start.client_rss_kib / 1024,
            end.client_rss_kib / 1024,
            "MiB",
            CLIENT_RSS_GROWTH_MIB,
        ),
        ("NATS subscriptions", start.nats_subscriptions, end.nats_subscriptions, "", None),
        ("JetStream consumers", start.nats_consumers, end.nats_consumers, "", None),
        ("nats-server RSS", start.nats_rss_kib / 1024, end.nats_rss_kib / 1024, "MiB", None),
    ]
    for name, first, last, unit, bound in rows:
        growth = last - first
        row = report.add(
            "growth",
            f"{name}: {first:,.1f} → {last:,.1f} {unit}".strip()
            if unit
            else f"{name}: {first} → {last}",
            growth,
            unit,
            target=f"≤ {bound} {unit}".strip() if bound is not None else "",
        )
        if bound is not None:
            row.met = growth <= bound
    ledger = result.ledger
    report.add("load", "saves", ledger.http_saves + ledger.store_saves, "")
    report.add("load", "reads", ledger.reads, "")
    report.add("load", "deliveries", result.deliveries, "")
    report.add("load", "reconnections", result.reconnects, "")
    report.add("load", "cluster ticks", result.cluster_ticks, "")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
