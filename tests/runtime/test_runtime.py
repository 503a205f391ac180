"""The process runtime: sync and async callers, threads, fork, restarts, exit."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.test import AsyncClient, Client

from aether_django.errors import SyncCallInAsyncContextError
from aether_django.runtime import Runtime, get_runtime
from aether_django.store import get_event_store
from aether_django.store.jetstream import JetStreamEventStore
from aether_django.testing import NatsServer
from aether_django.testing.contract import ev, unique_namespace

from ..store import workers


def test_a_sync_view_saves_through_the_runtime():
    ns = unique_namespace()
    client = Client()
    first = client.get(f"/sync/{ns}/a/").json()
    second = client.get(f"/sync/{ns}/a/").json()
    assert (first["version"], second["version"]) == (1, 2)
    assert second["sequence"] > first["sequence"]


async def test_an_async_view_saves_on_its_own_loop():
    ns = unique_namespace()
    client = AsyncClient()
    first = (await client.get(f"/async/{ns}/a/")).json()
    second = (await client.get(f"/async/{ns}/a/")).json()
    assert (first["version"], second["version"]) == (1, 2)


async def test_async_callers_get_a_connection_of_their_own_loop():
    import asyncio

    runtime = get_runtime()
    nc = await runtime.connection()
    assert nc is await runtime.connection()
    loop_nc = asyncio.run_coroutine_threadsafe(runtime.connection(), runtime.loop).result()
    assert loop_nc is not nc


def test_many_threads_share_the_runtime():
    store = get_event_store(unique_namespace())

    def work(i: int) -> list[int]:
        return [store.save_event(ev(f"actor-{i}", v)).version for v in range(1, 26)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    assert all(r == list(range(1, 26)) for r in results)
    assert all(store.get_latest_version(f"actor-{i}") == 25 for i in range(8))


def test_a_forked_child_gets_its_own_connection():
    ns = unique_namespace()
    store = get_event_store(ns)
    store.save_event(ev("a", 1))  # the parent's runtime is connected now
    parent_loop = get_runtime().loop

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        child_sequence = pool.apply(_save_in_forked_child, (ns,))

    assert get_runtime().loop is parent_loop
    store.save_event(ev("a", 3))  # the parent's connection still works
    events = store.get_events("a")
    assert [e.version for e in events] == [1, 2, 3]
    assert events[1].sequence == child_sequence


def _save_in_forked_child(ns: str) -> int:
    # The same store object, inherited across fork, must work in the child.
    store = get_event_store(ns)
    runtime = get_runtime()
    assert runtime.pid == os.getpid()
    stored = store.save_event(ev("a", 2))
    assert stored.sequence is not None
    return stored.sequence


def test_a_spawned_process_finds_the_server_through_the_environment():
    ns = unique_namespace()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        sequence = pool.apply(workers.save_one, (ns, "a", 1))
    assert get_event_store(ns).get_events("a")[0].sequence == sequence


async def test_blocking_calls_inside_a_running_loop_are_refused():
    store = get_event_store(unique_namespace())
    with pytest.raises(SyncCallInAsyncContextError, match="asave_event"):
        store.save_event(ev("a", 1))


def test_reconnects_by_itself_after_a_server_restart(aether_nats_server_factory):
    server = aether_nats_server_factory()
    runtime = Runtime(server.url)
    try:
        store = JetStreamEventStore(unique_namespace(), runtime=runtime)
        store.save_event(ev("a", 1))
        server.restart()
        assert store.save_event(ev("a", 2)).version == 2
        server.kill()
        server.start()
        assert [e.version for e in store.get_events("a")] == [1, 2]
    finally:
        runtime.close()


def test_the_runtime_closes_at_exit_without_hanging(aether_nats_url):
    script = textwrap.dedent(
        f"""
        import json
        from aether_django.runtime import Runtime
        from aether_django.store.jetstream import JetStreamEventStore
        from aether_django.testing.contract import ev
        store = JetStreamEventStore("exit-test", runtime=Runtime({aether_nats_url!r}))
        version = store.get_latest_version("a") + 1
        print(json.dumps(store.save_event(ev("a", version)).version))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) >= 1
    assert "Traceback" not in result.stderr


def test_idle_sync_connections_are_kept_alive(aether_nats_server_factory):
    """The server drops clients that do not answer pings; idle portals still answer."""
    server = aether_nats_server_factory(extra_config="ping_interval: 1s\nping_max: 3")
    runtime = Runtime(server.url)
    try:
        store = JetStreamEventStore(unique_namespace(), runtime=runtime)
        store.save_event(ev("a", 1))
        nc = runtime.run(runtime.connection())
        time.sleep(6)  # six server pings while no sync call runs
        store.save_event(ev("a", 2))
        assert runtime.run(runtime.connection()) is nc
        assert nc.stats["reconnects"] == 0
    finally:
        runtime.close()


def test_sync_calls_from_many_threads_use_a_few_pooled_connections(aether_nats_url):
    runtime = Runtime(aether_nats_url)
    try:
        store = JetStreamEventStore(unique_namespace(), runtime=runtime)
        for i in range(20):  # a new thread per call, as runserver does
            thread = threading.Thread(target=store.save_event, args=(ev(f"a{i}", 1),))
            thread.start()
            thread.join()
        assert len(runtime._portals) == 1
        assert all(store.get_latest_version(f"a{i}") == 1 for i in range(20))
    finally:
        runtime.close()


