"""``python -m example_project.demo`` (what ``python3 dev.py demo`` execs) brings up everything,
answers, has a cluster leader, and leaves nothing running after Ctrl-C.

The demo keeps its state (NATS store, pid files, beat schedule, logs) in tmp_path
(``AETHER_DEMO_VAR``) and serves on a free port (``AETHER_DEMO_PORT``). Its SQLite
database is the example project's ``var/db.sqlite3`` (fixed by example_project.settings),
so the test uses a staff user of its own (``AETHER_DEMO_USER``) and deletes it afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from aether_django.testing import find_free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
READY_LINE = "Press Ctrl-C to stop."
PID_FILES = [
    "demo-nats-server.pid",
    "demo-broker.pid",
    "demo-uvicorn.pid",
    "demo-celery-worker.pid",
    "demo-celery-beat.pid",
]


class Output:
    """The demo's output, read line by line in a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        self._stream = process.stdout
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, wanted: str, process: subprocess.Popen[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in self.lines:
            if process.poll() is not None:
                self._thread.join(5)
                pytest.fail(f"the demo exited ({process.returncode}) early:\n{self.text}")
            if time.monotonic() > deadline:
                pytest.fail(f"the demo did not print {wanted!r} in {timeout}s:\n{self.text}")
            time.sleep(0.2)


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def running(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def delete_user(username: str) -> None:
    code = (
        "from django.contrib.auth.models import User; "
        f"User.objects.filter(username={username!r}).delete()"
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "example_project.settings"},
        capture_output=True,
        check=False,
        timeout=60,
    )


def test_the_demo_brings_up_everything_and_stops_it_all(tmp_path: Path) -> None:
    port = find_free_port()
    user = f"demo-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "AETHER_DEMO_PORT": str(port),
        "AETHER_DEMO_VAR": str(tmp_path),
        "AETHER_DEMO_USER": user,
    }
    # The demo starts its own nats-server and broker.
    for name in ("AETHER_NATS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "example_project.demo"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = Output(process)
    pids: dict[str, int] = {}
    try:
        output.wait_for(READY_LINE, process, 180)
        match = re.search(rf"Created the staff user '{user}' with password: (\S+)", output.text)
        assert match, output.text
        auth = (user, match.group(1))
        base = f"http://127.0.0.1:{port}"
        for name in ("events page", "orders page", "live feed", "API", "admin", "shard map"):
            assert re.search(rf"^  {name} +{base}/", output.text, re.M), name
        assert "Seeded the orders namespace with order-1" in output.text
        for name in PID_FILES:
            pids[name] = int((tmp_path / name).read_text().split()[0])
            assert running(pids[name]), name

        status, _ = get(f"{base}/")
        assert status == 200
        status, body = get(f"{base}/api/aether/namespaces/", auth)
        assert status == 200
        assert [n["name"] for n in json.loads(body)].count("orders") == 1
        status, body = get(f"{base}/admin/login/")
        assert status == 200 and b"password" in body

        cluster: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, body = get(f"{base}/api/aether/cluster/", auth)
            assert status == 200, body
            cluster = json.loads(body)
            if cluster["leader"] == "demo-node-1":
                break
            time.sleep(0.5)
        assert cluster.get("leader") == "demo-node-1", cluster
        assert [n["node_id"] for n in cluster["nodes"]] == ["demo-node-1"]

        process.send_signal(signal.SIGINT)
        assert process.wait(90) == 0, output.text
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        delete_user(user)
    time.sleep(0.5)
    output._thread.join(5)
    assert "Stopped uvicorn, Celery worker, Celery beat, the Celery broker, nats-server." in (
        output.text
    )
    assert pids.keys() == set(PID_FILES)
    still = {name: pid for name, pid in pids.items() if running(pid)}
    assert not still, f"still running after the demo stopped: {still}"
    assert not [name for name in PID_FILES if (tmp_path / name).exists()]
    # Nothing listens on the web port any more.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
