"""The built wheel: what a project installing aether_django actually gets."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_built_wheel_ships_py_typed_the_templates_and_the_pytest_plugin(tmp_path: Path):
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
        (entry_points,) = [f for f in files if f.endswith(".dist-info/entry_points.txt")]
        plugins = archive.read(entry_points).decode()

    assert "aether_django/py.typed" in files
    assert any(f.startswith("aether_django/templates/") for f in files)
    assert "aether_django/testing/pytest_plugin.py" in files
    assert "aether_django = aether_django.testing.pytest_plugin" in plugins
    assert not any(f.startswith(("tests/", "bench/", "example_project/")) for f in files)
