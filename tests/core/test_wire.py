"""The wire package: its header parser against nats-py's own, its ack parser against
JSON decoding, and the rule that no other module speaks the JetStream API."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nats.aio.client
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aether_django.nats import client as wire_client
from aether_django.nats.api import JetStreamRefused, PubAck, parse_ack
from aether_django.nats.client import (
    FAST_HEADER_PARSER,
    VERIFIED_NATS_PY,
    Client,
    parse_header_lines,
)

PACKAGE = Path(__file__).resolve().parents[2] / "aether_django"

# --- the header parser ---------------------------------------------------------------

#: nats-py's own parser (the base class's, whatever the subclass installs).
nats_py_parser = nats.aio.client.Client._parse_header_lines

# Pieces that exercise every branch: whitespace of each kind (ASCII and the
# separators str.isspace() also counts), colons, non-ASCII and invalid UTF-8 bytes.
_TRICKY = [b" ", b"\t", b"\x0b", b"\x0c", b"\r", b"\n", b"\x1c", b"\x1d", b"\x1e", b"\x1f"]
_TRICKY += [b":", b": ", b"\xc3\xa9", b"\xff", b"\x85", b"\xa0", b"", b"Nats-Msg-Id", b"a-b_c"]
piece = st.one_of(st.sampled_from(_TRICKY), st.binary(max_size=12))
line = st.lists(piece, max_size=6).map(b"".join)
header_line = st.tuples(
    st.lists(piece, max_size=3).map(b"".join),
    st.sampled_from([b":", b": ", b":\t", b" : "]),
    st.lists(piece, max_size=4).map(b"".join),
).map(b"".join)
block = st.lists(st.one_of(line, header_line), max_size=8).map(
    lambda lines: b"\r\n".join(lines) + b"\r\n\r\n"
)


@given(block)
def test_the_header_parser_gives_what_nats_py_gives(raw: bytes) -> None:
    assert parse_header_lines(raw) == nats_py_parser(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"Nats-Stream: s\r\nNats-Subject: aether.ns.a\r\nNats-Sequence: 7\r\n"
        b"Nats-Time-Stamp: 2026-01-01T00:00:00.123456789Z\r\nNats-Msg-Id: x\r\n"
        b"Aether-Version: 3\r\n\r\n",
        b"Bad Name: v\r\nok:v\r\n\xff: v\r\nv\xc3\xa9: w\r\nk: \xff\r\n\r\n",
        b"a\x1fb: v\r\n a : v \r\n:\r\n\r\n",
        b"",
    ],
)
def test_the_header_parser_on_known_blocks(raw: bytes) -> None:
    assert parse_header_lines(raw) == nats_py_parser(raw)


def test_the_installed_nats_py_is_verified_and_uses_the_fast_parser() -> None:
    # pyproject.toml pins nats-py to VERIFIED_NATS_PY: the guard is open on it.
    low, high = VERIFIED_NATS_PY
    assert low <= wire_client._version(nats.aio.client.__version__) < high
    assert FAST_HEADER_PARSER
    assert Client._parse_header_lines is parse_header_lines


def test_the_guard_closes_outside_the_verified_range(monkeypatch: pytest.MonkeyPatch) -> None:
    assert wire_client._fast_parser_applies()
    monkeypatch.setattr(nats.aio.client, "__version__", "2.99.0")
    assert not wire_client._fast_parser_applies()
    monkeypatch.setattr(nats.aio.client, "__version__", "3.0.0")
    assert not wire_client._fast_parser_applies()


def test_the_guard_closes_when_nats_py_parses_with_fast_mail_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Then nats-py never calls _parse_header_lines: an override would do nothing.
    monkeypatch.setattr(nats.aio.client, "parse_email", lambda raw: None, raising=False)
    assert not wire_client._fast_parser_applies()


# --- acks ------------------------------------------------------------------------------


def _json_ack(data: bytes) -> PubAck:
    doc = json.loads(data)
    return PubAck(int(doc["seq"]), bool(doc.get("duplicate")))


@given(
    stream=st.text(max_size=20),
    seq=st.integers(min_value=0, max_value=2**63),
    domain=st.none() | st.text(max_size=8),
    duplicate=st.booleans(),
    batch=st.none() | st.tuples(st.text(max_size=8), st.integers(1, 1000)),
)
def test_the_ack_parser_reads_what_json_reads(
    stream: str, seq: int, domain: str | None, duplicate: bool, batch: tuple[str, int] | None
) -> None:
    # Field order as nats-server's PubAck struct writes them.
    doc: dict[str, object] = {"stream": stream, "seq": seq}
    if domain is not None:
        doc["domain"] = domain
    if duplicate:
        doc["duplicate"] = True
    if batch is not None:
        doc["batch"], doc["count"] = batch
    data = json.dumps(doc, separators=(",", ":")).encode()
    assert parse_ack(data) == _json_ack(data)


@pytest.mark.parametrize(
    "data",
    [
        # nats-server 2.15 writes a duplicate's ack by hand, with a space after the colon.
        b'{"stream":"s","seq":1,"duplicate": true}',
        b'{"stream":"s","seq":1,"domain":"d","duplicate":\ttrue}',
        b'{"stream":"s","seq":1,"duplicate":true}',
    ],
)
def test_a_duplicate_is_recognised_however_the_server_spaces_it(data: bytes) -> None:
    assert parse_ack(data) == PubAck(1, True) == _json_ack(data)


def test_a_refused_write_raises_with_the_error_code() -> None:
    data = (
        b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 4"},'
        b'"stream":"s","seq":0}'
    )
    with pytest.raises(JetStreamRefused) as info:
        parse_ack(data)
    assert info.value.code == 10071
    assert info.value.description == "wrong last sequence: 4"


@pytest.mark.parametrize("data", [b"", b"not json", b"[1]", b'{"stream":"s"}', b'{"seq":"x"}'])
def test_a_reply_that_is_no_ack_raises(data: bytes) -> None:
    with pytest.raises(JetStreamRefused) as info:
        parse_ack(data)
    assert info.value.code is None


# --- one place speaks JetStream ------------------------------------------------------------


def _literals(path: Path) -> list[tuple[int, str]]:
    """String literals of ``path`` that are not docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(str(v.value) for v in node.values if isinstance(v, ast.Constant))
            found.append((node.lineno, text))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            found.append((node.lineno, node.value))
    return found


def test_only_the_wire_package_writes_jetstream_subjects_and_headers() -> None:
    offending = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "nats" and path.parent.parent == PACKAGE:
            continue
        for lineno, text in _literals(path):
            if "$JS." in text or "$KV." in text or text.startswith(("Nats-", "KV-Operation")):
                offending.append(f"{path.relative_to(PACKAGE)}:{lineno}: {text!r}")
    assert not offending, "JetStream API spoken outside aether_django/nats/:\n" + "\n".join(
        offending
    )
