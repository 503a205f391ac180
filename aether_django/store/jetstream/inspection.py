"""Inspection: the namespace's figures, its actors (all, or a page at a time) and
the namespaces on the server, read from STREAM.INFO and the stream list.

A page of actors reads one window of the server's sorted subject listing (see
``listing``), positioned by ``at`` (the rank of the previous page's last id) and
checked against ``after``; the window is kept, so the pages that follow cost one
small STREAM.INFO (is the listing unchanged?) and a slice. New actors are added to
it from the events stored since (a bounded read); actors aged out make it read
again.
"""

from __future__ import annotations

import asyncio
import bisect
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from ... import names
from ...errors import EventStoreError, StoreUnavailableError
from ...nats import api
from ...nats import headers as hdr
from ...nats.streams import list_event_streams, stream_info_raw
from ..base import ActorPage, NamespaceInfo, Runtime, StoreConfig, actor_order, check_page
from .common import Part
from .listing import Tokens, Window, keep_window, kept_window, start_in
from .retry import TRANSIENT

__all__ = ["Inspector", "list_namespaces"]

#: Messages (and bytes of them) a kept window reads to learn the actors created since it
#: was read; beyond that, the window is read again instead.
_CATCH_UP_MESSAGES = 1000
_CATCH_UP_BYTES = 4 * 1024 * 1024


async def list_namespaces(runtime: Runtime, config: StoreConfig) -> list[str]:
    """The namespaces that have an events stream on the server."""
    try:
        nc = await asyncio.wait_for(runtime.connection(), config.timeout)
        streams = await list_event_streams(nc, config.subject_prefix, config.timeout)
    except TRANSIENT as exc:
        # The same typed error every other store call gives when NATS is away.
        raise StoreUnavailableError(
            f"NATS did not answer within {config.timeout}s (listing namespaces): {exc!r}"
        ) from None
    return sorted({namespace for _, namespace, _ in streams})


def _stream_info_doc(raw: bytes) -> dict[str, Any]:
    try:
        return api.parse_reply(raw)
    except api.JetStreamRefused as exc:
        raise EventStoreError(f"stream info failed: {exc.description}") from None


