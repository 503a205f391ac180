"""The live feed page in a real browser: headless Chromium (Playwright) against uvicorn.

uvicorn serves example_project.asgi (HTTP and the ``ws/aether/`` WebSocket) in a thread
of this process, so it shares the test database; the example project's URLs and
templates come from tests/e2e/conftest.py. Skipped when no Chromium is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.test import Client

from aether_django.events import Event
from aether_django.store import get_event_store
from aether_django.testing import find_free_port
from aether_django.testing.contract import ev

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: How long the page may take to show something. Generous: benchmarks may share the machine.
WAIT_MS = 60_000

T = TypeVar("T")


def find_chromium() -> str | None:
    """A Chromium binary, or None."""
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if os.access(candidate, os.X_OK):
            return candidate
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


class UvicornThread:
    """uvicorn serving an ASGI application in a thread; it can be stopped and started again
    on the same port (to drop the page's WebSocket)."""

    def __init__(self, application: Any, port: int) -> None:
        self.application = application
        self.port = port
        self.server: Any = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(
            self.application,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            ws="websockets",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(30)
            assert not self.thread.is_alive(), "uvicorn did not stop"
        self.server = self.thread = None


@pytest.fixture
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(
            "no Chromium binary: looked for /usr/bin/chromium, /usr/bin/chromium-browser and "
            "chromium or chromium-browser on PATH (install it, e.g. apt-get install chromium)"
        )
    return path


@pytest.fixture
def server() -> Iterator[UvicornThread]:
    from example_project.asgi import application

    running = UvicornThread(application, find_free_port())
    running.start()
    yield running
    running.stop()


def login(*grants: str) -> str:
    """The session id of a new user, logged in: a superuser, or one with read grants."""
    from django.contrib.auth.models import User

    from aether_django.models import NamespaceGrant

    name = f"u{uuid.uuid4().hex[:8]}"
    if grants:
        user = User.objects.create_user(name, password="pw")
        for pattern in grants:
            NamespaceGrant.objects.create(user=user, pattern=pattern, can_read=True)
    else:
        user = User.objects.create_superuser(name, password="pw")
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


@pytest.fixture
def browser(chromium_path: str) -> Iterator[Any]:
    """Headless Chromium, driven by Playwright's sync API."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def open_page(browser: Any, base: str, session_id: str) -> tuple[Any, Any]:
    """A browser context logged in with ``session_id``, and a page in it."""
    context = browser.new_context()
    context.add_cookies([{"name": "sessionid", "value": session_id, "url": base}])
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    return context, page


@pytest.fixture
def elsewhere() -> Iterator[Callable[..., Any]]:
    """Run a call in another thread: once Playwright's sync API has started, this thread
    has a running event loop, where the blocking store API and the ORM refuse to run."""
    with ThreadPoolExecutor(1) as pool:

        def run(function: Callable[..., T], *args: Any) -> T:
            return pool.submit(function, *args).result(60)

        yield run


def save(namespace: str, *events: Event) -> list[Event]:
    return get_event_store(namespace).save_events(list(events))


def test_the_live_page_follows_events_resumes_after_a_drop_and_notices_a_logout(
    server: UvicornThread,
    browser: Any,
    elsewhere: Callable[..., Any],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    namespace = f"e2e-{uuid.uuid4().hex[:10]}"
    # Not shown: the page starts at "new".
    before = elsewhere(save, namespace, ev("order-0", 1, "Before"))[0]
    session_id = elsewhere(login)  # a superuser
    base = f"http://127.0.0.1:{server.port}"
    live_url = f"{base}/live/?namespace={namespace}"

    # Not logged in: sent to the admin's login page, which comes back here.
    anonymous = browser.new_page()
    anonymous.goto(live_url)
    assert "/admin/login/?next=/live/" in anonymous.url
    anonymous.close()

    context, page = open_page(browser, base, session_id)
    try:
        page.goto(live_url)
        status = page.locator("#live-status")
        rows = page.locator("#live-events tbody tr")
        expect(status).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        expect(status).to_contain_text(f"following {namespace} from new events")

        # An event saved by someone else appears, with everything the table shows.
        placed = elsewhere(save, namespace, ev("order-1", 1, "OrderPlaced", customer="Ann"))[0]
        expect(rows).to_have_count(1, timeout=WAIT_MS)
        first = rows.first
        expect(first).to_have_attribute("data-sequence", str(placed.sequence))
        expect(first).to_contain_text("order-1")
        expect(first).to_contain_text("OrderPlaced")
        expect(first).to_contain_text('{"customer":"Ann"}')
        expect(first.locator("td").nth(3)).to_have_text("1")  # the version
        expect(first.locator("td").nth(5)).to_have_text(re.compile(r"^\d{4}-\d\d-\d\dT"))
        assert str(before.sequence) not in [r.get_attribute("data-sequence") for r in rows.all()]

        # The append form saves through the API; the event arrives on the socket.
        page.fill("#append-actor", "order-1")
        page.fill("#append-type", "LineAdded")
        page.fill("#append-data", '{"sku": "book-42", "quantity": 2}')
        page.click("#append-button")
        result = page.locator("#append-result")
        expect(result).to_contain_text("Saved LineAdded as version 2 of order-1", timeout=WAIT_MS)
        expect(rows).to_have_count(2, timeout=WAIT_MS)
        expect(rows.first).to_contain_text("LineAdded")
        expect(rows.first).to_contain_text('{"sku":"book-42","quantity":2}')
        # Data that is not a JSON object is refused before anything is sent.
        page.fill("#append-data", "[1, 2]")
        page.click("#append-button")
        expect(result).to_contain_text("Data must be a JSON object")

        # The server goes away: the page says so and keeps trying; events saved meanwhile
        # arrive once it is back, in order, none twice.
        server.stop()
        expect(status).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
        expect(page.locator("#live-log")).to_contain_text("closed with code")
        missed = elsewhere(
            save, namespace, ev("order-2", 1, "OrderPlaced"), ev("order-2", 2, "OrderPaid")
        )
        server.start()
        expect(status).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        expect(rows).to_have_count(4, timeout=WAIT_MS)
        later = elsewhere(save, namespace, ev("order-3", 1, "OrderShipped"))
        expect(rows).to_have_count(5, timeout=WAIT_MS)
        shown = [int(r.get_attribute("data-sequence") or 0) for r in rows.all()]
        expected = [placed.sequence, placed.sequence + 1] + [e.sequence for e in missed + later]
        assert shown == sorted(expected, reverse=True)  # newest first, none twice
        expect(status).to_contain_text(f"from sequence {placed.sequence + 2}")
        expect(page.locator("#live-log")).to_contain_text(
            f"Subscribed again from sequence {placed.sequence + 2}"
        )

        # The session ends (the cookie is gone) and the socket drops: the server refuses
        # the new handshake (HTTP 403), and the page says why and stops trying.
        context.clear_cookies()
        server.stop()
        server.start()
        expect(status).to_have_attribute("data-state", "error", timeout=WAIT_MS)
        expect(status).to_contain_text("you are not logged in any more")
        expect(status.get_by_role("link", name="Log in again")).to_have_attribute(
            "href", f"/admin/login/?next=%2Flive%2F%3Fnamespace%3D{namespace}"
        )
    finally:
        page.screenshot(path=str(tmp_path / "live-page.png"), full_page=True)
        context.close()
    assert (tmp_path / "live-page.png").stat().st_size > 0


def test_a_namespace_the_user_may_not_read_is_refused_on_the_page(
    server: UvicornThread, browser: Any, elsewhere: Callable[..., Any], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    namespace = f"e2e-{uuid.uuid4().hex[:10]}"
    elsewhere(save, namespace, ev("secret", 1))
    session_id = elsewhere(login, f"{namespace}-mine")  # a grant for another namespace only
    base = f"http://127.0.0.1:{server.port}"
    context, page = open_page(browser, base, session_id)
    try:
        page.goto(f"{base}/live/?namespace={namespace}")
        status = page.locator("#live-status")
        expect(status).to_have_attribute("data-state", "error", timeout=WAIT_MS)
        expect(status).to_contain_text(f"Not following {namespace}: no such namespace (not_found)")
        expect(page.locator("#live-log")).to_contain_text("Error not_found")
        expect(page.locator("#live-events tbody tr")).to_have_count(0)
    finally:
        page.screenshot(path=str(tmp_path / "refused.png"), full_page=True)
        context.close()
