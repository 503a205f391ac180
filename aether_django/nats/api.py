"""JetStream API subjects, error codes, and the parsing of API replies and publish acks."""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

__all__ = [
    "ACCOUNT_INFO",
    "ERR_BATCH_DUPLICATE_ID",
    "ERR_MESSAGE_TOO_LARGE",
    "ERR_WRONG_LAST_SEQUENCE",
    "STREAM_CREATED_ADVISORIES",
    "STREAM_LIST",
    "JetStreamRefused",
    "PubAck",
    "delivery_stream_sequence",
    "direct_get_subject",
    "kv_key_subject",
    "kv_stream",
    "parse_ack",
    "parse_reply",
    "stream_info_subject",
]

#: Error code of a write refused because the subject moved on (its last sequence is not
#: the one in ``Nats-Expected-Last-Subject-Sequence``).
ERR_WRONG_LAST_SEQUENCE = 10071
#: Error code of an atomic batch whose message ids are already stored.
ERR_BATCH_DUPLICATE_ID = 10201
#: Error code of a message larger than the stream's largest message.
ERR_MESSAGE_TOO_LARGE = 10054

#: The account's JetStream figures (answered only while JetStream is up).
ACCOUNT_INFO = "$JS.API.INFO"
#: Paged listing of streams (``{"subject": ..., "offset": ...}``).
STREAM_LIST = "$JS.API.STREAM.LIST"
#: Advisories published when a stream is created (the last token is the stream's name).
STREAM_CREATED_ADVISORIES = "$JS.EVENT.ADVISORY.STREAM.CREATED.*"


def stream_info_subject(stream: str) -> str:
    """The STREAM.INFO request subject of ``stream``."""
    return f"$JS.API.STREAM.INFO.{stream}"


def direct_get_subject(stream: str, last_by_subject: str | None = None) -> str:
    """The direct get subject of ``stream``; with ``last_by_subject``, the form that
    answers that subject's last message to an empty request."""
    if last_by_subject:
        return f"$JS.API.DIRECT.GET.{stream}.{last_by_subject}"
    return f"$JS.API.DIRECT.GET.{stream}"


def kv_stream(bucket: str) -> str:
    """The stream that holds KV bucket ``bucket``."""
    return f"KV_{bucket}"


def kv_key_subject(bucket: str, key: str) -> str:
    """The subject that holds ``key`` of KV bucket ``bucket``."""
    return f"$KV.{bucket}.{key}"


def delivery_stream_sequence(reply: str | None) -> int:
    """The stream sequence of a JetStream delivery, from its reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...`` (or, with a domain and
    account hash, two tokens more in front). One split instead of nats-py's full
    metadata parse, which is a noticeable share of draining a stream.
    """
    tokens = (reply or "").split(".")
    return int(tokens[5] if len(tokens) < 12 else tokens[7])


class JetStreamRefused(Exception):
    """The server refused a request; ``code`` is JetStream's error code (``err_code``)."""

    def __init__(self, code: int | None, description: str) -> None:
        self.code = code
        self.description = description
        super().__init__(f"{description} (code {code})")


def parse_reply(data: bytes) -> dict[str, Any]:
    """The JSON document of a JetStream API reply; JetStreamRefused when it is an error
    (or not a JSON object at all)."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise JetStreamRefused(None, f"unexpected reply: {bytes(data[:200])!r}") from None
    if not isinstance(doc, dict):
        raise JetStreamRefused(None, f"unexpected reply: {bytes(data[:200])!r}")
    error = doc.get("error")
    if error:
        raise JetStreamRefused(error.get("err_code"), str(error.get("description")))
    return doc


class PubAck(NamedTuple):
    """What a publish ack says: the (last) stored message's sequence, and whether the
    server already held the message id (nothing was stored)."""

    seq: int
    duplicate: bool


# The common shape of an ack: a plain stream name, then the sequence.
_ACK = re.compile(rb'\{"stream":"[^"\\]*","seq":(\d+)[,}]')
#: A duplicate's ack: Go's encoder writes ``"duplicate":true``, but nats-server builds
#: that ack by hand (2.15 writes ``"duplicate": true``), so any spacing is accepted.
_DUPLICATE = re.compile(rb'"duplicate"\s*:\s*true')


def parse_ack(data: bytes) -> PubAck:
    """The publish ack in ``data``; JetStreamRefused when the server refused the write.

    nats-server writes an ack as ``{"stream":"…","seq":N[,"domain":"…"][,"duplicate":true]…}``
    (Go's encoder, fields in declaration order; a duplicate's flag may be spaced), so
    the sequence is read off the bytes without decoding JSON: a save is one round trip
    and the ack's decoding was a few per cent of its CPU. Anything not shaped that way
    (errors, a server that writes another order, a stream name with a quote or
    backslash in it) goes through the JSON decoder.
    """
    match = _ACK.match(data)
    if match is not None and b'"error"' not in data:
        # The substring test first: a save's ack is rarely a duplicate.
        duplicate = b'"duplicate"' in data and _DUPLICATE.search(data) is not None
        return PubAck(int(match.group(1)), duplicate)
    doc = parse_reply(data)
    try:
        return PubAck(int(doc["seq"]), bool(doc.get("duplicate")))
    except (KeyError, TypeError, ValueError):
        raise JetStreamRefused(None, f"unexpected reply: {bytes(data[:200])!r}") from None
