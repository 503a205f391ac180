"""The layers hold at import time: the bus and the cluster do not import each other.

Each check runs a fresh interpreter, since this test process has imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules_after_import(module: str) -> list[str]:
    """The names in ``sys.modules`` after a fresh interpreter imports ``module``."""
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"import {module}\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    # No DJANGO_SETTINGS_MODULE: a module that needs configured settings fails here.
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    modules: list[str] = json.loads(result.stdout)
    return modules


def test_the_bus_package_does_not_import_the_cluster_package() -> None:
    # The bus's node id comes from the runtime, below both.
    loaded = _modules_after_import("aether_django.bus")
    assert "aether_django.cluster" not in loaded


def test_the_cluster_package_does_not_import_the_bus_package() -> None:
    loaded = _modules_after_import("aether_django.cluster")
    assert "aether_django.bus" not in loaded


def test_node_id_is_one_helper_for_the_bus_and_the_cluster() -> None:
    from aether_django import cluster, runtime
    from aether_django.bus import nats

    assert cluster.node_id is runtime.node_id
    assert nats.default_node_id is runtime.default_node_id
    assert runtime.node_id() == runtime.node_id()
