"""What is specific to the JetStream store: streams, subjects, headers, corrupt messages, faults."""

import asyncio
import dataclasses
import json
import time

import nats
import nats.js.errors
import pytest

from aether_django import names
from aether_django.errors import (
    EventStoreError,
    InvalidNamespaceError,
    NamespaceCollisionError,
    PayloadTooLargeError,
    ReplayError,
    SaveOutcomeUnknownError,
    StoreUnavailableError,
    VersionConflictError,
)
from aether_django.events import ActorSnapshot
from aether_django.runtime import Runtime
from aether_django.store.base import StoreConfig
from aether_django.store.jetstream import JetStreamEventStore
from aether_django.store.jetstream.listing import Tokens
from aether_django.testing.contract import ev, unique_namespace


@pytest.fixture
def make_store(aether_nats_url):
    runtimes = []

    def make(namespace=None, url=None, **config):
        runtime = Runtime(url or aether_nats_url)
        runtimes.append(runtime)
        return JetStreamEventStore(
            namespace or unique_namespace(), runtime=runtime, config=StoreConfig(**config)
        )

    yield make
    for runtime in runtimes:
        runtime.close()


async def raw(url):
    return await nats.connect(url)


async def test_one_stream_per_namespace_with_server_side_guarantees(make_store, aether_nats_url):
    store = make_store()
    await store.asave_event(ev("order-1", 1))
    nc = await raw(aether_nats_url)
    try:
        info = await nc.jetstream().stream_info(f"{store.namespace}_events")
        assert info.config.subjects == [f"aether.events.{store.namespace}.*"]
        assert info.config.allow_atomic and info.config.allow_direct
        assert info.config.deny_delete and info.config.deny_purge
        assert info.config.metadata["aether_namespace"] == store.namespace
    finally:
        await nc.close()


async def test_one_subject_per_actor_with_event_id_as_msg_id(make_store, aether_nats_url):
    store = make_store()
    first = await store.asave_event(ev("order-1", 1))
    await store.asave_event(ev("order 2", 1))
    stored = await store.asave_event(ev("order-1", 2))
    nc = await raw(aether_nats_url)
    try:
        js = nc.jetstream()
        msg = await js.get_last_msg(
            f"{store.namespace}_events", f"aether.events.{store.namespace}.order-1"
        )
        assert msg.headers["Nats-Msg-Id"] == stored.id
        assert msg.headers["Aether-Version"] == "2"
        assert json.loads(msg.data)["actorId"] == "order-1"
        assert msg.seq == stored.sequence
        assert store.subject_for("order 2") == f"aether.events.{store.namespace}.=b3JkZXIgMg"
        # Each save asks the server to check the subject's last sequence: none for
        # the actor's first event, the previous event's for the next (the other
        # actor's event in between does not count).
        first_msg = await js.get_msg(f"{store.namespace}_events", first.sequence)
        assert first_msg.headers["Nats-Expected-Last-Subject-Sequence"] == "0"
        assert msg.headers["Nats-Expected-Last-Subject-Sequence"] == str(first.sequence)
    finally:
        await nc.close()


async def test_the_server_refuses_a_write_with_a_stale_expected_sequence(
    make_store, aether_nats_url
):
    """The version check is the server's: a publish that bypasses the store is refused too."""
    store = make_store()
    first = await store.asave_event(ev("order-1", 1))
    await store.asave_event(ev("order-1", 2))
    nc = await raw(aether_nats_url)
    try:
        js = nc.jetstream()
        stale = {"Nats-Expected-Last-Subject-Sequence": str(first.sequence)}
        with pytest.raises(nats.js.errors.BadRequestError) as info:
            await js.publish(store.subject_for("order-1"), b"{}", headers=stale)
        assert info.value.err_code == 10071  # wrong last sequence
        # An actor with no events expects sequence 0; anything else is refused as well.
        with pytest.raises(nats.js.errors.BadRequestError) as info:
            await js.publish(
                store.subject_for("order-9"),
                b"{}",
                headers={"Nats-Expected-Last-Subject-Sequence": str(first.sequence)},
            )
        assert info.value.err_code == 10071
    finally:
        await nc.close()
    assert [e.version for e in await store.aget_events("order-1")] == [1, 2]
    assert await store.aget_events("order-9") == []


