"""The example project's live feed page (the view, its links) and the WebSocket routes of
example_project/asgi.py; tests/e2e/test_live_page.py drives the page in a real browser."""

from __future__ import annotations

import html
import importlib.util
import json
import re
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client, override_settings

from aether_django.store import get_event_store
from aether_django.testing.contract import ev


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses (they all share one nats-server)."""
    return f"live-{uuid.uuid4().hex[:12]}"


def make_user(*patterns: str, superuser: bool = False):
    from django.contrib.auth.models import User

    from aether_django.models import NamespaceGrant

    name = f"u{uuid.uuid4().hex[:8]}"
    if superuser:
        return User.objects.create_superuser(name, password="pw")
    user = User.objects.create_user(name, password="pw")
    for pattern in patterns:
        NamespaceGrant.objects.create(user=user, pattern=pattern, can_read=True, can_write=True)
    return user


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def config(response) -> dict[str, Any]:
    """The page's JSON configuration (the json_script element)."""
    match = re.search(
        r'<script id="live-config" type="application/json">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    assert match, "no live-config on the page"
    loaded: dict[str, Any] = json.loads(match.group(1))
    return loaded


@pytest.mark.django_db
def test_visitors_who_are_not_logged_in_are_sent_to_the_admin_login(client: Client) -> None:
    response = client.get("/live/", {"namespace": "orders"})
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/live/%3Fnamespace%3Dorders"


@pytest.mark.django_db
def test_the_page_subscribes_from_new_or_all(namespace: str) -> None:
    client = logged_in(make_user(superuser=True))
    response = client.get("/live/", {"namespace": namespace})
    assert response.status_code == 200
    body = html.unescape(response.content.decode())
    assert f"Events in <code>{namespace}</code>, newest first" in body
    assert 'id="from-all" name="all" value="1">' in body  # not checked
    cfg = config(response)
    assert cfg["namespace"] == namespace and cfg["from"] == "new"
    assert cfg["websocket_path"] == "/ws/aether/"
    assert cfg["api_namespaces"] == "/api/aether/namespaces/"
    assert cfg["csrf_token"] and "csrftoken" in response.cookies
    assert cfg["last_sequence"] == 0  # nothing saved in this namespace yet

    response = client.get("/live/", {"namespace": namespace, "all": "1"})
    assert config(response)["from"] == "all"
    assert 'id="from-all" name="all" value="1" checked>' in response.content.decode()


@pytest.mark.django_db
def test_the_page_knows_where_the_stream_stood(namespace: str) -> None:
    stored = get_event_store(namespace).save_events([ev("a", 1), ev("a", 2)])
    client = logged_in(make_user(namespace))
    assert config(client.get("/live/", {"namespace": namespace}))["last_sequence"] == (
        stored[-1].sequence
    )


@pytest.mark.django_db
def test_a_namespace_without_a_grant_reveals_nothing(namespace: str) -> None:
    get_event_store(namespace).save_event(ev("a", 1))
    client = logged_in(make_user(f"{namespace}-other"))
    response = client.get("/live/", {"namespace": namespace})
    assert response.status_code == 200
    # The WebSocket answers not_found; the page does not read the stream either.
    assert config(response)["last_sequence"] is None


@pytest.mark.django_db
def test_an_invalid_namespace_is_400_without_a_feed() -> None:
    client = logged_in(make_user(superuser=True))
    response = client.get("/live/", {"namespace": "bad..name"})
    assert response.status_code == 400
    assert "invalid namespace" in html.unescape(response.content.decode()).lower()
    assert "live-config" not in response.content.decode()


@pytest.mark.django_db
def test_the_other_pages_link_to_the_live_page(client: Client) -> None:
    assert '<a href="/live/">live</a>' in client.get("/").content.decode()
    assert '<a href="/live/">live</a>' in client.get("/orders/").content.decode()
    body = logged_in(make_user(superuser=True)).get("/live/").content.decode()
    assert '<a href="/live/" aria-current="page">live</a>' in body
    assert '<a href="/">events</a>' in body


# --- example_project/asgi.py routes the WebSockets -------------------------------------


async def session_cookie() -> str:
    def login() -> str:
        client = logged_in(make_user(superuser=True))
        return f"sessionid={client.cookies['sessionid'].value}"

    return await sync_to_async(login)()


@pytest.mark.django_db(transaction=True)
async def test_the_example_asgi_application_serves_the_live_subscriptions(namespace) -> None:
    from example_project.asgi import application

    store = get_event_store(namespace)
    await store.asave_event(ev("warm", 1))
    cookie = await session_cookie()
    ws = WebsocketCommunicator(
        application,
        "/ws/aether/",
        headers=[(b"cookie", cookie.encode()), (b"origin", b"http://testserver")],
    )
    connected, _ = await ws.connect()
    assert connected
    await ws.send_to(json.dumps({"action": "subscribe", "id": "s", "namespace": namespace}))
    assert json.loads(await ws.receive_from(5)) == {"type": "subscribed", "id": "s"}
    saved = await store.asave_event(ev("a", 1))
    frame = json.loads(await ws.receive_from(5))
    assert frame["type"] == "event" and frame["sequence"] == saved.sequence
    await ws.disconnect()


def example_application_built_with_current_settings() -> Any:
    """example_project.asgi's application, built anew: the origin check reads
    ALLOWED_HOSTS when the application is built."""
    import example_project.asgi

    spec = importlib.util.spec_from_file_location(
        "example_asgi_rebuilt", example_project.asgi.__file__
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.application


@pytest.mark.django_db(transaction=True)
async def test_the_example_asgi_application_checks_origin_and_login() -> None:
    cookie = (await session_cookie()).encode()
    with override_settings(ALLOWED_HOSTS=["127.0.0.1", "localhost"], DEBUG=False):
        application = example_application_built_with_current_settings()
    for origin in (b"http://elsewhere.example", None):  # a foreign origin, or none at all
        headers = [(b"cookie", cookie)] + ([(b"origin", origin)] if origin else [])
        refused = WebsocketCommunicator(application, "/ws/aether/", headers=headers)
        connected, _ = await refused.connect()
        assert not connected, origin
    same_site = WebsocketCommunicator(
        application,
        "/ws/aether/",
        headers=[(b"cookie", cookie), (b"origin", b"http://127.0.0.1:8000")],
    )
    connected, _ = await same_site.connect()
    assert connected
    await same_site.disconnect()
    anonymous = WebsocketCommunicator(
        application, "/ws/aether/", headers=[(b"origin", b"http://127.0.0.1:8000")]
    )
    connected, code = await anonymous.connect()
    assert not connected and code == 4401
