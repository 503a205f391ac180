"""The example project's events page, through Django's test client, on the session's nats-server."""

from __future__ import annotations

import html
import uuid
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.test import Client

from aether_django.events import Event
from aether_django.store import get_event_store


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses (they all share one nats-server)."""
    return f"example-{uuid.uuid4().hex[:12]}"


def page(namespace: str, actor: str | None = None) -> str:
    query = {"namespace": namespace}
    if actor is not None:
        query["actor"] = actor
    return "/?" + urlencode(query)


def text(response: object) -> str:
    """The response body with HTML entities decoded, for looking for messages in it."""
    return html.unescape(response.content.decode())  # type: ignore[attr-defined]


def test_page_without_parameters_uses_the_orders_namespace(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert 'value="orders"' in response.content.decode()
    assert "Pick an actor id" in text(response)


def test_unknown_actor_has_no_events(client: Client, namespace: str) -> None:
    response = client.get(page(namespace, "nobody"))
    assert response.status_code == 200
    body = text(response)
    assert f"Events of <code>nobody</code> in namespace <code>{namespace}</code>" in body
    assert "No events yet" in body
    assert "Append event" in body


def test_posted_event_is_saved_and_listed(client: Client, namespace: str) -> None:
    url = page(namespace, "order-1")
    response = client.post(url, {"event_type": "OrderPlaced", "event_data": '{"amount": 3}'})
    assert response.status_code == 302
    query = parse_qs(urlsplit(response["Location"]).query)
    assert query == {"namespace": [namespace], "actor": ["order-1"], "saved": ["1"]}

    response = client.get(response["Location"])
    assert response.status_code == 200
    body = text(response)
    assert "Saved version 1 of order-1." in body
    assert "OrderPlaced" in body
    assert '{"amount": 3}' in body

    # A second event goes to the next version; the page lists both, in order.
    client.post(url, {"event_type": "OrderShipped", "event_data": ""})
    body = text(client.get(url))
    assert body.index("OrderPlaced") < body.index("OrderShipped")

    stored = get_event_store(namespace).get_events("order-1")
    assert [(e.version, e.event_type, dict(e.data)) for e in stored] == [
        (1, "OrderPlaced", {"amount": 3}),
        (2, "OrderShipped", {}),
    ]
    assert all(e.sequence is not None and str(e.sequence) in body for e in stored)


def test_the_actors_of_the_namespace_are_listed_as_links(client: Client, namespace: str) -> None:
    response = client.get(page(namespace))
    assert "No actors in namespace" in text(response)

    store = get_event_store(namespace)
    for actor in ("order-2", "order 1"):
        store.save_event(Event(event_type="OrderPlaced", actor_id=actor, version=1))
    body = client.get(page(namespace, "order-2")).content.decode()
    assert f'<a href="?namespace={namespace}&amp;actor=order+1">order 1</a>' in body
    assert "<strong>order-2</strong>" in body


def test_invalid_json_is_refused_with_a_message(client: Client, namespace: str) -> None:
    response = client.post(
        page(namespace, "order-1"), {"event_type": "OrderPlaced", "event_data": '{"amount": '}
    )
    assert response.status_code == 400
    body = text(response)
    assert "Data is not valid JSON" in body
    assert "The event was not saved" in body
    assert get_event_store(namespace).get_latest_version("order-1") == 0


def test_data_must_be_a_json_object(client: Client, namespace: str) -> None:
    response = client.post(
        page(namespace, "order-1"), {"event_type": "OrderPlaced", "event_data": "[1, 2]"}
    )
    assert response.status_code == 400
    assert "Data must be a JSON object" in text(response)


def test_event_type_is_required(client: Client, namespace: str) -> None:
    response = client.post(page(namespace, "order-1"), {"event_type": "", "event_data": "{}"})
    assert response.status_code == 400
    assert "This field is required." in text(response)


def test_invalid_namespace_shows_an_error(client: Client) -> None:
    response = client.post(
        page("not..valid", "order-1"), {"event_type": "OrderPlaced", "event_data": "{}"}
    )
    assert response.status_code == 400
    assert "Invalid namespace" in text(response)

    response = client.get(page("has space", "order-1"))
    assert response.status_code == 400
    assert "Invalid namespace" in text(response)


def test_invalid_actor_id_shows_an_error(client: Client, namespace: str) -> None:
    response = client.post(page(namespace, "bell\x07"), {"event_type": "Rang", "event_data": "{}"})
    assert response.status_code == 400
    assert "Actor id 'bell\\x07' contains non-printable characters" in text(response)


def test_stale_version_is_a_version_conflict(client: Client, namespace: str) -> None:
    store = get_event_store(namespace)
    store.save_event(Event(event_type="OrderPlaced", actor_id="order-1", version=5))

    response = client.post(
        page(namespace, "order-1"),
        {"event_type": "OrderPlaced", "event_data": "{}", "version": "5"},
    )
    assert response.status_code == 409
    body = text(response)
    assert "Version conflict" in body
    assert "already at version 5" in body
    assert [e.version for e in store.get_events("order-1")] == [5]

    # A greater version, even with a gap, is accepted.
    response = client.post(
        page(namespace, "order-1"),
        {"event_type": "OrderPaid", "event_data": "{}", "version": "7"},
    )
    assert response.status_code == 302
    assert [e.version for e in store.get_events("order-1")] == [5, 7]


def test_namespaces_that_share_a_stream_name_are_refused(client: Client, namespace: str) -> None:
    # "x.y" and "x__y" would both map to the stream "x__y_events"; the second spelling
    # is refused by name, so the page says the same whether or not "x.y" exists.
    dotted, underscored = f"{namespace}.a", f"{namespace}__a"
    get_event_store(dotted).save_event(Event(event_type="Made", actor_id="one", version=1))

    response = client.post(page(underscored, "one"), {"event_type": "Made", "event_data": "{}"})
    assert response.status_code == 400
    assert "two underscores" in text(response)


@pytest.mark.parametrize("saved", ["²", "9" * 5000, "0", "x"])
def test_a_saved_parameter_that_is_not_a_version_is_ignored(
    client: Client, namespace: str, saved: str
) -> None:
    response = client.get(page(namespace, "order-1") + "&" + urlencode({"saved": saved}))
    assert response.status_code == 200
    assert "Saved version" not in text(response)
