"""aether_django.testing: the nats_server context manager, the pytest plugin's URL, versions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import nats
import nats.errors
import pytest

import aether_django
from aether_django.testing import (
    NatsCluster,
    NatsServer,
    NatsServerError,
    find_free_port,
    nats_server,
    nats_server_binary,
)


async def test_the_context_manager_runs_a_jetstream_server_and_leaves_nothing_behind():
    with nats_server() as server:
        assert server.process is not None
        pid, store_dir = server.process.pid, server.store_dir
        assert store_dir.is_dir()
        nc = await nats.connect(server.url)
        try:
            info = await nc.jetstream().account_info()  # JetStream answers
            assert info.limits is not None
        finally:
            await nc.close()

    assert server.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie: the pid no longer exists
    assert not store_dir.exists(), "the temporary store was not removed"


async def test_pause_returns_only_once_the_server_no_longer_answers():
    """A request sent right after pause() is never answered; after resume() it is."""
    with nats_server() as server:
        nc = await nats.connect(server.url)
        try:
            for _ in range(5):  # the signal's delivery races the request: try a few times
                await nc.request("$JS.API.INFO", b"", timeout=5)
                server.pause()
                with pytest.raises(nats.errors.TimeoutError):
                    await nc.request("$JS.API.INFO", b"", timeout=0.3)
                server.resume()
            await nc.request("$JS.API.INFO", b"", timeout=5)
        finally:
            await nc.close()


PROJECT_ROOT = Path(aether_django.__file__).resolve().parent.parent

# The plugin run in a pytest of its own, which opts in to it from its conftest (with
# plugin autoloading off: nothing else may register it), so its session fixture sees
# only the configuration given here.
_INNER_CONFTEST = """
pytest_plugins = ["aether_django.testing.pytest_plugin"]
"""

_INNER_TEST = """
import os

from aether_django.testing.pytest_plugin import ExternalNatsServer
from aether_django.testing.server import NatsServer


def test_the_server(aether_nats_server, aether_nats_url):
    expected = os.environ.get("EXPECTED_NATS_URL")
    if expected:
        assert isinstance(aether_nats_server, ExternalNatsServer)
        assert aether_nats_url == expected
    else:
        assert isinstance(aether_nats_server, NatsServer)
        assert aether_nats_url not in os.environ["CONFIGURED_URLS"].split()
    # The app and child processes follow the tests' server, not the configured one.
    assert os.environ["AETHER_NATS_URL"] == aether_nats_url


def test_the_former_names_still_work(nats_server, nats_url, nats_server_factory):
    assert nats_url == nats_server.url == os.environ["AETHER_NATS_URL"]
"""

_INNER_SETTINGS = """
import os

SECRET_KEY = "tests-only-not-secret"
INSTALLED_APPS = []
AETHER = {"NATS_URL": os.environ["SETTINGS_NATS_URL"]}
"""


def _run_inner(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(_INNER_CONFTEST)
    (tmp_path / "test_inner.py").write_text(_INNER_TEST)
    (tmp_path / "inner_settings.py").write_text(_INNER_SETTINGS)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        env={
            **env,
            # The aether_django under test, wherever it is installed from.
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(PROJECT_ROOT)]),
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _clean_environment() -> dict[str, str]:
    env = dict(os.environ)
    # This session's own server and settings must not leak into the inner run.
    for name in ("AETHER_NATS_URL", "AETHER_TEST_NATS_URL", "DJANGO_SETTINGS_MODULE"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize(
    ("from_environment", "from_settings"),
    [(True, False), (False, True), (True, True)],
    ids=["AETHER_NATS_URL", "AETHER-NATS_URL-setting", "both"],
)
def test_the_fixture_never_uses_a_configured_url(
    tmp_path: Path, from_environment: bool, from_settings: bool
) -> None:
    """A project's configured NATS (maybe production's) is not where tests write."""
    urls = [f"nats://127.0.0.1:{find_free_port()}" for _ in range(2)]
    env = {**_clean_environment(), "CONFIGURED_URLS": " ".join(urls)}
    if from_environment:
        env["AETHER_NATS_URL"] = urls[0]
    if from_settings:
        env["DJANGO_SETTINGS_MODULE"] = "inner_settings"
        env["SETTINGS_NATS_URL"] = urls[1]

    result = _run_inner(tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_only_the_explicit_opt_in_points_the_fixture_at_another_server(tmp_path: Path) -> None:
    own = f"nats://127.0.0.1:{find_free_port()}"
    env = {
        **_clean_environment(),
        "AETHER_TEST_NATS_URL": own,
        "EXPECTED_NATS_URL": own,
        "AETHER_NATS_URL": f"nats://127.0.0.1:{find_free_port()}",
    }
    # Starting a server would fail this run: the opt-in names the one to use.
    (tmp_path / "no_start.py").write_text(
        "from aether_django.testing.server import NatsServer\n"
        "def _refuse(self, *args, **kwargs):\n"
        "    raise AssertionError('the fixture started a server')\n"
        "NatsServer.start = _refuse\n"
    )
    result = _run_inner(tmp_path, {**env, "PYTEST_ADDOPTS": "-p no_start"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    # The former fixture names work, with a DeprecationWarning.
    assert "the fixture 'nats_url' is deprecated; use 'aether_nats_url'" in result.stdout


def _fake_server(tmp_path: Path, version_line: str) -> str:
    script = tmp_path / "nats-server"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            echo "{version_line}"
            """
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_a_server_binary_older_than_2_12_is_refused_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _fake_server(tmp_path, "nats-server: v2.11.0")
    expected = r"nats-server 2\.11\.0; aether_django needs 2\.12\.0 or newer"
    monkeypatch.setenv("AETHER_NATS_SERVER_BIN", old)
    with pytest.raises(NatsServerError, match=expected):
        nats_server_binary()
    with pytest.raises(NatsServerError, match=expected), nats_server():
        pass
    monkeypatch.delenv("AETHER_NATS_SERVER_BIN")
    with pytest.raises(NatsServerError, match=expected):
        NatsServer(binary=old)


def test_a_binary_whose_version_cannot_be_told_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NatsServerError, match="cannot tell the version"):
        NatsServer(binary=_fake_server(tmp_path, "something else"))
    with pytest.raises(NatsServerError, match="cannot run"):
        NatsServer(binary=str(tmp_path / "missing"))


@pytest.mark.slow
async def test_a_started_cluster_places_a_replicated_stream_at_once():
    """``NatsCluster.start()`` returns only once the meta leader counts every server as a
    current peer: before, it returned at the first meta leader, which sometimes knew only
    two of three servers and refused an R3 stream ('no suitable peers for placement')."""
    for attempt in range(6):
        with NatsCluster(3).start() as cluster:
            nc = await nats.connect(cluster.url.split(","))
            try:
                # The refusal is what this looks for; a loaded machine may take more than
                # nats-py's 5 s to elect the new stream's raft group.
                await nc.jetstream(timeout=30).add_stream(
                    name=f"placed-{attempt}", subjects=[f"placed.{attempt}"], num_replicas=3
                )
            finally:
                await nc.close()
