"""The admin's shard map page in headless Chromium: 1,024 shards over 10 real cluster
nodes as a grid a screen tall, every cell coloured by its owner, the last rebalance's
moves outlined, and a screenshot of it.

uvicorn, the logged-in staff user and the browser come from test_live_page's helpers;
the admin's own CSS is served too (as the example project serves it under DEBUG), so the
page is measured and pictured as staff see it.
Ten coordinators on the test's nats-server write the map to a cluster bucket of the
test's own (so other tests' nodes don't lead it), as a cluster of ten would: nine nodes
first, then a tenth joins and the leader moves about a tenth of the shards to it.
Skipped when no Chromium is installed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import modify_settings, override_settings

from aether_django.cluster.coordinator import ClusterConfig, Coordinator, ShardMap
from aether_django.cluster.shards import Plan
from aether_django.runtime import Runtime
from aether_django.testing import find_free_port

from .test_live_page import (  # noqa: F401  (fixtures)
    WAIT_MS,
    UvicornThread,
    browser,
    chromium_path,
    elsewhere,
    login,
    open_page,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
SHARDS_PATH = "/admin/aether_django/clusterinspection/shards/"
NUM_SHARDS = 1024
NODES = [f"node-{i:02d}" for i in range(10)]
#: A screen or two: the list this page was before the grid was 22,783 pixels tall.
MAX_HEIGHT = 2000

#: What the page says of each shard cell and each legend swatch, as the browser drew it.
READ_GRID = """() => {
  const looks = (el) => {
    const style = getComputedStyle(el);
    return {
      shard: el.dataset.shard === undefined ? null : Number(el.dataset.shard),
      node: el.dataset.node,
      colour: style.backgroundColor,
      outline: style.outlineStyle,
      outlineWidth: style.outlineWidth,
      width: el.getBoundingClientRect().width,
      title: el.title,
    };
  };
  return {
    height: document.documentElement.scrollHeight,
    cells: [...document.querySelectorAll("#aether-shard-grid .aether-cell")].map(looks),
    swatches: [...document.querySelectorAll(".aether-legend tbody .aether-swatch")].map(looks),
  };
}"""


@pytest.fixture
def styled_server() -> Iterator[UvicornThread]:
    """The example project's ASGI application behind Django's static files handler."""
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    from example_project.asgi import application

    with (
        modify_settings(INSTALLED_APPS={"append": ["django.contrib.staticfiles"]}),
        override_settings(STATIC_URL="/static/"),
    ):
        running = UvicornThread(ASGIStaticFilesHandler(application), find_free_port())
        running.start()
        yield running
        running.stop()


def build_cluster(runtime: Runtime, bucket: str) -> tuple[ShardMap, Plan]:
    """Ten nodes on ``bucket``: nine share the shards, then the tenth joins. The map the
    leader wrote last, and the plan of that last rebalance."""
    # A long failure timeout: no heartbeat may lapse while the page is read on a busy machine.
    config = ClusterConfig(bucket=bucket, num_shards=NUM_SHARDS, failure_timeout=120.0)
    leader, *others = [Coordinator(runtime, node, config) for node in NODES]
    runtime.run(leader.tick())
    assert leader.is_leader, "the first node did not take the lease"
    for node in others[:-1]:
        runtime.run(node.heartbeat())
    runtime.run(leader.rebalance())
    runtime.run(others[-1].heartbeat())
    plan = runtime.run(leader.rebalance())
    shard_map = runtime.run(leader.read_shard_map())
    assert plan is not None and shard_map is not None
    assert sorted(shard_map.counts()) == NODES
    return shard_map, plan


def leave(runtime: Runtime, bucket: str) -> None:
    config = ClusterConfig(bucket=bucket, num_shards=NUM_SHARDS)
    for node in NODES:
        runtime.run(Coordinator(runtime, node, config).leave())


def test_the_shard_map_of_1024_shards_and_10_nodes_is_a_grid_a_screen_tall(
    styled_server: UvicornThread,
    browser: Any,  # noqa: F811
    elsewhere: Callable[..., Any],  # noqa: F811
    aether_nats_url: str,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    bucket = f"cluster_{uuid.uuid4().hex[:8]}"
    # Made in another thread: Playwright's loop runs in this one.
    runtime = elsewhere(Runtime, aether_nats_url)
    screenshot = tmp_path / "shard-map.png"
    aether = {**settings.AETHER, "CLUSTER_BUCKET": bucket, "NUM_SHARDS": NUM_SHARDS}
    with override_settings(AETHER=aether):
        try:
            shard_map, plan = elsewhere(build_cluster, runtime, bucket)
            session_id = elsewhere(login)  # a superuser, so staff
            base = f"http://127.0.0.1:{styled_server.port}"
            context, page = open_page(browser, base, session_id)
            try:
                page.set_viewport_size({"width": 1280, "height": 900})
                page.goto(base + SHARDS_PATH)
                expect(page.locator("#content")).to_contain_text(
                    f"{NUM_SHARDS} shards over 10 nodes", timeout=WAIT_MS
                )
                drawn = page.evaluate(READ_GRID)
            finally:
                page.screenshot(path=str(screenshot), full_page=True)
                context.close()
        finally:
            elsewhere(leave, runtime, bucket)
            elsewhere(runtime.close)
    seen = f"(screenshot: {screenshot})"
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", seen

    assert drawn["height"] < MAX_HEIGHT, f"the page is {drawn['height']} px tall {seen}"

    # The legend: one swatch a node, ten colours that differ.
    colour_of = {swatch["node"]: swatch["colour"] for swatch in drawn["swatches"]}
    assert sorted(colour_of) == NODES, seen
    assert len(set(colour_of.values())) == len(NODES), f"colours repeat: {colour_of} {seen}"

    # Every shard has its cell, in order, with its owner's colour.
    cells = drawn["cells"]
    assert [cell["shard"] for cell in cells] == list(range(NUM_SHARDS)), seen
    for cell in cells:
        owner = shard_map.assignment[cell["shard"]]
        assert cell["node"] == owner, f"{cell} {seen}"
        assert cell["colour"] == colour_of[owner], f"{cell} is not {owner}'s colour {seen}"
        assert cell["width"] >= 10, f"{cell} is too small to see {seen}"

    # The last rebalance's moves, and only they, are outlined, with their previous owner.
    assert 0 < len(plan.moved) < NUM_SHARDS // 5, plan.moved_count
    assert set(shard_map.moved_from) == set(plan.moved), seen
    outlined = {cell["shard"] for cell in cells if cell["outline"] == "solid"}
    assert outlined == set(plan.moved), f"outlined {sorted(outlined ^ plan.moved)} wrongly {seen}"
    for cell in cells:
        if cell["shard"] in plan.moved:
            assert cell["outlineWidth"] == "3px", f"{cell} {seen}"
            previous = shard_map.moved_from[cell["shard"]]
            assert cell["title"] == f"shard {cell['shard']}: {cell['node']}, moved from {previous}"
        else:
            assert cell["title"] == f"shard {cell['shard']}: {cell['node']}", seen
