"""The operations commands: aether_status, aether_streams, aether_replay."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import uuid
from pathlib import Path

import nats
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings
from nats.js.api import StreamConfig

from aether_django.cluster.beatlease import BeatLease
from aether_django.cluster.coordinator import ClusterConfig, Coordinator
from aether_django.events import ActorSnapshot
from aether_django.runtime import Runtime
from aether_django.store import get_event_store
from aether_django.store.jetstream import META_NAMESPACE as META
from aether_django.testing.contract import ev

ROOT = Path(__file__).resolve().parents[2]


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


def test_aether_status_names_the_active_beat(aether_nats_url):
    from aether_django.cluster import cluster_config

    runtime = Runtime(aether_nats_url)
    lease = BeatLease(runtime, "host-1-4242-abcd", cluster_config())
    try:
        holder = runtime.run(lease.acquire_or_renew())
        status = json.loads(run("aether_status", "--json")[0])
        assert (status["beat"], status["beat_term"]) == ("host-1-4242-abcd", holder.term)
        assert f"Beat      host-1-4242-abcd (term {holder.term})" in run("aether_status")[0]
        runtime.run(lease.release())
        assert json.loads(run("aether_status", "--json")[0])["beat"] is None
    finally:
        runtime.close()


def test_aether_streams_creates_and_checks(aether_nats_url):
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


def test_aether_replay_reports_decoding_errors_and_rebuilds_aggregates(aether_nats_url):
    import asyncio

    ns = f"ops-{uuid.uuid4().hex[:8]}"
    store = get_event_store(ns)
    store.save_events([ev("a", 1), ev("a", 2)])
    store.save_event(ev("b", 1))
    out, _ = run("aether_replay", ns)
    assert "2 actors, 3 events, 0 replay errors, no aggregate class" in out

    async def corrupt():
        nc = await nats.connect(aether_nats_url)
        await nc.jetstream().publish(store.subject_for("b"), b"garbage")  # type: ignore[attr-defined]
        await nc.close()

    asyncio.run(corrupt())
    out = io.StringIO()
    with pytest.raises(CommandError, match="problems found"):
        call_command("aether_replay", ns, "--no-progress", stdout=out, stderr=io.StringIO())
    summary, *lines = out.getvalue().splitlines()
    assert summary == f"{ns}: 2 actors, 3 events, 1 replay errors, no aggregate class"
    # One line per message that does not decode: the actor, its stream sequence, why.
    assert len(lines) == 1 and lines[0].startswith("  b: sequence 4: "), lines
    assert len(lines[0]) > len("  b: sequence 4: ")


def test_aether_replay_names_each_actor_that_cannot_be_rebuilt():
    from ..aggregates.domain import Order

    placed = f"order-{uuid.uuid4().hex[:8]}"
    broken = f"order-{uuid.uuid4().hex[:8]}"
    Order.objects.update(placed, lambda o: o.place("ann"), create=True)
    # An event type the aggregate has no handler for: stored fine, but no replay.
    Order.get_store().save_event(ev(broken, 1, "Teleported"))
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command(
            "aether_replay", "test-orders", "--no-progress", stdout=out, stderr=io.StringIO()
        )
    text = out.getvalue()
    assert "0 replay errors, 1 actors not rebuilt" in text
    (line,) = [line for line in text.splitlines() if line.startswith(f"  {broken}: ")]
    assert line == (
        f"  {broken}: AggregateError: Order cannot apply stored event 'Teleported' "
        "(version 1): no handler and no upcaster for it"
    )
    assert placed not in text  # an actor that rebuilds is not listed


def test_aether_replay_draws_its_progress_bar_on_a_terminal(aether_nats_url):
    """Run under a pseudo-terminal, as a person would: the bar (count, rate, time left)
    is drawn on stderr, and not with --no-progress or --verbosity 0. Into a pipe it is
    not drawn; --progress draws it off a terminal too."""
    ns = f"ops-{uuid.uuid4().hex[:8]}"
    store = get_event_store(ns)
    for actor in ("a", "b", "c"):
        store.save_event(ev(actor, 1))

    terminal = on_a_terminal("aether_replay", ns)
    assert "\r" in terminal and "| 3/3 [" in terminal  # redrawn in place, to the end
    assert re.search(r"\| 3/3 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+actor/s\]", terminal), terminal
    assert f"{ns}: 3 actors, 3 events, 0 replay errors" in terminal
    for quiet in (
        on_a_terminal("aether_replay", ns, "--no-progress"),
        on_a_terminal("aether_replay", ns, "--verbosity", "0"),
    ):
        assert "3/3" not in quiet and f"{ns}: 3 actors" in quiet

    out, err = in_a_pipe("aether_replay", ns)  # not a terminal: no bar by default
    assert err == "" and f"{ns}: 3 actors" in out
    forced = io.StringIO()
    call_command("aether_replay", ns, "--progress", stdout=io.StringIO(), stderr=forced)
    assert "| 3/3 [" in forced.getvalue() and forced.getvalue().endswith("\n")
    piped = io.StringIO()
    call_command("aether_replay", ns, stdout=io.StringIO(), stderr=piped)
    assert piped.getvalue() == ""


def test_aether_streams_draws_its_progress_bar_on_a_terminal_only(aether_nats_url):
    names = [f"ops-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    terminal = on_a_terminal("aether_streams", *names)
    assert re.search(r"\| 3/3 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+namespace/s\]", terminal)
    # Each namespace's line is whole on the screen: the bar is taken off the line before
    # it is written, and drawn again below it.
    lines = screen(terminal)
    for name in names:
        assert any(line.startswith(f"{name}: created stream {name}_events") for line in lines)
    assert "3/3" in lines[-1]
    assert "3/3" not in on_a_terminal("aether_streams", *names, "--verbosity", "0")
    out, err = in_a_pipe("aether_streams", *names, "--check")
    assert err == "" and all(f"{name}: ok" in out for name in names)


def screen(output: str) -> list[str]:
    """The lines a terminal shows for ``output``: a carriage return goes back to the
    start of the line, and what follows overwrites what was there."""
    lines = []
    for raw in output.replace("\r\n", "\n").split("\n"):
        shown = ""
        for part in raw.split("\r"):
            shown = part + shown[len(part) :]
        if shown.strip():
            lines.append(shown.rstrip())
    return lines


def in_a_pipe(*args: str) -> tuple[str, str]:
    """Run ``manage.py *args`` with pipes as its stdout and stderr; what each received."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout, done.stderr


