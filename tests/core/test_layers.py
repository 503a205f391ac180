"""The layers hold at import time: the pure modules and the JetStream store import no
Django, packages do nothing when imported, and the bus and the cluster do not import
each other.

Each check runs a fresh interpreter, since this test process has imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Modules that must be usable without Django installed or configured.
DJANGO_FREE = [
    "aether_django.events",
    "aether_django.errors",
    "aether_django.names",
    "aether_django.patterns",
    "aether_django.cluster.hashring",
    "aether_django.cluster.shards",
    "aether_django.store.jetstream",
    "aether_django.nats.api",
    "aether_django.nats.client",
    "aether_django.nats.direct",
    "aether_django.nats.headers",
    "aether_django.nats.streams",
]


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


@pytest.mark.parametrize("module", DJANGO_FREE)
def test_a_pure_module_imports_no_django(module: str) -> None:
    django = [m for m in _modules_after_import(module) if m == "django" or m.startswith("django.")]
    assert not django, f"importing {module} imported {django[:5]}"


def test_the_nats_bus_does_not_import_the_runtime() -> None:
    # Dropped-message handlers are the wire package's (it was the bus's one upward import).
    assert "aether_django.runtime" not in _modules_after_import("aether_django.bus.nats")


def test_the_wire_package_imports_only_the_core() -> None:
    loaded = _modules_after_import("aether_django.nats.streams")
    loaded += _modules_after_import("aether_django.nats.client")
    ours = {m for m in loaded if m.startswith("aether_django.")}
    allowed = {"aether_django.errors", "aether_django.names", "aether_django.patterns"}
    allowed |= {"aether_django.events", "aether_django.nats"}
    assert {m for m in ours if not m.startswith("aether_django.nats.")} <= allowed, sorted(ours)


def test_the_bus_package_does_not_import_the_cluster_package() -> None:
    # The bus's node id comes from the runtime, below both.
    loaded = _modules_after_import("aether_django.bus")
    assert "aether_django.cluster" not in loaded


def test_the_cluster_package_does_not_import_the_bus_package() -> None:
    loaded = _modules_after_import("aether_django.cluster")
    assert "aether_django.bus" not in loaded


@pytest.mark.parametrize("package", ["aether_django.store", "aether_django.bus"])
def test_importing_a_package_connects_no_reload_hook(package: str) -> None:
    # Hooks are the app's to connect (AppConfig.ready), not an import's side effect.
    assert "aether_django.conf" not in _modules_after_import(package)


def test_the_app_connects_the_reload_hooks() -> None:
    from aether_django import conf
    from aether_django.bus import reset_event_bus
    from aether_django.runtime import reset_runtime
    from aether_django.store import reset_event_stores

    for hook in (reset_event_bus, reset_event_stores, reset_runtime):
        assert conf._reload_hooks.count(hook) == 1, hook


def test_node_id_is_one_helper_for_the_bus_and_the_cluster() -> None:
    from aether_django import cluster, names, runtime
    from aether_django.bus import nats

    assert cluster.node_id is runtime.node_id
    assert nats.default_node_id is runtime.default_node_id is names.default_node_id
    assert runtime.node_id() == runtime.node_id()


LOCAL_BUS = {"BACKEND": "memory"}


def test_a_settings_change_drops_the_bus() -> None:
    from django.test import override_settings

    from aether_django.bus import LocalEventBus, get_event_bus

    with override_settings(AETHER=LOCAL_BUS):
        bus = get_event_bus()
        assert get_event_bus() is bus
        with override_settings(AETHER={**LOCAL_BUS, "BUS_BUFFER_SIZE": 7}):
            rebuilt = get_event_bus()
            assert rebuilt is not bus
            assert isinstance(rebuilt, LocalEventBus) and rebuilt.buffer_size == 7


def _child_has_no_bus() -> bool:
    from aether_django import bus

    return bus._bus is None


def test_a_forked_child_forgets_the_parents_bus() -> None:
    import multiprocessing

    from django.test import override_settings

    from aether_django.bus import get_event_bus

    with override_settings(AETHER=LOCAL_BUS):
        get_event_bus()
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.apply(_child_has_no_bus)


def test_the_cluster_primitives_do_not_import_the_sharding_layer() -> None:
    # Routing runs aggregates (Django); the primitives below it must not pull it in.
    loaded = _modules_after_import("aether_django.cluster.coordinator")
    assert not [m for m in loaded if m.startswith("aether_django.sharding")]
    assert "aether_django.aggregates" not in loaded


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("aether_django.cluster", "send_command", "aether_django.sharding"),
        ("aether_django.cluster", "asend_command", "aether_django.sharding"),
        ("aether_django.cluster", "CommandError", "aether_django.sharding"),
        ("aether_django.cluster", "RemoteDomainError", "aether_django.sharding"),
        ("aether_django.cluster", "ShardUnavailableError", "aether_django.sharding"),
        ("aether_django.cluster.routing", "send", "aether_django.sharding.routing"),
        ("aether_django.cluster.routing", "ShardHost", "aether_django.sharding.routing"),
        ("aether_django.cluster.routing", "shard_subject", "aether_django.sharding.routing"),
        ("aether_django.cluster.node", "ClusterNode", "aether_django.sharding.node"),
        ("aether_django.cluster.node", "LATE_AFTER", "aether_django.sharding.node"),
    ],
)
def test_the_old_import_paths_of_sharding_still_work_and_warn(
    old: str, name: str, new: str
) -> None:
    import importlib

    with pytest.warns(DeprecationWarning, match=f"moved to {new}.{name}"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)


def test_a_name_that_never_existed_is_still_an_attribute_error() -> None:
    import importlib

    for old in ("aether_django.cluster", "aether_django.cluster.routing"):
        with pytest.raises(AttributeError):
            _ = importlib.import_module(old).no_such_name


def test_the_loggers_keep_their_documented_names() -> None:
    from aether_django.sharding import node, routing

    assert routing.logger.name == "aether_django.cluster.routing"
    assert node.logger.name == "aether_django.cluster.node"


def test_an_old_import_paths_warning_names_the_line_that_used_it() -> None:
    import importlib

    old = importlib.import_module("aether_django.cluster.node")
    with pytest.warns(DeprecationWarning) as caught:
        _ = old.ClusterNode
    assert caught[0].filename == __file__
