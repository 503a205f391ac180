"""Live subscriptions over WebSockets (Channels): the protocol of docs/websocket.md.

Client frames: ``{"action": "subscribe", "id", "namespace", "event_types"?,
"actor_pattern"?, "from"?}`` and ``{"action": "unsubscribe", "id"}``. Server frames:
``{"type": "subscribed", "id"}``, ``{"type": "unsubscribed", "id"}``,
``{"type": "event", "id", "namespace", "sequence", "event"}`` and
``{"type": "error", "id"?, "code", "detail"}``.

Each subscription is a bus subscription read by one task that sends its events in
stream order; catching up from a sequence and then following live is one ordered
consumer, so there is no gap and no repeat at the switch. Subscriptions from "new"
share the bus's live feed of their pattern, so an event reaches the process once
however many sockets follow it. A client that stops reading is disconnected with
its last delivered sequences instead of slowing anyone else down.

Grants, the user's account and the session are checked again every
``WS_ACCESS_CHECK_INTERVAL`` seconds: a subscription that relied on a revoked grant
ends with an ``access_revoked`` error frame, and the socket of a user who logged out
or was deactivated is closed with 4401.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import threading
import time
from importlib import import_module
from types import SimpleNamespace
from typing import Any

from .extras import missing_extra

try:
    from channels.db import database_sync_to_async
    from channels.generic.websocket import AsyncWebsocketConsumer
except ModuleNotFoundError as exc:  # installed by the [ws] extra
    raise missing_extra(__name__, "Channels", "ws") from exc

from . import tracing
from .access import NamespaceAccess
from .api.serializers import event_body
from .bus import Delivery, Subscription, SubscriptionOverflowError, get_event_bus
from .conf import aether_settings
from .errors import AetherError, InvalidNameError
from .patterns import SubscriptionFilter, is_exact, validate_pattern

logger = logging.getLogger(__name__)

__all__ = ["EventsConsumer"]

#: The open sockets of each user in this process (user pk -> consumers): the per-user
#: limits count them. Consumers of one process may run on several loops and threads.
_SOCKETS: dict[Any, set[EventsConsumer]] = {}
_SOCKETS_LOCK = threading.Lock()


class EventsConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """``ws/aether/``: subscribe to saved events of the namespaces the user may read."""

    #: Largest frame accepted from a client, in bytes; larger ones close the socket.
    max_frame_bytes = 64 * 1024
    #: Subscriptions one socket may hold.
    max_subscriptions = 100
    #: Frames a client may send per second (averaged over a burst of as many).
    max_frames_per_second = 50
    #: Deliveries buffered per catching-up subscription; when full, its consumer waits.
    buffer_size = 1000
    #: Deliveries buffered per live ("new") subscription before the client counts as
    #: too slow: room for large atomic batches, which arrive at once.
    live_buffer_size = 10_000
    #: Seconds one send may take before the client counts as not reading.
    send_timeout = 5.0
    #: Set once the socket is being closed (or was refused): nothing more is read or sent.
    closing = False

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not getattr(user, "is_authenticated", False):
            await self.close(code=4401)
            return
        self.subscriptions: dict[str, tuple[Subscription, asyncio.Task[None]]] = {}
        self.user_key = user.pk
        with _SOCKETS_LOCK:
            sockets = _SOCKETS.setdefault(self.user_key, set())
            too_many = len(sockets) >= int(aether_settings.WS_MAX_SOCKETS_PER_USER)
            if not too_many:
                sockets.add(self)
        if too_many:
            # Accepted first, so the client sees the error frame and the close code
            # (a socket closed before it is accepted is only a refused handshake).
            self.closing = True
            await self.accept()
            await self.send(
                text_data=json.dumps(
                    {
                        "type": "error",
                        "code": "too_many_sockets",
                        "detail": "this user has too many sockets open; close one first",
                    }
                )
            )
            await self.close(code=4429, reason="too many sockets")
            return
        try:
            self.access: NamespaceAccess = await database_sync_to_async(NamespaceAccess)(user)
            self.session_key: str | None = await database_sync_to_async(_session_key)(
                self.scope, user
            )
        except BaseException:
            self._forget_socket()  # never accepted: its place is free again
            raise
        # Per subscription: what its user may read of its pattern when it was made
        # (None: all of it), compared with the grants at each access check.
        self.scopes: dict[str, frozenset[str] | None] = {}
        # Per subscription: namespace -> last stream sequence handed to the server.
        self.delivered: dict[str, dict[str, int]] = {}
        self.closing = False
        self._allowance = float(self.max_frames_per_second)
        self._last_frame = time.monotonic()
        self._send_lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._sending: asyncio.Task[Any] | None = None
        self._send_started: float | None = None
        self._send_expired = False
        self._watch = self._loop.call_later(1.0, self._watch_sends)
        self._access_check = self._loop.create_task(self._check_access())
        await self.accept()

    def _forget_socket(self) -> None:
        """Take this socket out of its user's count."""
        user_key = getattr(self, "user_key", None)
        with _SOCKETS_LOCK:
            sockets = _SOCKETS.get(user_key)
            if sockets is not None:
                sockets.discard(self)
                if not sockets:
                    del _SOCKETS[user_key]

    async def disconnect(self, code: int) -> None:
        self.closing = True
        self._forget_socket()
        if hasattr(self, "_watch"):
            self._watch.cancel()
        check = getattr(self, "_access_check", None)
        if check is not None and check is not asyncio.current_task():
            check.cancel()
        for subscription, task in list(getattr(self, "subscriptions", {}).values()):
            task.cancel()
            with contextlib.suppress(Exception):
                await subscription.aclose()
        if hasattr(self, "subscriptions"):
            self.subscriptions.clear()

    # --- receiving --------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return  # refused at connect, or being closed: nothing more is read
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > self.max_frame_bytes:
            await self._close("frame too large", 1009)
            return
        if not self._within_rate():
            await self._close("too many frames", 1008)
            return
        if text_data is None:
            await self._error("bad_frame", "frames must be JSON text")
            return
        try:
            frame = json.loads(text_data)
        except ValueError:
            await self._error("bad_json", "the frame is not JSON")
            return
        if not isinstance(frame, dict):
            await self._error("bad_frame", "a frame is a JSON object")
            return
        action = frame.get("action")
        if action == "subscribe":
            await self._subscribe(frame)
        elif action == "unsubscribe":
            await self._unsubscribe(frame)
        else:
            await self._error("unknown_action", f"unknown action {action!r}", frame.get("id"))

    def _user_subscriptions(self) -> int:
        """Subscriptions held by all sockets of this socket's user in this process."""
        with _SOCKETS_LOCK:
            sockets = list(_SOCKETS.get(self.user_key, ()))
        return sum(len(getattr(socket, "subscriptions", ())) for socket in sockets)

    def _within_rate(self) -> bool:
        # Token bucket: a burst of max_frames_per_second, refilled at that rate.
        now = time.monotonic()
        rate = float(self.max_frames_per_second)
        self._allowance = min(rate, self._allowance + (now - self._last_frame) * rate)
        self._last_frame = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True

    async def _subscribe(self, frame: dict[str, Any]) -> None:
        sub_id = frame.get("id")
        if not isinstance(sub_id, str) or not 0 < len(sub_id) <= 100:
            await self._error("bad_id", "id must be a string of 1 to 100 characters")
            return
        if sub_id in self.subscriptions:
            await self._error("duplicate_id", "a subscription with this id exists", sub_id)
            return
        if len(self.subscriptions) >= self.max_subscriptions:
            await self._error("too_many_subscriptions", "unsubscribe from something first", sub_id)
            return
        if self._user_subscriptions() >= int(aether_settings.WS_MAX_SUBSCRIPTIONS_PER_USER):
            await self._error(
                "too_many_subscriptions",
                "this user's sockets hold too many subscriptions; unsubscribe from something first",
                sub_id,
            )
            return
        try:
            pattern = validate_pattern(frame.get("namespace"))
            event_types = frame.get("event_types")
            if event_types is not None and (
                not isinstance(event_types, list) or len(event_types) > 100
            ):
                raise InvalidNameError("event_types must be a list of at most 100 event types")
            flt = SubscriptionFilter(
                event_types=event_types, actor_pattern=frame.get("actor_pattern")
            )
            start = _start(frame.get("from", "new"), pattern)
        except (InvalidNameError, ValueError) as exc:
            await self._error("invalid_subscription", str(exc), sub_id)
            return
        if is_exact(pattern) and not self.access.can_read(pattern):
            # The same answer as for a namespace that does not exist: nothing leaks.
            await self._error("not_found", "no such namespace", sub_id)
            return
        # A pattern is narrowed to the user's read grants that can match with it: the
        # bus makes consumers only on those namespaces' streams, never on the others.
        readable = None if is_exact(pattern) else self.access.read_patterns(pattern)
        if readable is not None and not readable:
            await self._error(
                "not_found", "no namespace this user may read matches the pattern", sub_id
            )
            return
        # Catching up ("all" or a sequence): overflow="wait", so a full buffer holds
        # this subscription's own JetStream consumer back and a client that stops
        # reading is caught by the send timeout. Following from "new": overflow="end",
        # which lets every socket of the process that follows the same pattern share
        # one consumer (the event is received and decoded once); a client whose
        # buffer fills is then too slow, like one whose send times out.
        live = start == "new"
        try:
            subscription = await get_event_bus().asubscribe(
                pattern,
                flt,
                start=start,
                buffer_size=self.live_buffer_size if live else self.buffer_size,
                buffer_bytes=int(aether_settings.WS_BUFFER_BYTES),
                overflow="end" if live else "wait",
                readable=readable,
            )
        except AetherError as exc:
            await self._error("unavailable", str(exc), sub_id)
            return
        task = asyncio.get_running_loop().create_task(self._pump(sub_id, subscription))
        self.subscriptions[sub_id] = (subscription, task)
        self.scopes[sub_id] = readable
        await self._send({"type": "subscribed", "id": sub_id})

    async def _unsubscribe(self, frame: dict[str, Any]) -> None:
        sub_id = frame.get("id")
        entry = self.subscriptions.pop(sub_id, None) if isinstance(sub_id, str) else None
        if entry is None:
            await self._error("unknown_id", "no subscription with this id", sub_id)
            return
        assert isinstance(sub_id, str)  # it had an entry
        self.scopes.pop(sub_id, None)
        subscription, task = entry
        task.cancel()
        await subscription.aclose()
        await self._send({"type": "unsubscribed", "id": sub_id})

    # --- checking access again -----------------------------------------------------------
    async def _check_access(self) -> None:
        """Every ``WS_ACCESS_CHECK_INTERVAL`` seconds: end what the user may no longer read.

        The first check comes after a random part of the interval, so that sockets
        opened together do not all query the database at the same moment.
        """
        interval = float(aether_settings.WS_ACCESS_CHECK_INTERVAL)
        delay = interval * random.uniform(0.5, 1.0)
        while not self.closing:
            await asyncio.sleep(delay)
            delay = interval
            try:
                access = await database_sync_to_async(_current_access)(
                    self.access.user, self.session_key
                )
            except Exception:
                # A database hiccup is not a revocation; the next check tries again.
                logger.warning("could not check a websocket's grants", exc_info=True)
                continue
            if self.closing:
                return
            if access is None:
                for _, task in self.subscriptions.values():
                    task.cancel()  # not one more event frame
                # Timed like _too_slow's frame: a client that does not read is closed anyway.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self._error("access_revoked", "the user logged out or cannot log in now"),
                        1.0,
                    )
                await self._close("logged out", 4401)
                return
            self.access = access
            for sub_id in list(self.subscriptions):
                if not self._still_readable(sub_id):
                    await self._revoke(sub_id)

    def _still_readable(self, sub_id: str) -> bool:
        """Whether the current grants cover everything subscription ``sub_id`` reads."""
        subscription, _ = self.subscriptions[sub_id]
        if is_exact(subscription.pattern):
            return self.access.can_read(subscription.pattern)
        now = self.access.read_patterns(subscription.pattern)
        then = self.scopes.get(sub_id)
        return now is None or (then is not None and then <= now)

    async def _revoke(self, sub_id: str) -> None:
        """End a subscription that relied on a revoked grant; its error is its last frame."""
        entry = self.subscriptions.pop(sub_id, None)
        self.scopes.pop(sub_id, None)
        if entry is None:
            return
        subscription, task = entry
        task.cancel()
        with contextlib.suppress(Exception):
            await subscription.aclose()
        # The subscription has ended before this frame.
        await self._send_ending(
            sub_id, "access_revoked", "the user may no longer read what this subscription reads"
        )

    async def _send_ending(self, sub_id: str, code: str, detail: str) -> None:
        """The error frame that ends subscription ``sub_id``, with where to resume.

        Waited for at most a second: a client that does not read it must not hold up
        the other subscriptions' checks or the close that follows.
        """
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._send(
                    {
                        "type": "error",
                        "id": sub_id,
                        "code": code,
                        "detail": detail,
                        "last_sequences": dict(self.delivered.get(sub_id, {})),
                    }
                ),
                1.0,
            )

    # --- sending ------------------------------------------------------------------------
    async def _pump(self, sub_id: str, subscription: Subscription) -> None:
        """Send one subscription's events, in order; end the socket if the client lags."""
        try:
            readable: dict[str, bool] = {}
            # '{"type":"event","id":"<id>",' — the rest of the frame is the same for
            # every socket and is encoded once per event (_event_tail).
            head = '{"type":"event","id":' + json.dumps(sub_id) + ","
            access = self.access
            async for delivery in subscription:
                if access is not self.access:
                    # The grants were loaded again: what was readable may not be now.
                    access = self.access
                    readable.clear()
                # Wildcards are narrowed to what the user may read.
                can_read = readable.get(delivery.namespace)
                if can_read is None:
                    can_read = readable[delivery.namespace] = access.can_read(delivery.namespace)
                if not can_read:
                    continue
                try:
                    # A span per event frame, in the trace of the save that wrote it.
                    with (
                        self._frame_span(delivery)
                        if tracing.enabled and tracing.recording()
                        else tracing.NOOP
                    ):
                        await self._send_text(
                            head + _event_tail(delivery),
                            timeout=self.send_timeout,
                            sub_id=sub_id,
                            delivery=delivery,
                        )
                except TimeoutError:
                    await self._too_slow(sub_id)
                    return
                except (OSError, RuntimeError):
                    # The client closed the socket while this frame was on its way:
                    # uvicorn raises ClientDisconnected (an OSError, as the ASGI spec
                    # asks) while the close is in flight, and RuntimeError once it has
                    # seen it. Not a failure; the disconnect handler ends the subscription.
                    self.closing = True
                    return
        except SubscriptionOverflowError:
            await self._too_slow(sub_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("websocket subscription %s failed", sub_id)
            await self._error("internal", "the subscription failed", sub_id)

    def _frame_span(self, delivery: Delivery) -> Any:
        """The ``aether ws send`` span of one event frame (parent: the event's context)."""
        event = delivery.event
        return tracing.span(
            "aether ws send",
            kind=tracing.PRODUCER,
            parent=event.trace_context or {},
            attributes={
                "aether.namespace": delivery.namespace,
                "aether.actor_id": event.actor_id,
                "aether.event_id": event.id,
                "aether.sequence": delivery.sequence or 0,
                "aether.event_type": event.event_type,
            },
        )

    async def _too_slow(self, sub_id: str) -> None:
        await self._send_ending(
            sub_id,
            "slow_consumer",
            "the client did not keep up; resume with from = last sequence + 1",
        )
        delivered = self.delivered.get(sub_id, {})
        last = ",".join(f"{ns}:{seq}" for ns, seq in sorted(delivered.items()))
        await self._close(f"slow consumer; last delivered {last}"[:120], 4008)

    async def _send(
        self,
        frame: dict[str, Any],
        *,
        timeout: float | None = None,
        sub_id: str | None = None,
        delivery: Delivery | None = None,
    ) -> None:
        """Send one frame (one at a time from several pumps).

        For an event frame, the sequence counts as delivered once the frame is handed
        to the server: a client that reads its backlog gets it before the close frame,
        even when the send then times out. Waiting for the lock is not timed, so a
        frame is never counted without having been handed over.
        """
        await self._send_text(
            json.dumps(frame, separators=(",", ":")),
            timeout=timeout,
            sub_id=sub_id,
            delivery=delivery,
        )

    async def _send_text(
        self,
        text: str,
        *,
        timeout: float | None = None,
        sub_id: str | None = None,
        delivery: Delivery | None = None,
    ) -> None:
        if self.closing:
            return
        async with self._send_lock:
            if self.closing:
                return
            if sub_id is not None and delivery is not None and delivery.sequence is not None:
                self.delivered.setdefault(sub_id, {})[delivery.namespace] = delivery.sequence
            if timeout is None:
                await self.send(text_data=text)
                return
            # Timed by _watch_sends rather than asyncio.wait_for or asyncio.timeout,
            # which would make a task or a timer for every frame of every socket.
            task = asyncio.current_task()
            self._sending, self._send_started = task, self._loop.time()
            try:
                await self.send(text_data=text)
            except asyncio.CancelledError:
                if not self._send_expired or task is None:
                    raise
                task.uncancel()
                raise TimeoutError("the client stopped reading") from None
            finally:
                self._sending = self._send_started = None

    def _watch_sends(self) -> None:
        """Once a second: a send that has taken longer than ``send_timeout`` means the
        client stopped reading; cancel it, and its pump closes the socket as too slow."""
        if self.closing:
            return
        started, sending = self._send_started, self._sending
        if (
            started is not None
            and sending is not None
            and self._loop.time() - started > self.send_timeout
        ):
            self._send_expired = True
            sending.cancel()
        self._watch = self._loop.call_later(1.0, self._watch_sends)

    async def _error(self, code: str, detail: str, sub_id: Any = None) -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
        if isinstance(sub_id, str):
            frame["id"] = sub_id
        await self._send(frame)

    async def _close(self, reason: str, code: int) -> None:
        if self.closing:
            return
        self.closing = True
        await self.close(code=code, reason=reason)
        await self.disconnect(code)


#: Encoded frame tails of recent events, keyed by (namespace, stream sequence): an event
#: that reaches many sockets is encoded once. A stored event never changes, so the key
#: is enough; transient events (no sequence) are encoded each time. At most _TAILS_SIZE
#: of them and WS_FRAME_CACHE_BYTES in all (_tails_bytes; the JSON is ASCII, so its
#: length is its size in bytes), the oldest dropped first.
_TAILS: collections.OrderedDict[tuple[str, int], str] = collections.OrderedDict()
_TAILS_SIZE = 1024
_tails_bytes = 0


def _event_tail(delivery: Delivery) -> str:
    """``"namespace":…,"sequence":…,"event":{…}}`` of an event frame."""
    sequence = delivery.sequence
    key = (delivery.namespace, sequence) if sequence is not None else None
    if key is not None:
        tail = _TAILS.get(key)
        if tail is not None:
            return tail
    tail = json.dumps(
        {
            "namespace": delivery.namespace,
            "sequence": sequence,
            "event": event_body(delivery.event),
        },
        separators=(",", ":"),
    )[1:]
    if key is not None:
        _remember(key, tail)
    return tail


def _remember(key: tuple[str, int], tail: str) -> None:
    global _tails_bytes
    budget = int(aether_settings.WS_FRAME_CACHE_BYTES)
    if key in _TAILS or len(tail) > budget:
        return  # larger than the whole cache: encoded again for each socket instead
    _TAILS[key] = tail
    _tails_bytes += len(tail)
    while len(_TAILS) > _TAILS_SIZE or _tails_bytes > budget:
        _, dropped = _TAILS.popitem(last=False)
        _tails_bytes -= len(dropped)


def _session_key(scope: dict[str, Any], user: Any) -> str | None:
    """The key of the session that logged ``user`` in to this socket, if one did.

    Only such a socket is checked against its session later (a logout ends it); a user
    put in the scope some other way is checked against their account alone.
    """
    from django.contrib.auth import SESSION_KEY

    session = scope.get("session")
    if session is None:
        return None
    try:
        if str(session.get(SESSION_KEY)) != str(user.pk):
            return None
        key = session.session_key
    except Exception:
        return None
    return str(key) if key else None


def _current_access(user: Any, session_key: str | None) -> NamespaceAccess | None:
    """The grants of ``user`` now; None when they logged out or may not log in now.

    With a session: Django's own check of it (the session still exists and names the
    user, the password did not change since, the user is still active). Without one:
    the account still exists and is active.
    """
    from django.conf import settings
    from django.contrib.auth import get_user, get_user_model

    current: Any
    if session_key is not None:
        engine = import_module(settings.SESSION_ENGINE)
        current = get_user(SimpleNamespace(session=engine.SessionStore(session_key)))  # type: ignore[arg-type]
    else:
        current = get_user_model()._default_manager.filter(pk=user.pk).first()
        if current is not None and not current.is_active:
            current = None
    if current is None or not current.is_authenticated or current.pk != user.pk:
        return None
    return NamespaceAccess(current)


#: Largest stream sequence JetStream can hold (a uint64); larger ones are refused here
#: rather than by the server, so a client gets the same error frame as for any bad ``from``.
_MAX_SEQUENCE = 2**64 - 1


def _start(value: Any, pattern: str) -> Any:
    if value in ("new", "all") and isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_SEQUENCE:
        if not is_exact(pattern):
            # A sequence numbers one namespace's stream; a pattern can match several.
            raise ValueError(
                "from may be a stream sequence only with an exact namespace; with a "
                'pattern use "new" or "all", or one subscription per namespace'
            )
        return value
    raise ValueError('from must be "new", "all" or a stream sequence >= 1')
