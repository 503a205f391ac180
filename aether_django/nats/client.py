"""The nats-py client aether connects with, and what it does with dropped messages.

nats-py parses the headers of every message it receives in
``Client._parse_header_lines``, checking each header name one character at a time
in a generator. Every stored event arrives with six or so headers, so on replays
and bus deliveries that parser was a large share of the client's CPU
(docs/performance.md). :class:`Client` replaces it with :func:`parse_header_lines`,
which gives the same results (tests/core/test_wire_headers.py compares the two on
generated header blocks) at about half the cost.

``_parse_header_lines`` is private to nats-py and has changed between releases, so
the replacement is installed only when it is known to be equivalent and in use:

* nats-py's version is in :data:`VERIFIED_NATS_PY` (the range pyproject.toml pins);
* nats-py calls that method at all (it does not when ``fast_mail_parser`` is
  installed: then it parses with that library and the override would do nothing).

Otherwise :class:`Client` is nats-py's client unchanged.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from typing import Any

import nats.aio.client
from nats.aio.client import Client as NATS

__all__ = [
    "FAST_HEADER_PARSER",
    "VERIFIED_NATS_PY",
    "Client",
    "dropped_messages_handler",
    "handle_dropped_messages",
    "parse_header_lines",
]

#: nats-py releases (from, up to but excluding) whose header parser
#: :func:`parse_header_lines` was compared with.
VERIFIED_NATS_PY = ((2, 16), (2, 17))

_CRLF = b"\r\n"
# What str.isspace() calls whitespace among ASCII characters: nats-py drops header
# names containing any of them.
_NAME_SPACE = re.compile(rb"[\s\x1c-\x1f]")


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """Parse a NATS header block (``Name: Value\\r\\n`` per line) as nats-py 2.16 does.

    Lines without a colon, names with whitespace in them and names that are not
    ASCII are skipped; values are stripped and decoded as UTF-8 with replacement.
    One regex search on the name's bytes replaces nats-py's per-character check.
    """
    out: dict[str, str] = {}
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip()
        if _NAME_SPACE.search(name):
            continue
        try:
            key = name.decode("ascii")
        except UnicodeDecodeError:
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


def _version(text: str) -> tuple[int, int]:
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


def _fast_parser_applies() -> bool:
    """Whether nats-py is a verified release that parses headers with the method."""
    low, high = VERIFIED_NATS_PY
    version = _version(str(getattr(nats.aio.client, "__version__", "0.0")))
    return (
        low <= version < high
        and getattr(nats.aio.client, "parse_email", None) is None
        and callable(getattr(NATS, "_parse_header_lines", None))
    )


#: Whether :class:`Client` parses headers with :func:`parse_header_lines`.
FAST_HEADER_PARSER = _fast_parser_applies()


class Client(NATS):
    """nats-py's client; with :data:`FAST_HEADER_PARSER`, its header parser is
    :func:`parse_header_lines` (same results, faster)."""


if FAST_HEADER_PARSER:
    Client._parse_header_lines = staticmethod(parse_header_lines)  # type: ignore[method-assign]


# Callbacks of nats-py subscriptions whose dropped messages their owner expects and
# recovers from (a bus consumer held to a byte budget) -> what to call instead of
# logging an error. Keyed by the callback: it exists before the subscription does.
_DROP_HANDLERS: weakref.WeakKeyDictionary[Any, Callable[[], None]] = weakref.WeakKeyDictionary()


def handle_dropped_messages(callback: Any, handler: Callable[[], None]) -> None:
    """Call ``handler`` (on the connection's loop) instead of logging an error when
    nats-py drops messages of the subscription made with ``callback`` because its
    pending limit is reached.

    Register before subscribing, so that no drop comes before the handler. The
    connection's error callback (``aether_django.runtime``) looks it up with
    :func:`dropped_messages_handler`.
    """
    _DROP_HANDLERS[callback] = handler


def dropped_messages_handler(callback: Any) -> Callable[[], None] | None:
    """The handler registered for the subscription made with ``callback``, if any."""
    if callback is None:
        return None
    return _DROP_HANDLERS.get(callback)
