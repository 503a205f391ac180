"""The admin's shard map page in headless Chromium, with one cluster node ticked in-process,
and a screenshot of it.

uvicorn, the logged-in staff user and the browser come from test_live_page's helpers;
the node writes to a cluster bucket of its own, so other tests' nodes don't lead it.
Skipped when no Chromium is installed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from aether_django.cluster.coordinator import ClusterConfig, Coordinator
from aether_django.runtime import Runtime

from .test_live_page import (  # noqa: F401  (fixtures)
    WAIT_MS,
    UvicornThread,
    browser,
    chromium_path,
    elsewhere,
    login,
    open_page,
    server,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
SHARDS_PATH = "/admin/aether_django/clusterinspection/shards/"


def test_the_shard_map_page_shows_the_node_and_its_shards(
    server: UvicornThread,  # noqa: F811
    browser: Any,  # noqa: F811
    elsewhere: Callable[..., Any],  # noqa: F811
    aether_nats_url: str,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    bucket = f"cluster_{uuid.uuid4().hex[:8]}"
    # Made in another thread: Playwright's loop runs in this one.
    runtime = elsewhere(Runtime, aether_nats_url)
    node = Coordinator(runtime, "node-x", ClusterConfig(bucket=bucket, num_shards=100))

    def tick_until_mapped() -> None:
        for _ in range(20):
            runtime.run(node.tick())
            shard_map = runtime.run(node.read_shard_map())
            if shard_map is not None and set(shard_map.counts()) == {"node-x"}:
                return
        raise AssertionError("node-x did not write a shard map giving it every shard")

    screenshot = tmp_path / "shards.png"
    aether = {**settings.AETHER, "CLUSTER_BUCKET": bucket, "NUM_SHARDS": 100}
    with override_settings(AETHER=aether):
        try:
            elsewhere(tick_until_mapped)
            session_id = elsewhere(login)  # a superuser, so staff
            base = f"http://127.0.0.1:{server.port}"
            context, page = open_page(browser, base, session_id)
            try:
                page.goto(base + SHARDS_PATH)
                content = page.locator("#content")
                expect(content).to_contain_text("100 shards", timeout=WAIT_MS)
                rows = page.locator("#result_list tbody tr")
                expect(rows).to_have_count(1)
                expect(rows.first.locator("td").nth(0)).to_have_text("node-x")
                expect(rows.first.locator("td").nth(1)).to_have_text("100")
            finally:
                page.screenshot(path=str(screenshot), full_page=True)
                context.close()
        finally:
            elsewhere(lambda: runtime.run(node.leave()))
            elsewhere(runtime.close)
    assert screenshot.exists() and screenshot.stat().st_size > 0
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
