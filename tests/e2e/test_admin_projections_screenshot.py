"""The admin's projections page in headless Chromium: a projection stopped at a poison
event shows as failed, with its error and a link to the failing event's place in its
actor's timeline, which the browser follows; a healthy one shows running and caught up.
A screenshot of the page is taken.

uvicorn, the logged-in superuser and the browser come from test_live_page's helpers, the
styled server (the admin's CSS served) from test_admin_screenshot; the projections and
their read model are the test app's (tests/projections/app), run to their end by
``catch_up`` on the test's nats-server. Skipped when no Chromium is installed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aether_django.events import Event
from aether_django.projections import base
from aether_django.projections.runner import catch_up
from aether_django.store import get_event_store

from ..projections.app import projections as app_projections
from ..projections.app.projections import ledger
from .test_admin_screenshot import styled_server  # noqa: F401  (fixture)
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
PAGE_PATH = "/admin/aether_django/projectioninspection/"


@pytest.fixture
def scratch() -> Iterator[None]:
    """Forget the projections and the poison this test declares."""
    saved = dict(base._registry)
    yield
    base._registry.clear()
    base._registry.update(saved)
    app_projections.POISON.clear()


def make_projections(namespace: str, failing: str, healthy: str) -> int:
    """Six orders' events in ``namespace``; ``healthy`` applies them all, ``failing`` stops
    at the fourth. Returns the poison event's sequence."""
    store = get_event_store(namespace)
    saved = [
        store.save_event(Event(event_type="Tick", actor_id=f"order-{i}", version=1, data={"i": i}))
        for i in range(6)
    ]
    ok, bad = ledger(namespace, healthy), ledger(namespace, failing)
    assert catch_up(ok) == {namespace: "caught-up"}
    poison = saved[3].sequence
    assert poison is not None
    app_projections.POISON.add((namespace, poison))
    assert catch_up(bad) == {namespace: "failed"}
    return poison


def test_the_projections_page_shows_a_failed_projection_with_its_error_link(
    styled_server: UvicornThread,  # noqa: F811
    browser: Any,  # noqa: F811
    elsewhere: Callable[..., Any],  # noqa: F811
    scratch: None,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    namespace = f"e2e-proj-{uuid.uuid4().hex[:8]}"
    failing, healthy = f"shot-failing-{uuid.uuid4().hex[:6]}", f"shot-ok-{uuid.uuid4().hex[:6]}"
    poison = elsewhere(make_projections, namespace, failing, healthy)
    session_id = elsewhere(login)  # a superuser
    base_url = f"http://127.0.0.1:{styled_server.port}"
    screenshot = tmp_path / "projections.png"
    context, page = open_page(browser, base_url, session_id)
    try:
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(base_url + PAGE_PATH)
        failed = page.locator(f'[data-projection="{failing}"]')
        ok = page.locator(f'[data-projection="{healthy}"]')
        expect(failed.locator("h2")).to_contain_text("failed", timeout=WAIT_MS)
        expect(ok.locator("h2")).to_contain_text("running")
        row = failed.locator(f'tr[data-namespace="{namespace}"]')
        expect(row.locator("td").nth(4)).to_have_text("failed")
        expect(row).to_contain_text(f"ValueError: cannot handle {namespace}:{poison}")
        expect(row.locator("td").nth(3)).to_have_text("3")  # 6 stored, stopped before the 4th
        expect(ok.locator(f'tr[data-namespace="{namespace}"] td').nth(3)).to_have_text("0")
        # The superuser's buttons, and the failing state drawn in the admin's error colour.
        expect(failed.get_by_role("link", name="Rebuild")).to_be_visible()
        expect(row.get_by_role("link", name="Skip…")).to_be_visible()
        red = "rgb(198, 40, 40)"
        for cell in (row.locator("td").nth(4), failed.locator("h2 .aether-state")):
            colour = cell.evaluate("el => getComputedStyle(el).color")
            assert colour == red, colour
        link = row.locator("a.aether-failing-event")
        expect(link).to_have_text(str(poison))
        page.screenshot(path=str(screenshot), full_page=True)

        # The link opens the failing event's actor timeline at that event.
        link.click()
        page.wait_for_url(f"**/streaminspection/ns/{namespace}/order-3/?from_version=1")
        first = page.locator("#result_list tbody tr").first
        expect(first.locator("td").nth(1)).to_have_text(str(poison))
        expect(first.locator("td").nth(2)).to_have_text("Tick")
    finally:
        context.close()
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", screenshot