async def test_reading_an_unknown_namespace_creates_nothing(make_store, aether_nats_url):
    store = make_store()
    assert await store.aget_events("a") == []
    assert await store.aget_latest_version("a") == 0
    assert await store.aget_latest_snapshot("a") is None
    nc = await raw(aether_nats_url)
    try:
        names = [s.config.name for s in await nc.jetstream().streams_info()]
        assert f"{store.namespace}_events" not in names
    finally:
        await nc.close()


async def test_save_events_is_one_atomic_batch_on_the_server(make_store, aether_nats_url):
    store = make_store()
    stored = await store.asave_events([ev("a", 1), ev("a", 2), ev("a", 3)])
    nc = await raw(aether_nats_url)
    try:
        js = nc.jetstream()
        headers = [
            (await js.get_msg(f"{store.namespace}_events", e.sequence)).headers for e in stored
        ]
        assert len({h["Nats-Batch-Id"] for h in headers}) == 1
        assert [h["Nats-Batch-Sequence"] for h in headers] == ["1", "2", "3"]
        assert headers[-1]["Nats-Batch-Commit"] == "1"
    finally:
        await nc.close()


async def test_corrupt_messages_are_reported_without_losing_clean_events(
    make_store, aether_nats_url
):
    store = make_store()
    await store.asave_events([ev("a", 1), ev("a", 2)])
    nc = await raw(aether_nats_url)
    try:
        ack = await nc.jetstream().publish(
            store.subject_for("a"), b"\xffnot json at all", stream=f"{store.namespace}_events"
        )
    finally:
        await nc.close()
    await store.asave_event(ev("a", 3))

    result = await store.aget_events_with_errors("a")
    assert [e.version for e in result.events] == [1, 2, 3]
    assert len(result.errors) == 1
    error = result.errors[0]
    assert isinstance(error, ReplayError)
    assert error.sequence == ack.seq and error.raw == b"\xffnot json at all"
    assert error.actor_id == "a"
    with pytest.raises(ReplayError):
        await store.aget_events("a")
    # The sync twin reports the same, from a thread without an event loop as a view would.
    assert await asyncio.to_thread(store.get_events_with_errors, "a") == result
    with pytest.raises(ReplayError):
        await asyncio.to_thread(store.get_events, "a")


async def test_a_corrupt_last_message_does_not_break_version_checks(make_store, aether_nats_url):
    store = make_store()
    await store.asave_events([ev("a", 1), ev("a", 2)])
    nc = await raw(aether_nats_url)
    try:
        await nc.jetstream().publish(store.subject_for("a"), b"garbage")
    finally:
        await nc.close()
    fresh = make_store(store.namespace)
    assert await fresh.aget_latest_version("a") == 2
    with pytest.raises(VersionConflictError) as info:
        await fresh.asave_event(ev("a", 2))
    assert info.value.current_version == 2
    await fresh.asave_event(ev("a", 3))


async def test_namespaces_whose_stream_names_collide_are_refused(make_store, aether_nats_url):
    base = unique_namespace()
    first = make_store(f"{base}.x")
    await first.asave_event(ev("a", 1))
    # "{base}__x" would share that stream, so its name is refused outright.
    with pytest.raises(InvalidNamespaceError, match="two underscores"):
        make_store(f"{base}__x")
    # A stream an earlier release (which accepted that spelling) made for "{base}__x":
    # the same stream, recorded for the other name. It is refused, not shared.
    nc = await raw(aether_nats_url)
    try:
        js = nc.jetstream()
        config = (await js.stream_info(first.stream_name)).config
        config.metadata = {**(config.metadata or {}), "aether_namespace": f"{base}__x"}
        await js.update_stream(config)
    finally:
        await nc.close()
    second = make_store(f"{base}.x")
    try:
        with pytest.raises(NamespaceCollisionError, match="belongs to namespace"):
            await second.asave_event(ev("a", 2))
        with pytest.raises(NamespaceCollisionError):
            await second.aget_events("a")
    finally:
        # Namespace listings elsewhere in the session would meet the refused name.
        nc = await raw(aether_nats_url)
        try:
            await nc.jetstream().delete_stream(first.stream_name)
        finally:
            await nc.close()


