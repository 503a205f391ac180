"""The README's demo command, run as the README gives it (``python3 dev.py demo``), on a
fresh database: everything comes up and answers, the printed login opens the admin's
shard map, and after Ctrl-C no process it started is left.

dev.py reuses the project's ``.venv`` (its stamp matches pyproject.toml, so nothing is
installed) and execs the demo. The demo keeps its state (NATS store, pid files, beat
schedule, logs) in tmp_path (``AETHER_DEMO_VAR``), migrates an empty SQLite database
there (``AETHER_DEMO_DB``) and serves on a free port (``AETHER_DEMO_PORT``): the same
variables a user sets to run a second demo (README, docs/settings.md).
"""

from __future__ import annotations

import base64
import hashlib
import http.cookiejar
import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
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
    "demo-celery-beat-1.pid",
    "demo-celery-beat-2.pid",
]
SHARDS = "/admin/aether_django/clusterinspection/shards/"


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

    def join(self) -> None:
        self._thread.join(5)

    def wait_for(self, wanted: str, process: subprocess.Popen[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in self.lines:
            if process.poll() is not None:
                self.join()
                pytest.fail(f"the demo exited ({process.returncode}) early:\n{self.text}")
            if time.monotonic() > deadline:
                pytest.fail(f"the demo did not print {wanted!r} in {timeout}s:\n{self.text}")
            time.sleep(0.2)


def readme_demo_command() -> list[str]:
    """The first command of the README's set-up block, split as a shell would."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Set-up: two commands\n.*?^```sh\n(.*?)^```", text, re.M | re.S)
    assert match, "README.md has no set-up commands"
    first = match.group(1).splitlines()[0].split("#")[0]
    return shlex.split(first)


def dev_py_venv_is_current() -> bool:
    """Whether ``python3 dev.py`` would use .venv as it is (dev.py's own stamp check)."""
    stamp = ROOT / ".venv" / ".dev-py-stamp"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return stamp.exists() and stamp.read_text() == f"pyproject.toml sha256 {digest}\n"


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


class Browser:
    """A cookie-keeping HTTP client, enough to log in to the admin as a person would."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def open(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str, str]:
        """Status, final URL (after redirects) and body of a GET, or a POST of ``form``."""
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with self.opener.open(self.base + path, data=data, timeout=10) as response:
                return response.status, response.geturl(), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.geturl(), exc.read().decode()

    def log_in(self, username: str, password: str) -> None:
        status, _, page = self.open("/admin/login/?next=/admin/")
        assert status == 200, page
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token, page
        status, url, page = self.open(
            "/admin/login/?next=/admin/",
            {
                "csrfmiddlewaretoken": token.group(1),
                "username": username,
                "password": password,
                "next": "/admin/",
            },
        )
        # A wrong login shows the form again; a right one redirects to the index.
        assert status == 200 and url == self.base + "/admin/", page
        assert "Log out" in page or "logout" in page, page


def _stat(pid: int) -> tuple[str, int, int] | None:
    """State, parent pid and start time (clock ticks after boot) of ``pid``, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; the fields follow its last ")".
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[19])


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    # Split on spaces too: valkey-server rewrites its title into one "name host:port".
    return raw.replace(b"\0", b" ").decode(errors="replace").split()


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root`` (its own sessions included), pid -> start time."""
    parents: dict[int, int] = {}
    starts: dict[int, int] = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None and stat[0] != "Z":
            parents[pid], starts[pid] = stat[1], stat[2]
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = starts[pid]
                frontier.append(pid)
    return found


def mentioning(path: Path, ports: set[int]) -> dict[int, int]:
    """Live processes whose command line names ``path`` or one of ``ports``, pid -> start time."""
    needles = {str(p) for p in ports}
    found: dict[int, int] = {}
    for pid in _pids():
        if pid == os.getpid():
            continue
        words = _cmdline(pid)
        hit = any(str(path) in word for word in words) or any(
            word in needles or word.rsplit(":", 1)[-1].rstrip("/").split("/")[0] in needles
            for word in words
        )
        stat = _stat(pid)
        if hit and stat is not None and stat[0] != "Z":
            found[pid] = stat[2]
    return found


def still_running(processes: dict[int, int]) -> dict[int, list[str]]:
    """Those of ``processes`` still alive (same pid and start time: not a reused pid)."""
    alive = {}
    for pid, start in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[0] != "Z" and stat[2] == start:
            alive[pid] = _cmdline(pid)
    return alive


class Sampler:
    """Collects the descendants of a process from /proc, every 0.25 s while it runs.

    Short-lived children (migrate, the seeding) and anything started while stopping
    are caught too, not only what runs at one moment.
    """

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: dict[int, int] = {}
        self._process = process
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._process.poll() is None:
            self.seen |= descendants(self._process.pid)
            time.sleep(0.25)

    def join(self) -> dict[int, int]:
        self._thread.join(5)
        return self.seen


def test_the_readme_demo_command_brings_everything_up_and_ctrl_c_leaves_no_process(
    tmp_path: Path,
) -> None:
    command = readme_demo_command()
    assert command == ["python3", "dev.py", "demo"]
    if not dev_py_venv_is_current():
        pytest.skip("dev.py would reinstall .venv (its stamp is not pyproject.toml's)")
    port = find_free_port()
    database = tmp_path / "db.sqlite3"
    env = {
        **os.environ,
        "AETHER_DEMO_PORT": str(port),
        "AETHER_DEMO_VAR": str(tmp_path / "var"),
        "AETHER_DEMO_DB": str(database),
    }
    # The demo starts its own nats-server and broker, and names its own user and settings.
    for name in (
        "AETHER_NATS_URL",
        "CELERY_BROKER_URL",
        "DJANGO_SETTINGS_MODULE",
        "AETHER_DEMO_USER",
    ):
        env.pop(name, None)
    # Its own process group, as a shell's job: Ctrl-C is sent to the whole group.
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = Output(process)
    sampler = Sampler(process)
    started: dict[int, int] = {}
    ports = {port}
    pids: dict[str, int] = {}
    try:
        output.wait_for(READY_LINE, process, 180)
        text = output.text
        started |= descendants(process.pid)
        # dev.py found .venv current: it installed nothing and exec'd the demo.
        assert "dev.py: installing" not in text and "dev.py: creating" not in text, text
        assert f"Applying database migrations ({database}) ..." in text
        match = re.search(r"Created the staff user 'demo' with password: (\S+)", text)
        assert match, text  # a fresh database has no user yet
        auth = ("demo", match.group(1))
        for pattern in (r"nats://127\.0\.0\.1:(\d+)", r"redis://127\.0\.0\.1:(\d+)"):
            found = re.search(pattern, text)
            assert found, text
            ports.add(int(found.group(1)))
        base = f"http://127.0.0.1:{port}"
        for name in (
            "events page",
            "orders page",
            "live feed",
            "API",
            "admin",
            "shard map",
            "health",
            "metrics",
        ):
            assert re.search(rf"^  {name} +{base}/", text, re.M), name
        assert f"readiness {base}/aether/readyz/" in text
        assert "Seeded the orders namespace with order-1" in text
        for name in PID_FILES:
            pids[name] = int((tmp_path / "var" / name).read_text().split()[0])
            assert pids[name] in started, name

        status, _ = get(f"{base}/")
        assert status == 200
        status, body = get(f"{base}/api/aether/namespaces/", auth)
        assert status == 200
        assert [n["name"] for n in json.loads(body)].count("orders") == 1

        # Health and readiness need no login (load balancers call them).
        status, body = get(f"{base}/aether/healthz/")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        status, body = get(f"{base}/aether/readyz/")
        assert status == 200 and json.loads(body)["status"] == "ready", body

        # The beats and the worker elect the node and write the shard map within a few ticks.
        cluster: dict[str, Any] = {}
        shards: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, body = get(f"{base}/api/aether/cluster/", auth)
            assert status == 200, body
            cluster = json.loads(body)
            status, body = get(f"{base}/api/aether/cluster/shards/", auth)
            assert status == 200, body
            shards = json.loads(body)
            if cluster["leader"] == "demo-node-1" and "demo-node-1" in shards["counts"]:
                break
            time.sleep(0.5)
        assert cluster.get("leader") == "demo-node-1", cluster
        assert [n["node_id"] for n in cluster["nodes"]] == ["demo-node-1"]
        assert shards["counts"] == {"demo-node-1": shards["num_shards"]}, shards

        # Two beats run: one holds the beat lease and sends, the other stands by.
        beat_logs = [tmp_path / "var" / f"celery-beat-{n}.log" for n in (1, 2)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            logs = [log.read_text(errors="replace") for log in beat_logs]
            if sorted("is active" in log for log in logs) == [False, True] and all(
                "is active" in log or "stands by" in log for log in logs
            ):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"not one active and one standing-by beat: {logs}")

        # The printed credentials open the admin, its shard map and the metrics.
        status, _ = get(f"{base}/aether/metrics/")
        assert status == 401
        browser = Browser(base)
        browser.log_in(*auth)
        status, _, page = browser.open(SHARDS)
        assert status == 200, page
        assert "demo-node-1" in page, page
        status, _, metrics = browser.open("/aether/metrics/")
        assert status == 200, metrics
        assert "# TYPE aether_saves_total counter" in metrics
        assert "# TYPE aether_cluster_nodes gauge" in metrics

        started |= descendants(process.pid) | mentioning(tmp_path, ports)
        # Ctrl-C in the terminal: SIGINT to the foreground process group.
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(90) == 0, output.text
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    output.join()
    started |= sampler.join()
    assert (
        "Stopped uvicorn, Celery worker, Celery beat 1, Celery beat 2, the Celery broker, "
        "nats-server." in output.text
    )
    # Every process the demo started (seen while it ran, from its own sessions too) is
    # gone once it returns: none is left to finish in the background.
    assert pids.keys() == set(PID_FILES)
    assert len(started) >= len(PID_FILES), started
    left = still_running(started)
    assert not left, f"still running after the demo stopped: {left}"
    left = still_running(mentioning(tmp_path, ports))
    assert not left, f"processes naming the demo's directory or ports: {left}"
    assert not [name for name in PID_FILES if (tmp_path / "var" / name).exists()]
    # Nothing listens on the web port any more.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
