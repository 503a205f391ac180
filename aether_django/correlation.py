"""Correlation and causation ids: which request or event led to an event.

Every event an aggregate records carries two entries in its metadata (the Go wire
format's string map), under the keys the Go library's users already read:

* ``correlationId``: the same for everything one request or one command started,
  however many aggregates, process managers and nodes it passed through;
* ``causationId``: the id of what directly caused this event: the HTTP request (its
  ``X-Request-ID``), the command, or the event a process manager reacted to.

The ids travel in a context variable, so code that records events need not pass them
along: the API sets them from the request, a process manager from the event it
handles, a node serving a routed command from the request it received. Where nothing
set them, :func:`stamp` makes a fresh correlation id (the cause is then the command id
when there is one). Pure: imports neither Django nor nats.
"""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CAUSATION_KEY",
    "CORRELATION_KEY",
    "Causes",
    "caused_by",
    "current",
    "new_id",
    "request_id",
    "stamp",
    "use",
]

#: Metadata key of the correlation id (the Go wire format's metadata map).
CORRELATION_KEY = "correlationId"
#: Metadata key of the causation id.
CAUSATION_KEY = "causationId"


@dataclass(frozen=True, slots=True)
class Causes:
    """The correlation and causation ids in effect."""

    correlation_id: str
    causation_id: str


class _HasMetadata(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def metadata(self) -> Mapping[str, str]: ...


_current: contextvars.ContextVar[Causes | None] = contextvars.ContextVar(
    "aether_causes", default=None
)


def new_id() -> str:
    """A fresh id for a request or a correlation (a UUID4 string)."""
    return str(uuid.uuid4())


def current() -> Causes | None:
    """The ids set by the innermost :func:`use` or :func:`caused_by`, if any."""
    return _current.get()


@contextlib.contextmanager
def use(correlation_id: str, causation_id: str | None = None) -> Iterator[Causes]:
    """Within the block, recorded events carry these ids (the causation defaults to the
    correlation: a request is its own cause)."""
    causes = Causes(correlation_id, causation_id or correlation_id)
    token = _current.set(causes)
    try:
        yield causes
    finally:
        _current.reset(token)


@contextlib.contextmanager
def caused_by(event: _HasMetadata) -> Iterator[Causes]:
    """Within the block, recorded events are caused by ``event``: causation is its id,
    correlation is its correlation id (its own id when it has none)."""
    correlation = event.metadata.get(CORRELATION_KEY) or event.id
    with use(correlation, event.id) as causes:
        yield causes


#: Longest request id taken from a client (``X-Request-ID``); a longer one is replaced.
MAX_REQUEST_ID_LENGTH = 200


def request_id(header: str | None) -> str:
    """The id of a request: the client's ``X-Request-ID`` when it is 1 to
    ``MAX_REQUEST_ID_LENGTH`` printable ASCII characters without spaces, otherwise a
    fresh one (an id that would garble logs or metadata is not passed on)."""
    if (
        header
        and len(header) <= MAX_REQUEST_ID_LENGTH
        and header.isascii()
        and header.isprintable()
        and " " not in header
    ):
        return header
    return new_id()


def stamp(metadata: Mapping[str, str], *, command_id: str | None = None) -> dict[str, str]:
    """``metadata`` with the correlation and causation ids added where missing.

    Ids already in ``metadata`` win (an event copied or imported keeps its own); then
    the ones in effect; then a fresh correlation id, caused by ``command_id`` when
    there is one.
    """
    stamped = dict(metadata)
    if CORRELATION_KEY in stamped and CAUSATION_KEY in stamped:
        return stamped
    causes = _current.get()
    if causes is None:
        correlation = stamped.get(CORRELATION_KEY) or new_id()
        causes = Causes(correlation, command_id or correlation)
    stamped.setdefault(CORRELATION_KEY, causes.correlation_id)
    stamped.setdefault(CAUSATION_KEY, causes.causation_id)
    return stamped
