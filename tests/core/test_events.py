"""The wire codec: Go field names, RFC 3339 timestamps, round trips, and refusal of bad input."""

import contextlib
import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aether_django.errors import InvalidEventError, ReplayError
from aether_django.events import (
    ActorSnapshot,
    Event,
    decode_event,
    decode_snapshot,
    encode_event,
    encode_snapshot,
    parse_timestamp,
    with_data,
)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
TIMESTAMPS = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
EVENTS = st.builds(
    Event,
    event_type=st.text(min_size=1, max_size=20),
    actor_id=st.text(min_size=1, max_size=40).filter(str.isprintable),
    version=st.integers(min_value=1, max_value=2**62),
    data=st.dictionaries(st.text(max_size=8), JSON, max_size=5),
    id=st.uuids().map(str),
    command_id=st.none() | st.text(min_size=1, max_size=10),
    metadata=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    timestamp=TIMESTAMPS,
)


@given(EVENTS)
def test_events_round_trip(event):
    assert decode_event(encode_event(event)) == event


@given(
    st.builds(
        ActorSnapshot,
        actor_id=st.text(min_size=1, max_size=20),
        version=st.integers(min_value=1, max_value=2**62),
        state=st.dictionaries(st.text(max_size=8), JSON, max_size=5),
        timestamp=TIMESTAMPS,
    )
)
def test_snapshots_round_trip(snapshot):
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot


def test_wire_format_uses_the_go_field_names():
    event = Event(
        event_type="OrderPlaced",
        actor_id="order-1",
        version=3,
        data={"total": 5},
        id="e-1",
        command_id="c-1",
        metadata={"k": "v"},
        timestamp=datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC),
    )
    assert json.loads(encode_event(event)) == {
        "id": "e-1",
        "eventType": "OrderPlaced",
        "actorId": "order-1",
        "commandId": "c-1",
        "version": 3,
        "data": {"total": 5},
        "metadata": {"k": "v"},
        "timestamp": "2026-01-02T03:04:05.006000Z",
    }


def test_optional_fields_are_omitted_like_go_omitempty():
    doc = json.loads(encode_event(Event(event_type="T", actor_id="a", version=1)))
    assert "commandId" not in doc and "metadata" not in doc


def test_decodes_what_the_go_library_writes():
    go = (
        b'{"id":"x","eventType":"T","actorId":"a","version":1,"data":{"n":1},'
        b'"timestamp":"2026-11-26T10:32:59.795531875Z"}'
    )
    event = decode_event(go)
    assert event.timestamp == datetime(2026, 11, 26, 10, 32, 59, 795531, tzinfo=UTC)
    assert event.metadata == {} and event.command_id is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T00:00:00Z", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T02:00:00+02:00", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T00:00:00.5Z", datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_parse_timestamp(text, expected):
    assert parse_timestamp(text) == expected


def test_timestamps_are_written_in_utc():
    local = datetime(2026, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    doc = json.loads(encode_event(Event(event_type="T", actor_id="a", version=1, timestamp=local)))
    assert doc["timestamp"] == "2026-01-01T00:00:00.000000Z"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"x": object()}, "JSON-serialisable"),
        ({"x": float("inf")}, "JSON-serialisable"),
        ([1, 2], "JSON object"),
        ("text", "JSON object"),
    ],
)
def test_unencodable_data_is_refused(data, match):
    with pytest.raises(InvalidEventError, match=match):
        encode_event(Event(event_type="T", actor_id="a", version=1, data=data))


def test_deeply_nested_data_is_refused_not_crashing():
    nested: dict = {}
    for _ in range(100_000):
        nested = {"x": nested}
    with pytest.raises(InvalidEventError):
        encode_event(Event(event_type="T", actor_id="a", version=1, data=nested))


def test_naive_timestamps_are_refused():
    with pytest.raises(InvalidEventError, match="timezone"):
        encode_event(Event(event_type="T", actor_id="a", version=1, timestamp=datetime(2026, 1, 1)))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x00garbage", "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"id":"x"}', "missing field"),
        (
            b'{"id":"x","eventType":"T","actorId":"a","version":"1","data":{},'
            b'"timestamp":"2026-01-01T00:00:00Z"}',
            "wrong type",
        ),
        (
            b'{"id":"x","eventType":"T","actorId":"a","version":1,"data":{},"timestamp":"soon"}',
            "RFC 3339",
        ),
    ],
)
def test_undecodable_messages_raise_replay_error_with_raw_bytes(raw, reason):
    with pytest.raises(ReplayError, match=reason) as info:
        decode_event(raw, sequence=7, actor_id="a")
    assert info.value.sequence == 7 and info.value.raw == raw


def test_an_event_of_another_actor_is_refused():
    raw = encode_event(Event(event_type="T", actor_id="b", version=1))
    with pytest.raises(ReplayError, match="belongs to actor 'b'"):
        decode_event(raw, actor_id="a")


@given(st.binary(max_size=200))
def test_decoding_arbitrary_bytes_never_raises_anything_but_replay_error(raw):
    with contextlib.suppress(ReplayError):
        decode_event(raw)


def test_with_data_keeps_every_other_field_of_the_event() -> None:
    event = Event(
        event_type="T",
        actor_id="a",
        version=3,
        data={"x": 1},
        id="id-1",
        command_id="cmd-1",
        metadata={"m": "1"},
        timestamp=datetime(2026, 1, 2, tzinfo=UTC),
        sequence=9,
        trace_context={"traceparent": "00-1-2-01"},
    )
    copied = with_data(event, {"x": 2}, {"m": "2"})
    for field in dataclasses.fields(Event):
        expected = {"data": {"x": 2}, "metadata": {"m": "2"}}.get(
            field.name, getattr(event, field.name)
        )
        assert getattr(copied, field.name) == expected, field.name
