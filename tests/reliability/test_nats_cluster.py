"""A 3-server JetStream cluster with 3 replicas: a server, then the stream leader, is killed
during saves and later restarted. Saves pause briefly and go on; nothing acknowledged is
lost; the cluster coordination never has two leaders, and has one again once the
servers are back."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid

import nats.errors
import pytest

from aether_django.cluster.coordinator import ClusterConfig, Coordinator
from aether_django.errors import SaveOutcomeUnknownError, StoreUnavailableError
from aether_django.events import Event
from aether_django.runtime import Runtime
from aether_django.store.base import StoreConfig
from aether_django.store.jetstream import JetStreamEventStore
from aether_django.testing import NatsCluster

pytestmark = pytest.mark.slow


async def stream_leader(runtime: Runtime, stream: str) -> str:
    """The stream's current leader. Right after a server rejoins, the cluster may still be
    electing one or the client reconnecting, so ask again until there is an answer."""
    deadline = time.monotonic() + 30
    while True:
        try:
            nc = await runtime.connection()
            info = await nc.jetstream(timeout=2).stream_info(stream)
            if info.cluster is not None and info.cluster.leader:
                return info.cluster.leader
        except (TimeoutError, nats.errors.Error):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"stream {stream} has no leader after 30 s")
        await asyncio.sleep(0.25)


async def test_saves_survive_losing_a_server_and_the_stream_leader():
    cluster = NatsCluster(3).start()
    runtime = Runtime(cluster.url)
    namespace = f"r3-{uuid.uuid4().hex[:8]}"
    store = JetStreamEventStore(
        namespace, runtime=runtime, config=StoreConfig(replicas=3, timeout=10.0)
    )
    bucket = f"cluster_{uuid.uuid4().hex[:8]}"
    node_runtimes = [Runtime(cluster.url) for _ in range(2)]
    nodes = [
        Coordinator(
            node_runtimes[i],
            f"node-{i}",
            ClusterConfig(bucket=bucket, replicas=3, heartbeat_interval=0.5, failure_timeout=3.0),
        )
        for i in range(2)
    ]
    acknowledged: list[str] = []
    refused: list[str] = []
    ack_times: list[float] = []
    leaders_seen: list[set[str]] = []
    stop = asyncio.Event()
    saved = asyncio.Event()
    # Set by the first coordination round, begun after both servers are back, that
    # finds a leader.
    elected = asyncio.Event()
    healed: list[float] = []

    async def saved_after(moment: float) -> None:
        while not (ack_times and ack_times[-1] > moment):
            saved.clear()
            await saved.wait()

    async def write() -> None:
        version = 1
        event = Event(event_type="Saved", actor_id="a", version=1)
        while not stop.is_set():
            try:
                await store.asave_event(event)
            except SaveOutcomeUnknownError:
                continue  # settle it: save the same event again
            except StoreUnavailableError:
                refused.append(event.id)
                event = Event(event_type="Saved", actor_id="a", version=version)
                continue
            acknowledged.append(event.id)
            ack_times.append(time.monotonic())
            saved.set()
            version += 1
            event = Event(event_type="Saved", actor_id="a", version=version)

    def tick_in_thread(node: Coordinator) -> None:
        # A tick during a fault may fail; the next one retries.
        with contextlib.suppress(Exception):
            node.runtime.run(node.tick())

    async def coordinate() -> None:
        while not stop.is_set():
            # A node whose ticks fail during the fault still *believes* it leads until
            # its next successful round; leadership is a lease that has not expired.
            began = time.monotonic()
            await asyncio.gather(*(asyncio.to_thread(tick_in_thread, n) for n in nodes))
            holders = {n.node_id for n in nodes if n.leads_now}
            leaders_seen.append(holders)
            if holders and healed and began > healed[0]:
                elected.set()
            await asyncio.sleep(0.5)

    writer = asyncio.ensure_future(write())
    coordinator = asyncio.ensure_future(coordinate())
    try:
        await asyncio.sleep(2)
        first = cluster.servers[0]
        first.kill()  # a server (maybe not the leader)
        await asyncio.sleep(3)
        first.start()
        await asyncio.sleep(3)
        leader_name = await stream_leader(runtime, store.stream_name)
        leader = cluster.server_named(leader_name)
        leader.kill()  # now the stream's leader
        killed_leader = time.monotonic()
        await asyncio.sleep(4)
        leader.start()
        healed.append(time.monotonic())
        # Saves resume once a new stream leader is elected (about 7 s here); give a slower
        # machine up to 30 s, then let a few more saves land.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(saved_after(killed_leader), 30)
        await asyncio.sleep(1)
        # The coordination's lease may lapse during the fault (failure_timeout 3 s, and
        # its bucket elects a leader of its own), so a node leads again some rounds after
        # the servers are back: give that up to 30 s.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(elected.wait(), 30)
    finally:
        stop.set()
        await writer
        await coordinator

    try:
        events = await store.aget_events("a")
        ids = [e.id for e in events]
        assert len(ids) == len(set(ids)), "an event was stored twice"
        assert [e.version for e in events] == list(range(1, len(events) + 1))
        assert set(acknowledged) <= set(ids), "an acknowledged save was lost"
        assert not set(refused) & set(ids), "a refused save left an event"
        gaps = [b - a for a, b in itertools.pairwise(ack_times)]
        resumed = [t for t in ack_times if t > killed_leader]
        assert resumed, "saves never resumed after the stream leader died"
        assert all(len(holders) <= 1 for holders in leaders_seen), "two leaders at once"
        assert elected.is_set(), "no leader once the servers were back"
        print(
            f"\n{len(acknowledged)} saves acknowledged, {len(refused)} refused, 0 lost; "
            f"longest pause {max(gaps):.2f}s; first save {resumed[0] - killed_leader:.2f}s "
            "after the stream leader died"
        )
    finally:
        for node_runtime in node_runtimes:
            node_runtime.close()
        runtime.close()
        cluster.close()