def on_a_terminal(*args: str) -> str:
    """Run ``manage.py *args`` with a pseudo-terminal as its stdout and stderr; its output."""
    main, child = pty.openpty()
    # 24 rows of 100 columns, as a person's terminal has (a new one says 0 by 0).
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
    )
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    assert process.wait(60) == 0, output
    return output.decode()


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


def test_aether_status_shows_the_nodes_the_leader_its_term_and_the_last_rebalance(aether_nats_url):
    bucket = f"ops_{uuid.uuid4().hex[:8]}"
    runtime = Runtime(aether_nats_url)
    a, b, c = (
        Coordinator(runtime, node, ClusterConfig(bucket=bucket, num_shards=100))
        for node in ("node-a", "node-b", "node-c")
    )
    try:
        lease = runtime.run(a.tick())  # a leads alone and takes the 100 shards
        runtime.run(b.heartbeat())
        runtime.run(c.heartbeat())
        runtime.run(c.leave())  # c joined once and is gone: failed
        plan = runtime.run(a.rebalance())  # b takes half
        assert plan is not None and plan.moved_count == 50
        with override_settings(AETHER={**settings.AETHER, "CLUSTER_BUCKET": bucket}):
            status = json.loads(run("aether_status", "--json")[0])
            text, _ = run("aether_status")
    finally:
        runtime.run(a.leave())
        runtime.run(b.leave())
        runtime.close()
    assert (status["leader"], status["term"]) == ("node-a", lease.term)
    assert (status["num_shards"], status["last_rebalance_moved"]) == (100, 50)
    nodes = {n["node_id"]: n for n in status["nodes"]}
    assert {k: (n["status"], n["shards"]) for k, n in nodes.items()} == {
        "node-a": ("alive", 50),
        "node-b": ("alive", 50),
        "node-c": ("failed", 0),
    }
    assert all(0 <= n["seconds_since_heartbeat"] < 60 for n in nodes.values())

    assert f"Leader    node-a (term {lease.term})" in text
    assert "Shards    100, last rebalance moved 50" in text
    lines = {line.split()[1]: line.split() for line in text.splitlines() if "  node " in line}
    assert lines["node-a"][2:5] == ["alive", "50", "shards,"]
    assert lines["node-c"][2:5] == ["failed", "0", "shards,"]


