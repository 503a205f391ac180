"""Events, snapshots and their JSON wire format (the Go library's field names).

Pure: imports neither Django nor nats.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from .errors import InvalidEventError, ReplayError
from .names import validate_actor_id

__all__ = [
    "ActorSnapshot",
    "Event",
    "ReplayResult",
    "decode_event",
    "decode_snapshot",
    "encode_event",
    "encode_snapshot",
    "format_timestamp",
    "new_event_id",
    "parse_timestamp",
    "with_sequence",
]


def new_event_id() -> str:
    """A fresh random event id (a UUID4 string, as the Go library makes)."""
    return str(uuid.uuid4())


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One immutable fact about one actor.

    ``version`` orders an actor's events: each saved version is strictly greater
    than the one before (gaps allowed, the first is > 0). ``sequence`` is the
    position the store gave the event in its namespace's stream; it is ``None``
    until the event is stored and is not part of the wire format. Neither is
    ``trace_context``: the W3C trace headers (``traceparent``, ``tracestate``) the
    event's NATS message was stored with when tracing is on (:mod:`aether_django.tracing`),
    so that what handles the event joins the trace of the save that wrote it; None
    when there are none or tracing is off.
    """

    event_type: str
    actor_id: str
    version: int
    data: Mapping[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_event_id)
    command_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=_now)
    sequence: int | None = field(default=None, compare=False)
    trace_context: Mapping[str, str] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorSnapshot:
    """An actor's state as of ``version``; loading replays only later events."""

    actor_id: str
    version: int
    state: Mapping[str, Any]
    timestamp: datetime = field(default_factory=_now)


_EVENT_FIELDS = Event.__slots__


def _copy(event: Event) -> Event:
    # Slot by slot: cheaper than dataclasses.replace, which looks the fields up on every
    # call, and than the constructor; the copies below run once per saved or opened event.
    copy = object.__new__(Event)
    for name in _EVENT_FIELDS:
        object.__setattr__(copy, name, getattr(event, name))
    return copy


def with_sequence(event: Event, sequence: int) -> Event:
    """A copy of ``event`` carrying its stream ``sequence``."""
    copy = _copy(event)
    object.__setattr__(copy, "sequence", sequence)
    return copy


def with_data(event: Event, data: Mapping[str, Any], metadata: Mapping[str, str]) -> Event:
    """A copy of ``event`` with other ``data`` and ``metadata`` (its personal fields
    sealed or opened, aether_django.privacy)."""
    copy = _copy(event)
    object.__setattr__(copy, "data", data)
    object.__setattr__(copy, "metadata", metadata)
    return copy


class ReplayResult(NamedTuple):
    """The clean events of a replay and one ReplayError per message that did not decode."""

    events: list[Event]
    errors: list[ReplayError]


# --- timestamps ----------------------------------------------------------------

_TS_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(Z|z|[+-]\d{2}:\d{2})\Z"
)


def format_timestamp(ts: datetime) -> str:
    """RFC 3339 in UTC with microseconds and 'Z', as Go's time.Time marshals it."""
    if ts.tzinfo is not UTC:
        if ts.tzinfo is None:
            raise InvalidEventError("timestamp must be timezone-aware")
        ts = ts.astimezone(UTC)
    # isoformat is several times faster than strftime; "+00:00" becomes "Z".
    return ts.isoformat(timespec="microseconds")[:-6] + "Z"


def parse_timestamp(text: str) -> datetime:
    """Parse RFC 3339 (up to nanoseconds, which are truncated to microseconds)."""
    if not isinstance(text, str):
        # A stored document may hold anything here; a list has a len() but no endswith().
        raise TypeError(f"timestamp must be a string, not {type(text).__name__}")
    if len(text) <= 27 and text.endswith("Z") and "T" in text:
        # The common case (what we write): fromisoformat is several times faster.
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)
    m = _TS_RE.match(text)
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second, frac, zone = m.groups()
    micro = int((frac or "0").ljust(6, "0")[:6])
    iso = f"{year}-{month}-{day}T{hour}:{minute}:{second}.{micro:06d}"
    iso += "+00:00" if zone in ("Z", "z") else zone
    try:
        return datetime.fromisoformat(iso).astimezone(UTC)
    except OverflowError:
        # "0001-01-01T00:00:00+01:00" is valid RFC 3339 but before datetime.min in UTC.
        raise ValueError(f"timestamp out of range: {text!r}") from None


# --- codec ---------------------------------------------------------------------

_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode

#: Deepest nesting of objects and lists accepted in event data and snapshot state.
#: Python's JSON parser gives up near the interpreter's recursion limit (1000 frames,
#: shared with whatever is on the stack when it runs), so data nested a little less
#: deeply than that could be encoded and stored, then fail to decode on a later read.
MAX_JSON_DEPTH = 500


def _check_json_object(value: object, what: str) -> None:
    if not isinstance(value, Mapping):
        raise InvalidEventError(
            f"{what} must be a JSON object (a mapping), not {type(value).__name__}"
        )


def _check_depth(value: object, raw: bytes, what: str) -> None:
    """Refuse ``value`` (already encoded as ``raw``) if nested deeper than MAX_JSON_DEPTH."""
    # Nesting cannot exceed the number of opening brackets, and counting those in C
    # keeps the walk below off the path of ordinary events.
    if raw.count(b"{") + raw.count(b"[") <= MAX_JSON_DEPTH:
        return
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:  # iterative: the point is not to recurse
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise InvalidEventError(
                f"{what} is nested more than {MAX_JSON_DEPTH} levels deep; it could not be "
                "read back"
            )
        stack.extend((child, depth + 1) for child in children)


