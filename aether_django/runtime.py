"""The process runtime: this process's NATS connections and the bridge for sync callers.

nats-py is asyncio-only and a connection belongs to the event loop that made it,
while most Django code is sync. The runtime therefore keeps

* for async callers, one connection per event loop that asks (normally exactly
  one: the ASGI server's), so an async save never hops threads;
* for sync callers (views, Celery tasks, the shell), a small pool of "portals":
  private event loops, each with its own connection, that the calling thread
  runs itself for the duration of one call. Handing each call to a loop on
  another thread cost about a third of a save's throughput (two thread wake-ups
  per call, measured in bench/store.py); running the loop in the caller's thread
  costs nothing of the kind. A portal's loop does not run while the portal is
  idle, so a keeper thread runs each idle portal for a moment every second to
  answer server pings and notice reconnects, and closes portals idle for long;
* one background thread with its own loop and connection, for work that must
  run all the time (subscriptions), for sync calls made while MAX_BUSY_PORTALS
  portals are busy (many threads at once share one loop better than they run
  a loop each), and for sync calls made from a thread that already runs an
  event loop (only allowed with DJANGO_ALLOW_ASYNC_UNSAFE).

The runtime also names the process: ``node_id()`` is the id under which this
process subscribes, hosts shards and takes leases, for the bus and the cluster alike.

Everything is created on first use, created again in a child after ``fork()``
(Celery prefork, gunicorn), and closed at interpreter exit. Connections reconnect
by themselves after a server restart; writes are never queued while disconnected,
so a save the store gave up on cannot land later.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from .aio import running_loop
from .errors import SyncCallInAsyncContextError
from .names import default_node_id
from .nats.client import Client, dropped_messages_handler

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["Runtime", "default_node_id", "get_runtime", "node_id", "reset_runtime"]

_RUNTIMES: weakref.WeakSet[Runtime] = weakref.WeakSet()

#: Seconds between the keeper's visits to idle portals.
KEEPER_INTERVAL = 1.0
#: Seconds after which an unused portal (beyond the first) is closed.
PORTAL_IDLE_CLOSE = 60.0
#: Sync calls running at once on portals before further ones go to the loop thread.
#: A portal is the fastest way for a few threads (no thread hand-off), but each is a
#: loop and a connection of its own: with many threads at once, one shared loop
#: multiplexing every call over one connection does the same work with far less
#: switching between threads (bench/aggregates.py figure 3e: measured there).
MAX_BUSY_PORTALS = 4
# Objects inherited from the parent across fork(): kept referenced so that the
# garbage collector never closes, in the child, sockets the parent still uses.
_INHERITED: list[Any] = []


class Runtime:
    """Owns NATS connections for one process and runs coroutines for sync callers.

    ``url`` is a server URL (or comma-separated list), or a callable returning one,
    read each time a connection is made.
    """

    def __init__(
        self,
        url: str | Callable[[], str],
        *,
        options: dict[str, Any] | None = None,
        connect_timeout: float = 2.0,
        name: str = "aether_django",
    ) -> None:
        self._url = url
        self._options = dict(options or {})
        self._connect_timeout = connect_timeout
        self._name = name
        self._lock = threading.Lock()
        self._init_state()
        _RUNTIMES.add(self)

    def _init_state(self) -> None:
        self.pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conns: dict[asyncio.AbstractEventLoop, NATS] = {}
        self._connecting: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._closing = False
        # Idle portals, most recently used last.
        self._portals: list[_Portal] = []
        self._busy_portals = 0
        self._portal_lock = threading.Lock()
        self._keeper: threading.Thread | None = None
        self._keeper_stop = threading.Event()

    def _after_fork(self) -> None:
        # The parent's loop thread does not exist here and its sockets are the
        # parent's: forget them (without closing) and start afresh on first use.
        _INHERITED.append((self._loop, self._conns, self._portals))
        self._lock = threading.Lock()
        self._init_state()

    @property
    def url(self) -> str:
        return self._url() if callable(self._url) else self._url

    # --- the loop thread ----------------------------------------------------
    def _loop_thread(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=serve, name=f"{self._name}-loop", daemon=True)
                thread.start()
                ready.wait()
                self._thread = thread
                self._loop = loop
            return self._loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The runtime's own event loop (started on first use)."""
        return self._loop_thread()

    def run(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` to completion for a sync caller and return its result.

        Refuses to run inside a running event loop (it would block that loop),
        unless DJANGO_ALLOW_ASYNC_UNSAFE is set, as Django does for the ORM.
        """
        running = running_loop()
        if running is not None and (
            running is self._loop or not os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
        ):
            if isinstance(coro, Coroutine):
                coro.close()
            raise SyncCallInAsyncContextError(
                "a blocking aether_django call was made from async code; "
                "use the a-prefixed twin (for example asave_event) instead"
            )
        if not isinstance(coro, Coroutine):
            raise TypeError("Runtime.run() takes a coroutine")
        portal = None if running is not None else self._take_portal()
        if portal is None:
            # This thread's loop is busy, or many sync calls are running at once:
            # hand the call to the loop thread.
            future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
                coro, self._loop_thread()
            )
            return future.result()
        try:
            result: T = portal.loop.run_until_complete(coro)
        except BaseException:
            # A KeyboardInterrupt may leave the loop half-way: never reuse it then.
            if portal.loop.is_running() or portal.loop.is_closed():
                with self._portal_lock:
                    self._busy_portals -= 1
                _INHERITED.append(portal)
                raise
            self._give_back(portal)
            raise
        self._give_back(portal)
        return result

    # --- portals --------------------------------------------------------------
    def _take_portal(self) -> _Portal | None:
        """An idle portal, a new one, or None when MAX_BUSY_PORTALS are in use."""
        with self._portal_lock:
            if self._busy_portals >= MAX_BUSY_PORTALS:
                return None
            self._busy_portals += 1
            if self._portals:
                return self._portals.pop()
        if self._keeper is None:
            self._start_keeper()
        return _Portal()

    def _give_back(self, portal: _Portal) -> None:
        portal.last_used = time.monotonic()
        with self._portal_lock:
            self._busy_portals -= 1
            self._portals.append(portal)

    def _start_keeper(self) -> None:
        with self._lock:
            if self._keeper is not None:
                return
            self._keeper_stop = threading.Event()
            keeper = threading.Thread(
                target=self._keep,
                args=(self._keeper_stop,),
                name=f"{self._name}-keeper",
                daemon=True,
            )
            self._keeper = keeper
            keeper.start()

    def _keep(self, stop: threading.Event) -> None:
        """Run idle portals now and then, and close those idle for long."""
        while not stop.wait(KEEPER_INTERVAL):
            now = time.monotonic()
            with self._portal_lock:
                # Oldest first; the most recently used portal stays in the pool.
                due = self._portals[:-1] if len(self._portals) > 1 else []
                stale = [p for p in due if now - p.last_used > PORTAL_IDLE_CLOSE]
                visit = [p for p in self._portals if p not in stale]
                for portal in stale:
                    self._portals.remove(portal)
            for portal in stale:
                self._close_portal(portal)
            for portal in visit:
                with self._portal_lock:
                    if portal not in self._portals:
                        continue  # a caller took it meanwhile
                    self._portals.remove(portal)
                try:
                    # Let the connection read pings and reconnect if it must.
                    portal.loop.run_until_complete(asyncio.sleep(0.002))
                finally:
                    with self._portal_lock:
                        self._portals.insert(0, portal)

    def _close_portal(self, portal: _Portal) -> None:
        nc = self._conns.pop(portal.loop, None)
        self._connecting.pop(portal.loop, None)
        loop = portal.loop
        if loop.is_closed() or loop.is_running():
            # Closed already, or in use by a thread right now: nothing to run here
            # (making the close coroutine anyway would only leave it un-awaited).
            return

        def finish() -> None:
            try:
                if nc is not None and not nc.is_closed:
                    loop.run_until_complete(asyncio.wait_for(nc.close(), 2.0))
            except Exception:
                logger.debug("error closing a portal's connection", exc_info=True)
            finally:
                loop.close()

        if running_loop() is None:
            finish()
        else:
            # This thread runs another loop (an async caller, or a library such as
            # Playwright's sync API), and one thread cannot run two: use another.
            closer = threading.Thread(target=finish, name="aether-portal-close", daemon=True)
            closer.start()
            closer.join(3.0)

    # --- connections ----------------------------------------------------------
    async def connection(self) -> NATS:
        """The connected NATS client for the running loop, made on first use."""
        loop = asyncio.get_running_loop()
        nc = self._conns.get(loop)
        if nc is not None and not nc.is_closed:
            return nc
        lock = self._connecting.setdefault(loop, asyncio.Lock())
        async with lock:
            nc = self._conns.get(loop)
            if nc is not None and not nc.is_closed:
                return nc
            self._forget_closed_loops()
            nc = await self._connect()
            self._conns[loop] = nc
            return nc

    def _forget_closed_loops(self) -> None:
        for loop in [loop for loop in self._conns if loop.is_closed()]:
            _INHERITED.append(self._conns.pop(loop))
            self._connecting.pop(loop, None)

    async def _connect(self) -> NATS:
        made: dict[str, NATS] = {}

        async def on_error(exc: Exception) -> None:
            nc = made.get("nc")
            server = getattr(nc, "connected_url", None) if nc is not None else None
            address = server.netloc if server else None
            where = f"NATS connection {self._name!r} ({address or 'no server'})"
            extra: dict[str, Any] = {"connection": self._name, "server": address}
            if isinstance(exc, _CONNECTION_ERRORS):
                # Each failed reconnect attempt lands here, up to ten a second while the
                # server is away; the disconnect and reconnect callbacks report the
                # outage once instead.
                logger.debug("%s: %r", where, exc)
                return
            if isinstance(exc, nats.errors.SlowConsumerError):
                handler = dropped_messages_handler(getattr(exc.sub, "_cb", None))
                if handler is not None:
                    logger.debug("%s: messages on %s dropped, as expected", where, exc.subject)
                    handler()
                    return
                logger.error(
                    "%s: messages on %s dropped, its subscriber does not keep up",
                    where,
                    exc.subject,
                    extra={**extra, "subject": exc.subject},
                )
                return
            # An exception from a subscription's callback (a shard host, a bus
            # listener, a watcher) or an error the server sent: nothing else reports it.
            description, subject = _describe_async_error(exc)
            logger.error(
                "%s: %s", where, description, exc_info=exc, extra={**extra, "subject": subject}
            )

        async def on_disconnect() -> None:
            nc = made.get("nc")
            if self._closing or (nc is not None and nc.is_closed):
                logger.debug("NATS connection closed")
            else:
                logger.warning("NATS disconnected; reconnecting")

        async def on_reconnect() -> None:
            logger.info("NATS reconnected")

        options: dict[str, Any] = {
            "name": self._name,
            "connect_timeout": self._connect_timeout,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.1,
            # Never buffer publishes while disconnected: a save that gave up must
            # not be delivered later by a reconnect.
            "pending_size": 0,
            "error_cb": on_error,
            "disconnected_cb": on_disconnect,
            "reconnected_cb": on_reconnect,
        }
        options.update(self._options)
        # The first connect tries each server once and fails fast, so callers see
        # StoreUnavailableError within their timeout; once connected, reconnect
        # attempts are unlimited (or as configured).
        reconnect_attempts = options.pop("max_reconnect_attempts")
        servers = [s.strip() for s in self.url.split(",") if s.strip()]
        nc: NATS = Client()
        await asyncio.wait_for(
            nc.connect(servers=servers, max_reconnect_attempts=1, **options),
            self._connect_timeout * max(len(servers), 1) + 1,
        )
        nc.options["max_reconnect_attempts"] = reconnect_attempts
        made["nc"] = nc
        return nc

    # --- closing --------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the running loop's connection (async callers)."""
        nc = self._conns.pop(asyncio.get_running_loop(), None)
        if nc is not None and not nc.is_closed:
            await nc.close()

    def close(self, timeout: float = 2.0) -> None:
        """Close every connection this runtime made and stop its loop thread."""
        if self.pid != os.getpid():
            return
        self._closing = True
        keeper, self._keeper = self._keeper, None
        self._keeper_stop.set()
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(timeout)
        with self._portal_lock:
            portals, self._portals = self._portals, []
        for portal in portals:
            self._close_portal(portal)
        conns, self._conns = self._conns, {}
        self._connecting = {}
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, nc in conns.items():
            if nc.is_closed or loop.is_closed():
                continue
            if loop is self._loop:
                continue  # closed below, on its own thread
            if loop is current:
                loop.create_task(nc.close())
            elif loop.is_running():
                # The coroutine is made on the loop, so a loop that stops first leaves
                # nothing un-awaited behind.
                loop.call_soon_threadsafe(_close_soon, loop, nc)
        own_loop, thread = self._loop, self._thread
        self._loop, self._thread = None, None
        if own_loop is not None and thread is not None and own_loop.is_running():
            own = conns.get(own_loop)

            async def shutdown() -> None:
                if own is not None and not own.is_closed:
                    try:
                        await asyncio.wait_for(own.close(), timeout)
                    except Exception:  # closing is best effort
                        logger.debug("error closing NATS connection", exc_info=True)
                # What else runs on this loop (a connection still being made, a
                # listener starting) ends here rather than being destroyed pending.
                others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in others:
                    task.cancel()
                if others:
                    await asyncio.wait(others, timeout=timeout)

            try:
                asyncio.run_coroutine_threadsafe(shutdown(), own_loop).result(timeout + 1)
            except Exception:
                logger.debug("error stopping the runtime loop", exc_info=True)
            own_loop.call_soon_threadsafe(own_loop.stop)
            if thread is not threading.current_thread():
                thread.join(timeout)
            if not own_loop.is_running():
                own_loop.close()
        self._closing = False


#: Errors nats-py reports while the connection is down or being re-established.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.errors.UnexpectedEOF,
    nats.errors.FlushTimeoutError,
)


def _describe_async_error(exc: BaseException) -> tuple[str, str | None]:
    """Say where an error handed to the error callback came from, as far as can be told,
    and the subject of the message being handled (None when unknown).

    nats-py passes only the exception; when a subscription's callback raised it, the
    first frame of its traceback is the subscription's delivery loop, whose locals
    name the subscription and the message.
    """
    tb = exc.__traceback__
    frame_locals = tb.tb_frame.f_locals if tb is not None else {}
    sub, msg = frame_locals.get("self"), frame_locals.get("msg")
    callback = getattr(sub, "_cb", None)
    if isinstance(sub, Subscription) and callback is not None:
        name = getattr(callback, "__qualname__", None) or repr(callback)
        subject = getattr(msg, "subject", None) or sub.subject
        return (
            f"the callback {name} of the subscription to {sub.subject!r} raised "
            f"{type(exc).__name__} on a message on {subject!r}",
            subject,
        )
    return f"error reported by the client or the server: {type(exc).__name__}: {exc}", None


def _close_soon(loop: asyncio.AbstractEventLoop, nc: NATS) -> None:
    if not nc.is_closed:
        loop.create_task(nc.close())


class _Portal:
    """A private event loop that sync callers run in their own thread, one call at a time."""

    __slots__ = ("last_used", "loop")

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.last_used = time.monotonic()


def _after_fork_in_child() -> None:
    for runtime in list(_RUNTIMES):
        runtime._after_fork()


def _close_all_at_exit() -> None:
    for runtime in list(_RUNTIMES):
        try:
            runtime.close()
        except Exception:
            logger.debug("error closing the runtime at exit", exc_info=True)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)


# --- the process's runtime, from settings -----------------------------------------
_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """The process's runtime, configured from ``settings.AETHER``."""
    global _runtime
    runtime = _runtime
    if runtime is None:
        from .conf import aether_settings

        with _runtime_lock:
            if _runtime is None:
                _runtime = Runtime(
                    lambda: str(aether_settings.NATS_URL),
                    options=dict(aether_settings.NATS_OPTIONS),
                    connect_timeout=min(float(aether_settings.TIMEOUT), 5.0),
                )
            runtime = _runtime
    return runtime


def reset_runtime() -> None:
    """Close the process's runtime; the next get_runtime() builds a new one."""
    global _runtime
    with _runtime_lock:
        runtime, _runtime = _runtime, None
    if runtime is not None:
        runtime.close()


# --- the process's node id ---------------------------------------------------------
_node_id: str | None = None
_node_id_lock = threading.Lock()


def node_id() -> str:
    """This process's node id: ``AETHER["NODE_ID"]`` (or AETHER_NODE_ID), else host name plus
    a random suffix chosen once per process."""
    global _node_id
    from .conf import aether_settings

    configured = aether_settings.NODE_ID
    if configured:
        return str(configured)
    with _node_id_lock:
        if _node_id is None:
            _node_id = default_node_id()
        return _node_id