def test_aether_status_fails_with_a_clear_message_when_nats_is_away(monkeypatch):
    from aether_django.testing import find_free_port

    url = f"nats://127.0.0.1:{find_free_port()}"
    monkeypatch.setenv("AETHER_NATS_URL", url)
    with (
        override_settings(AETHER={**settings.AETHER, "TIMEOUT": 1.0}),
        pytest.raises(CommandError, match=f"NATS at {url} did not answer"),
    ):
        run("aether_status")


def test_aether_streams_check_reports_misconfigured_and_colliding_streams(
    aether_nats_server_factory, monkeypatch
):
    """On a server of its own, so that its broken streams trouble no other test's --all."""
    server = aether_nats_server_factory(name="aether-streams-check")
    monkeypatch.setenv("AETHER_NATS_URL", server.url)
    with override_settings(AETHER={**settings.AETHER}):
        get_event_store("good").save_event(ev("a", 1))  # a stream, and no snapshot bucket yet
        out, _ = run("aether_streams", "--all")  # --all: every namespace with a stream
        assert "good: created bucket good_snapshots" in out

        # A stream made by hand without atomic batches.
        by_hand(dataclasses.replace(stream_config("plain"), allow_atomic=False))
        out, err = io.StringIO(), io.StringIO()
        with pytest.raises(CommandError, match="1 namespace"):
            call_command("aether_streams", "--check", "--all", stdout=out, stderr=err)
        assert "good: ok" in out.getvalue()
        assert (
            "plain: stream 'plain_events' exists without direct get or atomic batches"
            in err.getvalue()
        )

        # A stream whose settings drifted from AETHER: fewer replicas than configured.
        with override_settings(AETHER={**settings.AETHER, "REPLICAS": 3}):
            err = io.StringIO()
            with pytest.raises(CommandError, match="1 namespace"):
                call_command("aether_streams", "good", "--check", stdout=io.StringIO(), stderr=err)
            assert (
                "good: stream 'good_events' differs from the settings: replicas 1, configured 3"
                in err.getvalue()
            )

        # A stream of the name "taken" needs, which another namespace's metadata claims.
        by_hand(dataclasses.replace(stream_config("taken"), metadata={META: "someone-else"}))
        err = io.StringIO()
        with pytest.raises(CommandError):
            call_command("aether_streams", "taken", "--check", stdout=io.StringIO(), stderr=err)
        assert (
            "taken: stream 'taken_events' belongs to namespace 'someone-else', not 'taken'"
            in err.getvalue()
        )


def stream_config(namespace: str) -> StreamConfig:
    return get_event_store(namespace)._provisioner.stream_config()  # type: ignore[attr-defined]


def by_hand(config: StreamConfig) -> None:
    async def add() -> None:
        nc = await nats.connect(os.environ["AETHER_NATS_URL"])
        try:
            await nc.jetstream().add_stream(config)
        finally:
            await nc.close()

    asyncio.run(add())