async def test_a_stale_head_in_another_process_is_corrected_by_the_server(make_store):
    ns = unique_namespace()
    writer_a, writer_b = make_store(ns), make_store(ns)
    await writer_a.asave_event(ev("a", 1))
    assert await writer_b.aget_latest_version("a") == 1  # b now caches version 1
    await writer_a.asave_event(ev("a", 2))
    # b's cached head is stale; the server refuses, b re-reads and reports the truth.
    with pytest.raises(VersionConflictError) as info:
        await writer_b.asave_event(ev("a", 2))
    assert info.value.current_version == 2
    # A greater version goes through after the re-read, on the right sequence.
    stored = await writer_b.asave_event(ev("a", 5))
    assert [e.version for e in await writer_a.aget_events("a")] == [1, 2, 5]
    assert stored.sequence == (await writer_a.aget_events("a"))[-1].sequence


async def test_replay_spans_many_chunks_and_seeks_by_version(make_store):
    store = make_store()
    other = "noise"
    for start in range(1, 5001, 500):
        await store.asave_events([ev("big", v) for v in range(start, start + 500)])
        await store.asave_event(ev(other, start))
    events = await store.aget_events("big")
    assert [e.version for e in events] == list(range(1, 5001))
    assert [e.version for e in await store.aget_events("big", 4990)] == list(range(4990, 5001))
    assert [e.version for e in await store.aget_events("big", 2)][:2] == [2, 3]
    assert await store.aget_events("big", 5001) == []


async def test_configured_payload_limit(make_store):
    store = make_store(max_event_bytes=500)
    with pytest.raises(PayloadTooLargeError, match="limit is 500"):
        await store.asave_event(ev("a", 1, blob="x" * 600))
    await store.asave_event(ev("a", 1, blob="x" * 100))


#: How far past the configured timeout a failing operation may return: time to build
#: and raise the error, on a loaded machine, not another attempt.
TIMEOUT_SLACK = 0.5


def store_operations(store, actor_id):
    """Every store operation on one actor, by name, each a fresh coroutine per call."""
    return {
        "asave_event": lambda: store.asave_event(ev(actor_id, 1)),
        "asave_events": lambda: store.asave_events([ev(actor_id, 1), ev(actor_id, 2)]),
        "aget_events": lambda: store.aget_events(actor_id),
        "aget_latest_version": lambda: store.aget_latest_version(actor_id),
        "asave_snapshot": lambda: store.asave_snapshot(
            ActorSnapshot(actor_id=actor_id, version=1, state={})
        ),
        "aget_latest_snapshot": lambda: store.aget_latest_snapshot(actor_id),
        "alist_namespaces": lambda: type(store).alist_namespaces(
            runtime=store.runtime, config=store.config
        ),
    }


async def test_server_down_gives_a_clear_error_within_the_timeout(make_store):
    from aether_django.testing import find_free_port

    timeout = 1.0
    store = make_store(url=f"nats://127.0.0.1:{find_free_port()}", timeout=timeout)
    for name, call in store_operations(store, "a").items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="did not answer"):
            await call()
        elapsed = time.monotonic() - started
        assert elapsed <= timeout + TIMEOUT_SLACK, f"{name} took {elapsed:.2f}s"


