"""aether_django.testing: the nats_server context manager, the configured URL, versions."""

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

from aether_django.testing import (
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


# The fixture run in a pytest of its own, so its session fixture sees only the
# configuration given here. Starting a server makes that run fail.
_INNER_CONFTEST = """
from aether_django.testing.server import NatsServer


def _refuse(self, *args, **kwargs):
    raise AssertionError("the nats_server fixture started a server")


NatsServer.start = _refuse
"""

_INNER_TEST = """
import os

from aether_django.testing.pytest_plugin import ExternalNatsServer


def test_the_configured_server_is_used(nats_server, nats_url):
    assert isinstance(nats_server, ExternalNatsServer)
    assert nats_url == os.environ["EXPECTED_NATS_URL"]
"""

_INNER_SETTINGS = """
import os

SECRET_KEY = "tests-only-not-secret"
INSTALLED_APPS = []
AETHER = {"NATS_URL": os.environ["SETTINGS_NATS_URL"]}
"""


@pytest.mark.parametrize(
    ("from_environment", "from_settings", "expected"),
    [
        (True, False, "environment"),
        (False, True, "settings"),
        (True, True, "environment"),
    ],
    ids=["AETHER_NATS_URL", "AETHER-NATS_URL-setting", "environment-wins"],
)
def test_the_fixture_uses_a_configured_url_and_starts_no_server(
    tmp_path: Path, from_environment: bool, from_settings: bool, expected: str
) -> None:
    urls = {
        "environment": f"nats://127.0.0.1:{find_free_port()}",
        "settings": f"nats://127.0.0.1:{find_free_port()}",
    }
    (tmp_path / "conftest.py").write_text(_INNER_CONFTEST)
    (tmp_path / "test_inner.py").write_text(_INNER_TEST)
    (tmp_path / "inner_settings.py").write_text(_INNER_SETTINGS)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "EXPECTED_NATS_URL": urls[expected]}
    # This session's own server and settings must not leak into the inner run.
    env.pop("AETHER_NATS_URL", None)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    if from_environment:
        env["AETHER_NATS_URL"] = urls["environment"]
    if from_settings:
        env["DJANGO_SETTINGS_MODULE"] = "inner_settings"
        env["SETTINGS_NATS_URL"] = urls["settings"]

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


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
