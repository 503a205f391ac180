"""Concurrency through HTTP: 8 client processes race appends to one actor via daphne.

The test project runs under a real ASGI server (daphne, a process of its own, on a
free port) with its database in a SQLite file. Eight client OS processes (spawned,
plain urllib with HTTP basic auth) each read the actor's version, append
version + 1, and on 409 take ``current_version`` from the body and try the next
one, until versions 1..TARGET exist. Each 409's ``current_version`` is checked
against when every version was stored, as the clients saw it: each request is timed
(sent, answered) on the machine's monotonic clock, and a version was stored within
the request that won it. Nothing here depends on speed: there are no sleeps, and how
often the clients collide is reported, not asserted.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from aether_django.testing import find_free_port
from tests.serverproc import prepared_project_env, serving

pytestmark = pytest.mark.slow

CLIENTS = 8
TARGET = 200
USER, PASSWORD = "racer", "race-pw"
#: Generous bounds for things that normally take a second or two; only a hung
#: server or client reaches them.
START_TIMEOUT = 60.0
RACE_TIMEOUT = 240.0


# --- client side (runs in the spawned processes) ----------------------------------------


def _call(method: str, url: str, auth: str, body: Any = None) -> tuple[int, Any]:
    """One request; the status and the decoded JSON body (errors included)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", auth)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def race(index: int, base: str, auth: str, target: int, barrier: Any, results: Any) -> None:
    """Append to the actor at ``base`` until it has ``target`` versions; report to ``results``.

    Every append is reported with when it was sent and when its answer came back
    (``time.monotonic()``, one clock for every process of the machine): as
    ``(version, sent, received)`` when won, ``(attempted, current, sent, received)``
    on a 409.
    """
    won: list[tuple[int, float, float]] = []
    conflicts: list[tuple[int, int, float, float]] = []
    try:
        barrier.wait(START_TIMEOUT)
        status, body = _call("GET", f"{base}/version/", auth)
        assert status == 200, (status, body)
        version = body["version"]
        while version < target:
            attempt = version + 1
            event = {"event_type": "Raced", "version": attempt, "data": {"client": index}}
            sent = time.monotonic()
            status, body = _call("POST", f"{base}/events/", auth, event)
            received = time.monotonic()
            if status == 409:
                assert body["code"] == "version_conflict", body
                assert body["attempted_version"] == attempt, body
                conflicts.append((attempt, body["current_version"], sent, received))
                version = body["current_version"]
                continue
            assert status == 201, (status, body)
            (stored,) = body["events"]
            assert stored["version"] == attempt, body
            won.append((attempt, sent, received))
            version = attempt
        results.put({"index": index, "won": won, "conflicts": conflicts, "error": None})
    except BaseException as exc:  # the parent reports it; a child's traceback is easy to miss
        results.put({"index": index, "won": won, "conflicts": conflicts, "error": repr(exc)})


# --- server side ---------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path, aether_nats_server):
    """The test project under daphne; yields its base URL and an Authorization header."""
    env = prepared_project_env(tmp_path, aether_nats_server.url, USER, PASSWORD)
    port = find_free_port()
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
    command.append("tests.api.asgi:application")
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    base = f"http://127.0.0.1:{port}/api/aether"
    ready = f"{base}/namespaces/"
    log = tmp_path / "daphne.log"
    with serving(command, env, log, ready, {"Authorization": auth}, START_TIMEOUT) as daphne:
        yield base, auth
    assert daphne.returncode is not None


def test_8_processes_race_appends_to_one_actor_through_http(server):
    api, auth = server
    ns, actor = f"http-race-{uuid.uuid4().hex[:8]}", "order-race"
    base = f"{api}/namespaces/{ns}/actors/{actor}"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(CLIENTS), ctx.Queue()
    clients = [
        ctx.Process(target=race, args=(i, base, auth, TARGET, barrier, results))
        for i in range(CLIENTS)
    ]
    for client in clients:
        client.start()
    try:
        reports = [results.get(timeout=RACE_TIMEOUT) for _ in clients]
    finally:
        for client in clients:
            client.join(30)
            if client.exitcode is None:
                client.kill()
                client.join()
    assert [r["error"] for r in reports] == [None] * CLIENTS, reports
    assert all(client.exitcode == 0 for client in clients)

    status, page = _call("GET", f"{base}/events/?limit=1000", auth)
    assert status == 200 and page["next"] is None
    events = page["results"]
    versions = [e["version"] for e in events]
    assert versions == list(range(1, TARGET + 1)), "each version stored exactly once, in order"
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(sequences)

    won = sorted(v for r in reports for v, _, _ in r["won"])
    assert won == versions, "every acknowledged append is stored, and only those"
    stored_by = {e["version"]: e["data"]["client"] for e in events}
    # When each version was stored: within the request that won it, between its
    # sending and its 201.
    stored_within = {v: (sent, received) for r in reports for v, sent, received in r["won"]}
    for report in reports:
        for version, _, _ in report["won"]:
            assert stored_by[version] == report["index"], "an acknowledged append was overwritten"
        for attempted, current, sent, received in report["conflicts"]:
            assert attempted <= current <= TARGET, "a 409 must carry a version >= the attempted"
            # current_version is the actor's version at some moment while the server
            # handled the losing request, between `sent` and `received`: so version
            # `current` was stored by then (the request that stored it had been sent
            # before the 409 came back), and version `current + 1` was not yet (its
            # 201 came back after the losing request was sent). A stale version (a
            # cache, a read before the check) or one from the future breaks one of them.
            assert stored_within[current][0] <= received, (
                f"409 for {attempted} said {current}, which was stored only later"
            )
            if current < TARGET:
                assert stored_within[current + 1][1] >= sent, (
                    f"409 for {attempted} said {current}, but {current + 1} was stored "
                    "before the request was sent"
                )
    conflicts = sum(len(r["conflicts"]) for r in reports)
    print(f"\n{CLIENTS} HTTP clients, {TARGET} versions, {conflicts} conflicts answered 409")
