"""Fixtures of the WebSocket tests: a real ASGI server."""

from __future__ import annotations

import threading
import time

import pytest

from aether_django.testing import find_free_port


@pytest.fixture
def server():
    """uvicorn serving tests.asgi in a thread of this process (so it shares the test DB)."""
    import uvicorn

    from tests.asgi import application

    port = find_free_port()
    config = uvicorn.Config(
        application, host="127.0.0.1", port=port, log_level="warning", ws="websockets"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