def test_many_sync_calls_at_once_share_the_loop_thread_beyond_a_few_portals(aether_nats_url):
    from aether_django.runtime import MAX_BUSY_PORTALS

    runtime = Runtime(aether_nats_url)
    try:
        store = JetStreamEventStore(unique_namespace(), runtime=runtime)
        threads = 4 * MAX_BUSY_PORTALS
        start = threading.Barrier(threads)
        on_loop_thread: list[bool] = []

        async def save(i: int) -> int:
            # Which loop runs this call: a portal (its own thread) or the shared one.
            on_loop_thread.append(asyncio.get_running_loop() is runtime._loop)
            await asyncio.sleep(0.05)  # keep the portals busy while the others arrive
            return (await store.asave_event(ev(f"t{i}", 1))).version

        def call(i: int) -> None:
            start.wait()
            assert runtime.run(save(i)) == 1

        workers = [threading.Thread(target=call, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        assert len(on_loop_thread) == threads
        # Never more than MAX_BUSY_PORTALS portals; every other call went to the loop thread.
        assert len(runtime._portals) <= MAX_BUSY_PORTALS
        assert on_loop_thread.count(False) <= MAX_BUSY_PORTALS
        assert on_loop_thread.count(True) >= threads - MAX_BUSY_PORTALS
        assert runtime._busy_portals == 0
        assert all(store.get_latest_version(f"t{i}") == 1 for i in range(threads))
    finally:
        runtime.close()


def _connections(server: NatsServer, state: str = "open") -> list[dict[str, Any]]:
    """The server's client connections in ``state``, from its monitoring endpoint /connz."""
    url = f"http://127.0.0.1:{server.http_port}/connz?state={state}"
    with urllib.request.urlopen(url, timeout=5) as response:
        connections: list[dict[str, Any]] = json.loads(response.read())["connections"] or []
    return connections


def _wait_until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_runtime_connects_lazily_on_the_first_call(aether_nats_server_factory):
    server = aether_nats_server_factory()
    runtime = Runtime(server.url, name="lazy-runtime")
    try:
        store = JetStreamEventStore(unique_namespace(), runtime=runtime)
        assert store.subject_for("a")  # using the store object needs no server
        assert _connections(server) == [], "a connection was opened before any call"
        assert runtime._conns == {} and runtime._loop is None and runtime._portals == []

        assert store.get_latest_version("a") == 0
        assert [c["name"] for c in _connections(server)] == ["lazy-runtime"]
    finally:
        runtime.close()


_EXIT_SCRIPT = """
import asyncio
import atexit
import json

seen = {{}}


def report():
    # Registered before aether_django is imported, so it runs after the runtime's
    # own exit hook (atexit runs hooks last-in, first-out).
    print(json.dumps([nc.is_closed for nc in seen["connections"]]), flush=True)


atexit.register(report)

import aether_django.runtime
from aether_django.runtime import Runtime
from aether_django.store.jetstream import JetStreamEventStore
from aether_django.testing.contract import ev

if {without_hook!r}:
    atexit.unregister(aether_django.runtime._close_all_at_exit)
runtime = Runtime({url!r}, name={name!r})
store = JetStreamEventStore("exit-test", runtime=runtime)
store.save_event(ev("a", store.get_latest_version("a") + 1))  # a sync caller's connection
asyncio.run_coroutine_threadsafe(runtime.connection(), runtime.loop).result()  # the loop's
seen["connections"] = list(runtime._conns.values())
"""


def test_the_runtime_closes_its_connections_at_exit(aether_nats_server_factory):
    server = aether_nats_server_factory()

    def run_child(name: str, *, without_hook: bool) -> list[bool]:
        script = _EXIT_SCRIPT.format(url=server.url, name=name, without_hook=without_hook)
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        closed: list[bool] = json.loads(result.stdout)
        return closed

    # Both of the child's connections were closed by the runtime before the
    # interpreter went away...
    assert run_child("exit-child", without_hook=False) == [True, True]
    # ...which is the runtime's doing: without its exit hook they are still open then.
    assert run_child("exit-child-unhooked", without_hook=True) == [False, False]

    # The server no longer lists the child's connections.
    assert _wait_until(
        lambda: not [c for c in _connections(server) if c["name"].startswith("exit-child")]
    )
    closed = [c for c in _connections(server, "closed") if c["name"] == "exit-child"]
    assert len(closed) == 2


async def test_an_error_in_a_subscription_callback_is_logged_at_error_with_its_subject(
    aether_nats_url, caplog
):
    runtime = Runtime(aether_nats_url, name="callback-test")
    subject = f"test.callback.{os.getpid()}.{time.monotonic_ns()}"
    handled = asyncio.Event()

    async def broken(msg):
        handled.set()
        raise RuntimeError("the handler failed")

    try:
        nc = await runtime.connection()
        await nc.subscribe(subject, cb=broken)
        await nc.publish(subject, b"x")
        await asyncio.wait_for(handled.wait(), 5)
        for _ in range(50):
            records = [
                r for r in caplog.records if r.name == "aether_django.runtime" and r.exc_info
            ]
            if records:
                break
            await asyncio.sleep(0.02)
        [record] = records
        assert record.levelname == "ERROR"
        assert str(record.exc_info[1]) == "the handler failed"
        # Which connection and which subscription: enough to find the failing handler.
        message = record.getMessage()
        assert subject in message and "callback-test" in message and "broken" in message
        assert (record.connection, record.subject) == ("callback-test", subject)
    finally:
        runtime.close()
