"""Child processes for tests, benchmarks and the demo: ports, start, readiness, stop.

One place for what every harness that runs servers needs: a free port, a child whose
output goes to a log file, waiting until it answers (an HTTP URL, a TCP port, or any
probe) while noticing that it died, and stopping it without leaving it behind
(a signal, then SIGKILL once a grace period has passed). Errors carry the tail of
the child's log, which is usually where the reason is.

The standard library only; importing it imports neither Django nor nats.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "ClosedOnExit",
    "ProcessError",
    "find_free_port",
    "follow_json_lines",
    "http_ok",
    "log_tail",
    "port_is_free",
    "served",
    "start_process",
    "stop_process",
    "uvicorn_command",
    "wait_for_http",
    "wait_until_ready",
]


class ProcessError(RuntimeError):
    """A child process exited early or did not become ready in time."""


#: Where picked ports come from when the kernel's ephemeral range is known: below it.
_LOWEST_PICKED_PORT = 10000
#: Ports this process has handed out, so that it does not hand one out twice.
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def _ephemeral_ports() -> range | None:
    """The range the kernel takes outgoing connections' local ports from (Linux only)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            low, high = (int(part) for part in ports.read().split())
    except (OSError, ValueError):
        return None
    return range(low, high + 1)


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and that this process
    has not handed out before.

    A port is picked some time before the server it is for binds it: a cluster's ports
    are all picked before its first server starts. Asking the kernel (``bind(0)``)
    returns a port of its ephemeral range, which in the meantime can become the local
    port of an outgoing connection (a route one server opens to another) or be handed out
    again by the next call: the server then exits with "address already in use". So the
    port is picked at random below that range, where the kernel puts no outgoing
    connection, and never twice by one process.
    """
    ephemeral = _ephemeral_ports()
    if ephemeral is None or ephemeral.start <= _LOWEST_PICKED_PORT:
        return _kernel_picked_port()
    candidates = range(_LOWEST_PICKED_PORT, ephemeral.start)
    with _handed_out_lock:
        for _ in range(1000):
            port = random.choice(candidates)
            if port not in _handed_out and port_is_free(port):
                _handed_out.add(port)
                return port
    return _kernel_picked_port()


def _kernel_picked_port() -> int:
    """A port the kernel picks: free now, but of its ephemeral range."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be listened on (as a server that sets SO_REUSEADDR would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Sockets of a stopped server lingering in TIME_WAIT do not make a port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def stop_process(
    process: subprocess.Popen[Any] | None,
    timeout: float = 10.0,
    sig: int = signal.SIGTERM,
) -> None:
    """Send ``sig`` (SIGTERM) to a child, and SIGKILL if it has not exited after ``timeout``.

    Always reaps the child, so no zombie is left; a child already gone is left alone.
    """
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def follow_json_lines(
    process: subprocess.Popen[str], on_line: Callable[[Any], None]
) -> threading.Thread:
    """Read ``process``'s stdout (text mode) in a daemon thread until it closes, handing
    each line that is JSON to ``on_line``; other lines (a stray print) are skipped.

    For children that report their changes of state as JSON lines, such as
    ``aether_node --json`` and Celery workers started with an ``on_change`` printer.
    """

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                value = json.loads(line)
            except ValueError:
                continue
            on_line(value)

    thread = threading.Thread(target=read, name=f"json lines of {process.pid}", daemon=True)
    thread.start()
    return thread


def log_tail(log: Path | None, chars: int = 3000) -> str:
    """The end of a child's log, for an error message ("" without a log)."""
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-chars:]


def start_process(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    log: Path | None = None,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``command`` with no stdin, its output appended to ``log`` (else inherited).

    ``new_session``: in a process group of its own, so that a Ctrl-C meant for the
    parent does not reach it and its children can be signalled as a group.
    """
    with contextlib.ExitStack() as stack:
        # The child has its own copy of the log's descriptor; ours closes on leaving.
        output = None if log is None else stack.enter_context(log.open("ab"))
        return subprocess.Popen(
            list(command),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=None if output is None else subprocess.STDOUT,
            start_new_session=new_session,
        )


def wait_until_ready(
    process: subprocess.Popen[Any],
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float = 60.0,
    log: Path | None = None,
    interval: float = 0.1,
) -> None:
    """Return once ``ready()`` is true; raise :class:`ProcessError` if the child exits
    first or ``timeout`` passes. ``what`` names the child in the errors."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            tail = log_tail(log)
            raise ProcessError(
                f"{what} exited (code {process.returncode})" + (f":\n{tail}" if tail else "")
            )
        if ready():
            return
        if time.monotonic() > deadline:
            tail = log_tail(log)
            raise ProcessError(
                f"{what} was not ready within {timeout:.0f} s" + (f":\n{tail}" if tail else "")
            )
        time.sleep(interval)


def http_ok(url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> bool:
    """Whether ``url`` answers 200 now (not listening, or another status: False)."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):  # not listening yet, or not answering 200 yet
        return False


def wait_for_http(
    process: subprocess.Popen[Any],
    url: str,
    *,
    what: str,
    timeout: float = 60.0,
    log: Path | None = None,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Return once ``url`` answers 200 (see :func:`wait_until_ready`)."""
    wait_until_ready(process, lambda: http_ok(url, headers), what=what, timeout=timeout, log=log)


@contextlib.contextmanager
def served(
    command: Sequence[str],
    *,
    ready_url: str,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    what: str | None = None,
    stop_signal: int = signal.SIGTERM,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server until ``ready_url`` answers 200; stop it when the block ends."""
    process = start_process(command, env=env, cwd=cwd, log=log)
    try:
        wait_for_http(
            process,
            ready_url,
            what=what or " ".join(command[:3]),
            timeout=timeout,
            log=log,
            headers=headers,
        )
        yield process
    finally:
        stop_process(process, 15.0, stop_signal)


def uvicorn_command(
    app: str,
    port: int,
    *,
    deflate: bool = False,
    profile: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """uvicorn serving the ASGI ``app`` on 127.0.0.1:``port`` as the example project is.

    With the ``websockets`` implementation, whose sends wait for a slow client (which
    is how the live subscriptions notice one); ``deflate`` off by default, since
    compressing small JSON frames for each socket costs more CPU than it saves.
    ``profile``: run under cProfile, writing that file when uvicorn exits.
    """
    command = [sys.executable]
    if profile:
        command += ["-m", "cProfile", "-o", profile]
    command += ["-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--ws", "websockets"]
    if not deflate:
        command += ["--ws-per-message-deflate", "false"]
    return [*command, *extra]


class ClosedOnExit:
    """``with thing:`` starts it and closes it on leaving (for servers with start/close)."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
