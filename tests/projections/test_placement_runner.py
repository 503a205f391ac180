"""Placement inside one process: a runner restricted to the projections a node owns, the
placement facade (owner_of, node_services), and where ``aether_projections status`` says
each projection runs. The multi-process tests are in test_placement.py."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings

from aether_django.cluster import cluster_config
from aether_django.cluster.coordinator import Coordinator, ShardMap
from aether_django.models import ProjectionCheckpoint
from aether_django.projections import placement
from aether_django.projections.runner import ProjectionRunner
from aether_django.runtime import get_runtime

from .app.models import Applied
from .app.projections import ledger
from .conftest import eventually, save_ticks

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("scratch_projections"),
]


def rows(name: str) -> list[tuple[int, str]]:
    return list(
        Applied.objects.filter(projection=name).order_by("sequence").values_list("sequence", "node")
    )


@pytest.fixture(autouse=True)
def nodes_run_projections() -> Iterator[None]:
    """The library's default (the suite's settings turn it off for the other tests)."""
    with override_settings(AETHER={**settings.AETHER, "PROJECTIONS_IN_NODES": True}):
        yield


@pytest.fixture
def bucket() -> Iterator[str]:
    """A cluster bucket of the test's own (none exists until a node writes to it)."""
    name = f"cluster_{uuid.uuid4().hex[:8]}"
    with override_settings(AETHER={**settings.AETHER, "CLUSTER_BUCKET": name}):
        yield name


def test_a_runner_runs_the_placed_projections_only_and_hands_one_over(unique):
    namespace = unique("proj-place")
    first, second = ledger(namespace, unique("first")), ledger(namespace, unique("second"))
    a, b = first._meta.name, second._meta.name
    runner = ProjectionRunner([first, second], interval=0.1, node="node-x")
    runner.place({a})
    runner.start()
    try:
        save_ticks(namespace, 10)
        eventually(lambda: len(rows(a)) == 10, what="the placed projection applies")
        time.sleep(0.3)
        # The other one is not run here: no worker, not even a checkpoint.
        assert rows(b) == [] and runner.running() == {a}
        assert not ProjectionCheckpoint.objects.filter(projection=b).exists()
        assert rows(a) == [(seq, "node-x") for seq in range(1, 11)]

        # The shard moves: the runner stops the first projection, starts the second.
        runner.place({b})
        eventually(lambda: runner.running() == {b}, what="the hand-over")
        save_ticks(namespace, 5, first_version=11)
        eventually(lambda: len(rows(b)) == 15, what="the newly placed projection catches up")
        time.sleep(0.3)
        assert len(rows(a)) == 10  # stopped: it saw none of the new events

        # And back: it goes on from its checkpoint, nothing applied twice.
        runner.place({a, b})
        eventually(lambda: len(rows(a)) == 15, what="the first projection resumes")
        assert [seq for seq, _ in rows(a)] == list(range(1, 16))
        assert [seq for seq, _ in rows(b)] == list(range(1, 16))
    finally:
        runner.stop()


def test_without_placement_a_runner_runs_everything_and_context_node_is_none(unique, runners):
    namespace = unique("proj-place")
    projection = ledger(namespace, unique("all"))
    runner = runners(projection)
    save_ticks(namespace, 3)
    eventually(lambda: len(rows(projection._meta.name)) == 3)
    assert runner.placed is None
    assert {node for _, node in rows(projection._meta.name)} == {""}  # context.node None


def test_the_setting_turns_placement_in_nodes_off(unique, bucket):
    projection = ledger(unique("proj-place"), unique("off"))
    assert placement.placed_in_nodes()
    services = placement.node_services("node-x")
    assert len(services) == 1 and isinstance(services[0], placement.ProjectionPlacement)
    assert projection in services[0].projections
    with override_settings(AETHER={**settings.AETHER, "PROJECTIONS_IN_NODES": False}):
        assert not placement.placed_in_nodes()
        assert placement.node_services("node-x") == []
        assert placement.owner_of(projection) is None


def test_status_shows_where_each_projection_runs(unique, bucket):
    projection = ledger(unique("proj-place"), unique("status"))
    name = projection._meta.name

    def status() -> dict:
        out = io.StringIO()
        call_command("aether_projections", "status", name, "--json", stdout=out)
        return json.loads(out.getvalue())["projections"][0]

    def text() -> str:
        out = io.StringIO()
        call_command("aether_projections", "status", name, stdout=out)
        return out.getvalue()

    # No cluster: nothing is created by asking, and nothing is placed.
    assert placement.read_shard_map() is None
    assert status()["node"] is None
    assert "not placed (no cluster shard map)" in text()
    assert placement.read_shard_map() is None

    # A one-node cluster: its node owns every shard, so it runs the projection.
    runtime = get_runtime()
    node = Coordinator(runtime, "node-solo", cluster_config())
    try:
        runtime.run(node.tick())
        shard_map = placement.read_shard_map()
        assert shard_map is not None and shard_map.counts() == {"node-solo": shard_map.num_shards}
        assert placement.owner_of(projection) == "node-solo"
        assert status()["node"] == "node-solo"
        shard = placement.shard_of_projection(projection)
        assert f"runs in node node-solo (shard {shard})" in text()
        with override_settings(AETHER={**settings.AETHER, "PROJECTIONS_IN_NODES": False}):
            assert status()["node"] is None
            assert "PROJECTIONS_IN_NODES is False" in text()
    finally:
        runtime.run(node.leave())


def test_a_node_keeps_running_its_other_projections_when_one_cannot_start(unique):
    # A projection whose database alias does not exist (a settings mistake) must not
    # stop the node's runner: nobody would see that thread end.
    namespace = unique("proj-place")
    broken = ledger(namespace, unique("broken"), database="no-such-alias")
    working = ledger(namespace, unique("working"))
    service = placement.ProjectionPlacement([broken, working], node_id="node-x", interval=0.1)
    everything = ShardMap(num_shards=4, assignment=dict.fromkeys(range(4), "node-x"), term=1)
    try:
        get_runtime().run(service.follow("node-x", everything))
        save_ticks(namespace, 5)
        eventually(lambda: len(rows(working._meta.name)) == 5, what="the working one applies")
        assert service._thread is not None and service._thread.is_alive()
    finally:
        get_runtime().run(service.stop())