async def test_an_unresponsive_server_gives_a_typed_error_within_the_timeout(
    make_store, aether_nats_server_factory
):
    """A frozen server (SIGSTOP) keeps the TCP connection open but never answers.

    That is the case the configured timeout governs: every operation must give up
    with StoreUnavailableError (SaveOutcomeUnknownError for a save that was sent)
    in time. Saves sent while it was frozen are read by the server once it thaws,
    so saving the same events again must settle on each stored exactly once.
    """
    timeout = 1.0
    server = aether_nats_server_factory()
    store = make_store(url=server.url, timeout=timeout)
    first = await store.asave_event(ev("a", 1))
    # Make the bucket and every actor's stream position known before the freeze, so
    # each operation below goes straight to the frozen server.
    await store.asave_snapshot(ActorSnapshot(actor_id="a", version=1, state={}))

    single = ev("a", 2)
    batch = [ev("a", 3), ev("a", 4)]
    snapshot = ActorSnapshot(actor_id="a", version=2, state={"frozen": True})
    operations = {
        "asave_event": lambda: store.asave_event(single),
        "asave_events": lambda: store.asave_events(batch),
        "aget_events": lambda: store.aget_events("a"),
        "aget_latest_version": lambda: store.aget_latest_version("a"),
        "asave_snapshot": lambda: store.asave_snapshot(snapshot),
        "aget_latest_snapshot": lambda: store.aget_latest_snapshot("a"),
        "alist_namespaces": lambda: type(store).alist_namespaces(
            runtime=store.runtime, config=store.config
        ),
    }
    assert operations.keys() == store_operations(store, "a").keys()
    server.pause()
    try:
        for name, call in operations.items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match=r"did not (answer|confirm)") as info:
                await call()
            elapsed = time.monotonic() - started
            assert elapsed <= timeout + TIMEOUT_SLACK, f"{name} took {elapsed:.2f}s"
            if name.startswith("asave_event"):
                # The publish reached the socket, so the store cannot know the outcome.
                assert isinstance(info.value, SaveOutcomeUnknownError), name
    finally:
        server.resume()

    # Saving the same events again is the documented way to settle an unknown outcome.
    assert (await store.asave_event(single)).id == single.id
    assert [e.id for e in await store.asave_events(batch)] == [e.id for e in batch]
    await store.asave_snapshot(snapshot)
    reader = make_store(store.namespace, url=server.url)
    events = await reader.aget_events("a")
    assert [e.id for e in events] == [first.id, single.id, batch[0].id, batch[1].id]
    assert [e.version for e in events] == [1, 2, 3, 4]
    assert await reader.aget_latest_snapshot("a") == snapshot


@pytest.mark.slow
async def test_server_going_away_mid_write_leaves_nothing_half_written(
    make_store, aether_nats_server_factory
):
    """Kill the server during batched saves: acknowledged saves are stored once,
    refused ones left nothing, unconfirmed ones are whole or absent and resolve on retry."""
    server = aether_nats_server_factory()
    store = make_store(url=server.url, timeout=1.5)
    acknowledged, refused, unknown = [], [], []

    async def writer():
        version = 0
        for i in range(400):
            batch = [ev("a", version + k + 1, i=i) for k in range(3)]
            try:
                await store.asave_events(batch)
            except SaveOutcomeUnknownError:
                unknown.append(batch)
                continue
            except StoreUnavailableError:
                refused.append(batch)
                continue
            except VersionConflictError as exc:
                version = exc.current_version
                continue
            acknowledged.append(batch)
            version += 3
            await asyncio.sleep(0.005)

    task = asyncio.ensure_future(writer())
    await asyncio.sleep(0.3)
    server.kill()
    await asyncio.sleep(2.5)
    server.start()
    await task

    assert refused or unknown, "the kill should have interrupted some saves"
    reader = make_store(store.namespace, url=server.url)
    events = await reader.aget_events("a")
    stored_ids = [e.id for e in events]
    assert len(stored_ids) == len(set(stored_ids)), "an event was stored twice"
    for batch in acknowledged:
        assert all(e.id in stored_ids for e in batch), "an acknowledged save was lost"
    for batch in refused:
        assert not any(e.id in stored_ids for e in batch), "a refused save left events behind"
    for batch in unknown:
        present = [e.id in stored_ids for e in batch]
        assert all(present) or not any(present), "an unconfirmed batch was stored in part"
    versions = [e.version for e in events]
    assert versions == sorted(set(versions))
    print(f"\nacknowledged {len(acknowledged)}, refused {len(refused)}, unconfirmed {len(unknown)}")


async def test_an_unconfirmed_save_is_resolved_by_saving_it_again(make_store):
    """The retry the SaveOutcomeUnknownError message recommends returns the stored events."""
    store = make_store()
    batch = [ev("a", 1), ev("a", 2)]
    stored = await store.asave_events(batch)
    other = make_store(store.namespace)  # a new process: nothing cached
    again = await other.asave_events(batch)
    assert [e.sequence for e in again] == [e.sequence for e in stored]
    assert len(await other.aget_events("a")) == 2


