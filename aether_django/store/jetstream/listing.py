"""The sorted listing of a stream's actor subjects, as STREAM.INFO pages it.

The server answers STREAM.INFO with the stream's subjects from a rank on
(``offset``), up to its cap per reply (100,000). ``Tokens`` decodes such a reply's
subject map lazily, ``Window`` is one reply's part of the listing, and the windows
read are kept per (runtime, stream), so the pages that follow cost a slice.
"""

from __future__ import annotations

import bisect
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple, overload

__all__ = ["Tokens", "Window", "forget_windows", "keep_window", "kept_window", "start_in"]


class Tokens(Sequence[str]):
    """The subject tokens of one STREAM.INFO reply, in order, decoded as far as read.

    nats-server writes the subjects map with Go's JSON encoder, which orders map keys,
    so the reply's keys already come sorted; a page near the front then decodes a
    page's worth of a reply that may hold 100,000 subjects, instead of all of it.
    Should a key ever come out of order, every key is decoded and sorted instead.
    """

    _KEY = re.compile(rb'"((?:[^"\\]|\\.)*)":')

    def __init__(self, raw: bytes, start: int, end: int, prefix: str) -> None:
        self._raw, self._end = raw, end
        self._prefix = len(prefix.encode())
        self._keys = self._KEY.finditer(raw, start, end)
        # Every key is followed by '":' once: a count without decoding any.
        self._count = raw.count(b'":', start, end)
        self._decoded: list[str] = []

    def _token(self, key: bytes) -> str:
        text = json.loads(b'"' + key + b'"') if b"\\" in key else key.decode()
        return str(text)[self._prefix :]

    def _fill(self, n: int) -> None:
        decoded = self._decoded
        for match in self._keys:
            token = self._token(match.group(1))
            if decoded and token < decoded[-1]:
                # Not in order after all: decode the rest and sort everything.
                rest = [self._token(m.group(1)) for m in self._keys]
                self._decoded = sorted([*decoded, token, *rest])
                self._count = len(self._decoded)
                return
            decoded.append(token)
            if len(decoded) >= n:
                return

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            stop = index.indices(self._count)[1]
            self._fill(stop)
            return self._decoded[index]
        if index < 0:
            index += self._count
        self._fill(index + 1)
        return self._decoded[index]


class Window(NamedTuple):
    """Part of a stream's subject listing, sorted, as one STREAM.INFO reply gave it."""

    #: The stream's (number of subjects, first sequence) when read: while both stay the
    #: same, no actor came or went (history is only appended to, or aged out from the
    #: front), so the window still holds.
    key: tuple[int, int]
    #: The rank of ``tokens[0]`` in the whole sorted listing.
    offset: int
    tokens: Sequence[str]
    #: Subjects in the whole listing.
    total: int
    #: The stream's last sequence when read: new actors have their first event after it.
    last_seq: int


def start_in(window: Window, after_token: str | None, limit: int) -> int | None:
    """Where the page after ``after_token`` starts in ``window``, or None when the
    window does not hold that page (it starts before the window, or runs past it)."""
    if after_token is None:
        start = 0
        if window.offset > 0:
            return None
    else:
        if window.offset > 0 and (not window.tokens or window.tokens[0] > after_token):
            return None
        start = bisect.bisect_right(window.tokens, after_token)
    if start + limit > len(window.tokens) and window.offset + len(window.tokens) < window.total:
        return None
    return start


#: Listing windows kept, by (runtime, stream), least recently used first. A window holds
#: up to the server's cap of subjects per reply (100,000), so only a few are kept.
_WINDOWS: OrderedDict[tuple[int, str], Window] = OrderedDict()
_WINDOWS_KEPT = 4
_WINDOWS_LOCK = threading.Lock()


def kept_window(slot: tuple[int, str]) -> Window | None:
    """The window kept for ``slot`` (runtime id, stream name), if any."""
    with _WINDOWS_LOCK:
        return _WINDOWS.get(slot)


def keep_window(slot: tuple[int, str], window: Window) -> None:
    """Keep ``window`` for ``slot``, forgetting the least recently used beyond a few."""
    with _WINDOWS_LOCK:
        _WINDOWS[slot] = window
        _WINDOWS.move_to_end(slot)
        while len(_WINDOWS) > _WINDOWS_KEPT:
            _WINDOWS.popitem(last=False)


def forget_windows() -> None:
    """Forget every kept window (the next page of each stream reads its listing anew)."""
    with _WINDOWS_LOCK:
        _WINDOWS.clear()