def _state(doc: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = doc.get("state") or {}
    return state


def _key_of(state: dict[str, Any]) -> tuple[int, int]:
    """A listing's (number of subjects, first sequence): see ``Window.key``."""
    return int(state.get("num_subjects", 0)), int(state.get("first_seq", 0))


class Inspector(Part):
    """Reads what a namespace holds: its figures and its actors."""

    # --- STREAM.INFO ----------------------------------------------------------
    async def stream_info_raw(self, request: dict[str, Any], deadline: float) -> bytes:
        """The undecoded STREAM.INFO reply (retried until the deadline)."""
        stream = self.place.stream

        async def once(nc: Any, wait: float) -> bytes:
            return await stream_info_raw(nc, stream, wait, request)

        try:
            return await self.retry.retrying(deadline, "stream info", once)
        except nats.errors.NoRespondersError:
            raise StoreUnavailableError("JetStream did not answer the stream info") from None

    async def info(self) -> NamespaceInfo | None:
        """Figures of the namespace's stream, read live from the server."""
        deadline = self.retry.deadline()
        if not await self.provisioner.stream_exists(deadline):
            return None
        try:
            doc = api.parse_reply(await self.stream_info_raw({}, deadline))
        except api.JetStreamRefused:
            return None
        state = _state(doc)
        return NamespaceInfo(
            name=self.place.namespace,
            stream=self.place.stream,
            events=int(state.get("messages", 0)),
            actors=int(state.get("num_subjects", 0)),
            bytes=int(state.get("bytes", 0)),
            first_sequence=int(state.get("first_seq", 0)),
            last_sequence=int(state.get("last_seq", 0)),
            replicas=int((doc.get("config") or {}).get("num_replicas", 1)),
        )

    # --- actors ---------------------------------------------------------------
    async def actor_ids(self) -> list[str]:
        """Every actor with events, from the stream's per-subject counts (paged by the server)."""
        deadline = self.retry.deadline()
        if not await self.provisioner.stream_exists(deadline):
            return []
        prefix = self.place.subject_prefix + "."
        tokens: list[str] = []
        while True:
            request = {"subjects_filter": self.place.all_subjects, "offset": len(tokens)}
            doc = _stream_info_doc(await self.stream_info_raw(request, deadline))
            page = list((_state(doc).get("subjects") or {}).keys())
            tokens += [subject[len(prefix) :] for subject in page]
            total = int(doc.get("total") or 0)
            if not page or len(tokens) >= total:
                break
        return sorted(names.actor_id_from_token(token) for token in tokens)

    async def actor_page(self, after: str | None, limit: int, at: int) -> ActorPage:
        """Up to ``limit`` actor ids after ``after``, in subject-token order."""
        check_page(limit, 1)
        deadline = self.retry.deadline()
        if not await self.provisioner.stream_exists(deadline):
            return ActorPage([], None)
        after_token = None if after is None else actor_order(after)
        slot = (id(self.retry.runtime), self.place.stream)
        window = kept_window(slot)
        start = None
        if window is not None:
            window = await self._refresh(window, deadline)
        if window is not None:
            start = start_in(window, after_token, limit)
        if window is None or start is None:
            window, start = await self._locate(after_token, limit, max(0, at), deadline)
        keep_window(slot, window)
        page = window.tokens[start : start + limit]
        last_rank = window.offset + start + len(page) - 1
        more = last_rank + 1 < window.total
        return ActorPage(
            [names.actor_id_from_token(token) for token in page], last_rank if more else None
        )

    async def _locate(
        self, after_token: str | None, limit: int, at: int, deadline: float
    ) -> tuple[Window, int]:
        """Read the window that holds the page after ``after_token``, starting at rank
        ``at`` and moving only when the listing changed since ``at`` was given."""
        offset = at if after_token is not None else 0
        back = limit
        while True:
            window = await self._read_window(offset, deadline)
            start = start_in(window, after_token, limit)
            if start is not None:
                return window, start
            if window.offset > 0 and (
                not window.tokens or (after_token is not None and window.tokens[0] > after_token)
            ):
                # Actors before the cursor are gone (aged out): its rank moved back.
                offset, back = max(0, offset - back), back * 4
            else:
                # The page runs past this reply (the server caps one): read on from the
                # cursor, which is in this window.
                assert after_token is not None
                offset = window.offset + max(0, bisect.bisect_right(window.tokens, after_token) - 1)
                if offset == window.offset:
                    return window, bisect.bisect_right(window.tokens, after_token)

    async def _refresh(self, window: Window, deadline: float) -> Window | None:
        """``window`` brought up to date, or None when it must be read again.

        Actors only come (their first event is appended) or go (history aged out from
        the front, which moves the first sequence). When only new ones came, their
        first events lie after the window's last sequence: reading those (up to
        _CATCH_UP_MESSAGES) finds them, and they are put in their places.
        """
        state = _state(_stream_info_doc(await self.stream_info_raw({}, deadline)))
        subjects, first_seq = _key_of(state)
        last_seq = int(state.get("last_seq", 0))
        if (subjects, first_seq) == window.key:
            return window
        new = subjects - window.key[0]
        whole = window.offset == 0 and len(window.tokens) >= window.total
        # Only a window of the whole listing can tell a new actor from an old one
        # outside it; only a listing that lost none (same first sequence) can be patched.
        if first_seq != window.key[1] or new < 0 or not whole:
            return None
        prefix = self.place.subject_prefix + "."
        received: list[Msg] = []
        try:
            await self.reader.get_chunk(
                self.place.all_subjects,
                window.last_seq + 1,
                deadline,
                received,
                _CATCH_UP_MESSAGES,
                max_bytes=_CATCH_UP_BYTES,
            )
        except TRANSIENT:
            return None
        tokens, found = list(window.tokens), 0
        for msg in received:
            subject = (msg.headers or {}).get(hdr.SUBJECT, "")
            token = subject[len(prefix) :]
            place = bisect.bisect_left(tokens, token)
            if not subject.startswith(prefix) or tokens[place : place + 1] == [token]:
                continue  # an actor already listed
            tokens.insert(place, token)
            found += 1
            if found == new:
                # Every new actor is found; no other can hide further on.
                return Window((subjects, first_seq), 0, tokens, len(tokens), last_seq)
        return None

    async def _read_window(self, offset: int, deadline: float) -> Window:
        prefix = self.place.subject_prefix + "."
        request = {"subjects_filter": self.place.all_subjects, "offset": offset}
        raw = await self.stream_info_raw(request, deadline)
        # The subjects map is most of the reply (about 2.6 MB at 100,000 actors): the
        # rest is decoded as JSON, the map's keys only as far as pages read them.
        start = raw.find(b'"subjects":{')
        if start < 0:
            doc, tokens = _stream_info_doc(raw), Tokens(b"", 0, 0, prefix)
        else:
            start += len(b'"subjects":')
            # Keys are subjects and values counts: no brace inside the map.
            end = raw.index(b"}", start) + 1
            doc = _stream_info_doc(raw[:start] + b"{}" + raw[end:])
            tokens = Tokens(raw, start, end, prefix)
        total = int(doc.get("total") or 0) or len(tokens)
        state = _state(doc)
        return Window(_key_of(state), offset, tokens, total, int(state.get("last_seq", 0)))
