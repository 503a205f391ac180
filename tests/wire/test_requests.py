"""The wire package against a real server: its request/reply, direct gets and listing."""

from __future__ import annotations

import asyncio
import gc
import weakref

import nats
import nats.errors
import pytest

from aether_django.nats import headers as hdr
from aether_django.nats.api import JetStreamRefused, parse_ack
from aether_django.nats.direct import direct_get, direct_get_batch, direct_get_last
from aether_django.nats.request import request
from aether_django.nats.streams import list_streams, stream_info
from aether_django.testing.contract import unique_namespace


@pytest.fixture
async def nc(aether_nats_url):
    conn = await nats.connect(aether_nats_url)
    yield conn
    await conn.close()


async def test_a_request_gets_its_reply_and_concurrent_ones_get_theirs(nc) -> None:
    async def echo(msg) -> None:
        await msg.respond(msg.data.upper())

    subject = f"echo.{unique_namespace()}"
    await nc.subscribe(subject, cb=echo)
    await nc.flush()
    words = [f"w{i}".encode() for i in range(50)]
    replies = await asyncio.gather(*(request(nc, subject, w, 5.0) for w in words))
    assert [r.data for r in replies] == [w.upper() for w in words]


async def test_a_request_no_one_answers_times_out_and_a_late_reply_is_dropped(nc) -> None:
    held: list = []

    async def hold(msg) -> None:
        held.append(msg)

    subject = f"late.{unique_namespace()}"
    await nc.subscribe(subject, cb=hold)
    await nc.flush()
    with pytest.raises(nats.errors.TimeoutError):
        await request(nc, subject, b"1", 0.2)
    # The late answer finds no one waiting; the next request gets its own answer.
    await held[0].respond(b"late")

    async def answer(msg) -> None:
        await msg.respond(b"on time")

    other = f"ontime.{unique_namespace()}"
    await nc.subscribe(other, cb=answer)
    await nc.flush()
    assert (await request(nc, other, b"2", 5.0)).data == b"on time"


async def test_a_request_to_a_subject_without_listeners_raises_no_responders(nc) -> None:
    with pytest.raises(nats.errors.NoRespondersError):
        await request(nc, f"nobody.{unique_namespace()}", b"", 2.0)


async def test_a_repeated_message_id_comes_back_as_a_duplicate(nc) -> None:
    # What the store relies on to store an event id once: the server's own ack bytes.
    js = nc.jetstream()
    name = f"wire_{unique_namespace()}"
    await js.add_stream(name=name, subjects=[f"{name}.*"], duplicate_window=60)
    first = parse_ack((await request(nc, f"{name}.a", b"1", 5.0, {hdr.MSG_ID: "x"})).data)
    assert not first.duplicate
    for subject in (f"{name}.a", f"{name}.b"):  # the same subject, and another
        again = parse_ack((await request(nc, subject, b"2", 5.0, {hdr.MSG_ID: "x"})).data)
        assert again == (first.seq, True)


async def test_a_refused_write_comes_back_with_its_error_code(nc) -> None:
    js = nc.jetstream()
    name = f"wire_{unique_namespace()}"
    await js.add_stream(name=name, subjects=[f"{name}.*"], allow_direct=True)
    first = parse_ack((await request(nc, f"{name}.a", b"1", 5.0)).data)
    second = parse_ack(
        (
            await request(
                nc, f"{name}.a", b"2", 5.0, {hdr.EXPECTED_LAST_SUBJECT_SEQUENCE: str(first.seq)}
            )
        ).data
    )
    assert second.seq == first.seq + 1
    with pytest.raises(JetStreamRefused) as info:
        parse_ack(
            (
                await request(nc, f"{name}.a", b"3", 5.0, {hdr.EXPECTED_LAST_SUBJECT_SEQUENCE: "1"})
            ).data
        )
    assert info.value.code == 10071

    last = await direct_get_last(nc, name, f"{name}.a", 5.0)
    assert last is not None and last.data == b"2"
    assert last.headers is not None and last.headers[hdr.SEQUENCE] == "2"
    assert await direct_get_last(nc, name, f"{name}.none", 5.0) is None
    nxt = await direct_get(nc, name, 5.0, seq=1, next_by_subject=f"{name}.a")
    assert nxt is not None and nxt.data == b"1"
    batch = await direct_get_batch(nc, name, {"multi_last": [f"{name}.>"], "batch": 10}, 5.0)
    assert [m.data for m in batch] == [b"2"]

    info_doc = await stream_info(nc, name, 5.0)
    assert info_doc["state"]["messages"] == 2
    with pytest.raises(JetStreamRefused):
        await stream_info(nc, f"{name}_missing", 5.0)
    listed = [i["config"]["name"] async for i in list_streams(nc, f"{name}.*", 5.0)]
    assert listed == [name]


async def test_the_wire_package_keeps_no_closed_connection_alive(aether_nats_url) -> None:
    conn = await nats.connect(aether_nats_url)
    with pytest.raises(nats.errors.NoRespondersError):
        await request(conn, f"nobody.{unique_namespace()}", b"", 2.0)
    with pytest.raises(nats.errors.NoRespondersError):
        await direct_get_last(conn, f"missing_{unique_namespace()}", "x", 2.0)
    await conn.close()
    gone = weakref.ref(conn)
    del conn
    gc.collect()
    assert gone() is None