def encode_event(event: Event) -> bytes:
    """Encode an event as JSON with the Go library's field names.

    Raises InvalidEventError when the event cannot be represented (data that is not
    JSON-serialisable or is nested deeper than MAX_JSON_DEPTH, metadata that is not a
    string map, a naive timestamp).
    """
    _check_json_object(event.data, "data")
    doc: dict[str, Any] = {
        "id": event.id,
        "eventType": event.event_type,
        "actorId": event.actor_id,
    }
    if event.command_id:
        doc["commandId"] = event.command_id
    doc["version"] = event.version
    doc["data"] = event.data
    if event.metadata:
        _check_metadata(event.metadata)
        doc["metadata"] = event.metadata
    doc["timestamp"] = format_timestamp(event.timestamp)
    return _encode(doc, event.data, "event data")


def _encode(doc: dict[str, Any], value: Any, what: str) -> bytes:
    """``doc`` as JSON bytes; InvalidEventError if ``value`` (what ``what`` names in the
    message) is not JSON or nests too deep."""
    try:
        raw = _dumps(doc).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidEventError(f"{what} is not JSON-serialisable: {exc}") from None
    _check_depth(value, raw, what)
    return raw


def _check_metadata(metadata: Mapping[str, str]) -> None:
    _check_json_object(metadata, "metadata")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidEventError("metadata must map strings to strings")


def validate_event(event: Event) -> None:
    """Check what encoding does not: types of the identifying fields and the version."""
    if not isinstance(event, Event):
        raise InvalidEventError(f"expected an Event, not {type(event).__name__}")
    validate_actor_id(event.actor_id)
    if not isinstance(event.event_type, str) or not event.event_type:
        raise InvalidEventError("event_type must be a non-empty string")
    if not isinstance(event.id, str) or not event.id:
        raise InvalidEventError("event id must be a non-empty string")
    if "\r" in event.id or "\n" in event.id or event.id != event.id.strip():
        # The id travels as the Nats-Msg-Id header, the server's deduplication key;
        # nats-py strips header values and turns line breaks into spaces, so such an
        # id would be deduplicated against another one ("a\rb" and "a\nb" both
        # become "a b") and not be recognised in its own stored header.
        raise InvalidEventError(
            "event id must not contain line breaks or start or end with whitespace"
        )
    if isinstance(event.version, bool) or not isinstance(event.version, int):
        raise InvalidEventError(f"version must be an integer, not {type(event.version).__name__}")
    if event.version <= 0:
        raise InvalidEventError(f"version must be greater than 0, got {event.version}")


def _fail(sequence: int, raw: bytes, reason: str, actor_id: str) -> ReplayError:
    return ReplayError(sequence=sequence, raw=raw, reason=reason, actor_id=actor_id)


def decode_event(
    raw: bytes,
    *,
    sequence: int = 0,
    actor_id: str = "",
    trace_context: Mapping[str, str] | None = None,
) -> Event:
    """Decode one stored event; raise ReplayError (carrying ``raw``) when it cannot.

    When ``actor_id`` is given, an event claiming another actor is refused too.
    ``trace_context``: the trace headers of the event's message (kept, not checked).
    """
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _fail(sequence, raw, f"not JSON: {exc}", actor_id) from None
    if not isinstance(doc, dict):
        raise _fail(sequence, raw, "not a JSON object", actor_id)
    try:
        data = doc.get("data")
        if data is None:
            data = {}
        metadata = doc.get("metadata") or {}
        event = Event(
            id=doc["id"],
            event_type=doc["eventType"],
            actor_id=doc["actorId"],
            command_id=doc.get("commandId") or None,
            version=doc["version"],
            data=data,
            metadata=metadata,
            timestamp=parse_timestamp(doc["timestamp"]),
            sequence=sequence or None,
            trace_context=trace_context,
        )
    except KeyError as exc:
        raise _fail(sequence, raw, f"missing field {exc.args[0]!r}", actor_id) from None
    except (TypeError, ValueError) as exc:
        raise _fail(sequence, raw, str(exc), actor_id) from None
    if (
        not isinstance(event.id, str)
        or not isinstance(event.event_type, str)
        or not isinstance(event.actor_id, str)
        or isinstance(event.version, bool)
        or not isinstance(event.version, int)
        or not isinstance(event.data, dict)
        or not isinstance(event.metadata, dict)
    ):
        raise _fail(sequence, raw, "a field has the wrong type", actor_id)
    if actor_id and event.actor_id != actor_id:
        raise _fail(sequence, raw, f"event belongs to actor {event.actor_id!r}", actor_id)
    return event


def encode_snapshot(snapshot: ActorSnapshot) -> bytes:
    """Encode a snapshot as JSON (``actorId``, ``version``, ``state``, ``timestamp``)."""
    _check_json_object(snapshot.state, "snapshot state")
    doc = {
        "actorId": snapshot.actor_id,
        "version": snapshot.version,
        "state": snapshot.state,
        "timestamp": format_timestamp(snapshot.timestamp),
    }
    return _encode(doc, snapshot.state, "snapshot state")


def decode_snapshot(raw: bytes) -> ActorSnapshot:
    """Decode a stored snapshot; raise ValueError when it is malformed."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("state"), dict):
            raise ValueError("snapshot is not a JSON object with a 'state' object")
        return ActorSnapshot(
            actor_id=doc["actorId"],
            version=int(doc["version"]),
            state=doc["state"],
            timestamp=parse_timestamp(doc["timestamp"]),
        )
    except (KeyError, TypeError, OverflowError, RecursionError) as exc:
        # A missing field, a list where a number belongs, "version": 1e400 (int(inf)),
        # nesting deeper than the parser's limit: all just a malformed snapshot.
        raise ValueError(f"malformed snapshot: {exc!r}") from None
