"""The orders page in a real browser: headless Chromium (Playwright) against uvicorn,
with the shop's OrderSummaryProjection running in a thread, as the demo's worker node
runs it. A person places an order, adds a line and pays through the page's forms; the
list shows each change as soon as they look, and filters it.

uvicorn serves example_project.asgi in a thread of this process, sharing the test
database (tests/e2e/test_live_page.py has the fixtures). Skipped without Chromium.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from example_project.shop.projections import OrderSummaryProjection
from tests.projections.conftest import runners

from .test_live_page import WAIT_MS, UvicornThread, browser, chromium_path, elsewhere, server

__all__ = ["browser", "chromium_path", "elsewhere", "runners", "server"]

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_placing_an_order_shows_it_in_the_list_at_once(
    runners: Callable[..., Any],
    server: UvicornThread,
    browser: Any,
    elsewhere: Callable[..., Any],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    elsewhere(runners, OrderSummaryProjection)
    base = f"http://127.0.0.1:{server.port}"
    actor_id = f"order-{uuid.uuid4().hex[:10]}"
    customer = f"Ann {uuid.uuid4().hex[:6]}"
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        page.goto(f"{base}/orders/")
        page.fill("#id_order_id", actor_id)
        page.fill("#id_customer", customer)
        page.click("text=Create and place")
        expect(page.locator("p.notice.good")).to_contain_text(f"Order placed. {actor_id}")
        expect(page.get_by_text("may be behind")).to_have_count(0)

        page.fill("#id_sku", "book-42")
        page.fill("#id_quantity", "2")
        page.fill("#id_price_cents", "1250")
        page.click("text=Add line")
        expect(page.locator("p.notice.good")).to_contain_text("Line added.")
        page.click("text=Pay 25.00")
        expect(page.locator("p.notice.good")).to_contain_text("Order paid.")

        # The list, opened right after the command, shows the order as it is now.
        page.click("text=← All orders")
        row = page.locator("tr", has=page.get_by_role("link", name=actor_id, exact=True))
        expect(row).to_have_count(1)
        expect(row).to_contain_text("paid")
        expect(row).to_contain_text(customer)
        expect(row.locator("td").nth(4)).to_have_text("25.00")

        # Filters: the status and part of the customer's name, then a status it has not.
        page.select_option("#filter_status", "paid")
        page.fill("#filter_customer", customer.split()[1])
        page.click("button:text('Filter')")
        expect(page).to_have_url(re.compile(r"/orders/\?status=paid&customer="))
        expect(page.locator("tbody tr")).to_have_count(1)
        expect(page.locator("nav.pages")).to_contain_text("Page 1 of 1 (1 order)")
        page.select_option("#filter_status", "shipped")
        page.click("button:text('Filter')")
        expect(page.get_by_text("No orders match these filters.")).to_be_visible()
    finally:
        page.screenshot(path=str(tmp_path / "orders-page.png"), full_page=True)
        page.close()
    assert (tmp_path / "orders-page.png").stat().st_size > 0