async def test_an_event_id_stored_for_one_actor_is_refused_for_another(make_store):
    """The server holds the id already (its ack says duplicate): the save is refused and
    stores nothing, instead of answering with the other actor's sequence."""
    store = make_store()
    first = await store.asave_event(ev("a", 1))
    reused = dataclasses.replace(ev("b", 1), id=first.id)
    with pytest.raises(EventStoreError, match="unique"):
        await store.asave_event(reused)
    assert await store.aget_events("b") == []
    assert await store.aget_latest_version("b") == 0


async def test_stream_settings_come_from_the_store_config(make_store, aether_nats_url):
    store = make_store(
        storage="memory", max_age=3600, max_bytes=50_000_000, duplicate_window=30, immutable=False
    )
    await store.asave_event(ev("a", 1))
    nc = await raw(aether_nats_url)
    try:
        config = (await nc.jetstream().stream_info(store.stream_name)).config
        assert getattr(config.storage, "value", config.storage) == "memory"
        assert getattr(config.retention, "value", config.retention) == "limits"
        assert config.max_age == 3600
        assert config.max_bytes == 50_000_000
        assert config.duplicate_window == 30
        assert not config.deny_delete and not config.deny_purge
        assert config.max_msg_size == 1024 * 1024 + 4096
    finally:
        await nc.close()


async def test_a_saved_snapshot_is_in_the_namespaces_bucket_under_the_actors_key(
    make_store, aether_nats_url
):
    store = make_store()
    await store.asave_event(ev("order 1", 1))
    snapshot = ActorSnapshot(actor_id="order 1", version=1, state={"total": 30})
    await store.asave_snapshot(snapshot)
    nc = await raw(aether_nats_url)
    try:
        kv = await nc.jetstream().key_value(f"{store.namespace}_snapshots")
        entry = await kv.get(names.actor_token("order 1"))
        stored = json.loads(entry.value or b"")
        assert (stored["actorId"], stored["version"], stored["state"]) == (
            "order 1",
            1,
            {"total": 30},
        )
        assert entry.revision == 1
        assert (await kv.status()).history == 1  # only the latest snapshot is kept
    finally:
        await nc.close()


def test_a_listing_replys_keys_are_decoded_as_far_as_read_and_sorted_if_out_of_order():

    raw = b'{"subjects":{"p.a":1,"p.b":2,"p.c\\u003d":1,"p.d":3}}'
    start = raw.index(b"{", 1)
    tokens = Tokens(raw, start, raw.index(b"}") + 1, "p.")
    assert len(tokens) == 4
    assert tokens[:2] == ["a", "b"]
    assert tokens._decoded == ["a", "b"]  # nothing decoded past the page
    assert list(tokens) == ["a", "b", "c=", "d"]  # an escaped key is decoded as JSON
    unordered = b'{"subjects":{"p.b":1,"p.a":2,"p.c":1}}'
    tokens = Tokens(unordered, unordered.index(b"{", 1), unordered.index(b"}") + 1, "p.")
    # Disorder among the keys read is noticed, and then every key is sorted.
    assert tokens[:2] == ["a", "b"] and list(tokens) == ["a", "b", "c"] and len(tokens) == 3


async def test_the_servers_subject_listing_comes_in_key_order(make_store):
    # Tokens relies on it (nats-server writes the map with Go's JSON encoder, which
    # orders map keys): check it on the real server with actors saved out of order.
    store = make_store()
    ids = [f"actor-{n:03d}" for n in (7, 3, 9, 1, 5, 0, 8, 2, 6, 4)]
    for actor_id in ids:
        await store.asave_event(ev(actor_id, 1))
    prefix = store._subject_prefix + "."
    for offset in (0, 3):  # whole, and paged (which the server sorts itself)
        raw = await store._inspector.stream_info_raw(
            {"subjects_filter": prefix + "*", "offset": offset}, store._retry.deadline()
        )
        start = raw.index(b'"subjects":{') + len(b'"subjects":')
        keys = [m.group(1) for m in Tokens._KEY.finditer(raw, start, raw.index(b"}", start))]
        assert keys == sorted(keys) and len(keys) == 10 - offset
