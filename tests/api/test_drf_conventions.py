"""The API follows DRF's conventions: pagination classes a project can replace, throttle
scopes, the project's exception handler, and Swagger UI / Redoc pages for the schema."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.test import override_settings
from rest_framework.pagination import BasePagination
from rest_framework.response import Response

from aether_django.api.pagination import ActorCursorPagination, EventCursorPagination
from aether_django.store import get_event_store
from aether_django.testing.contract import ev

API = "/api/aether"


def events_url(ns: str, actor: str = "a") -> str:
    return f"{API}/namespaces/{ns}/actors/{actor}/events/"


def rest_framework(**options: Any) -> override_settings:
    return override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, **options})


def aether(**options: Any) -> override_settings:
    return override_settings(AETHER={**settings.AETHER, **options})


# --- pagination ----------------------------------------------------------------------------


class TwoEventsAPage(EventCursorPagination):
    """A project's event pages: two events unless ``size`` says otherwise."""

    limit_query_param = "size"
    default_limit = 2
    max_limit = 3


class TwoActorsAPage(ActorCursorPagination):
    default_limit = 2


def test_the_listings_page_with_drf_pagination_classes():
    assert issubclass(ActorCursorPagination, BasePagination)
    assert issubclass(EventCursorPagination, BasePagination)


def test_a_project_replaces_the_pagination_classes_by_setting(root, ns):
    store = get_event_store(ns)
    store.save_events([ev("a", v) for v in range(1, 6)])
    for actor_id in ("b", "c", "d"):
        store.save_event(ev(actor_id, 1))
    with aether(
        API_EVENT_PAGINATION_CLASS=f"{__name__}.TwoEventsAPage",
        API_ACTOR_PAGINATION_CLASS=f"{__name__}.TwoActorsAPage",
    ):
        body = root.get(events_url(ns)).json()
        assert [e["version"] for e in body["results"]] == [1, 2]
        assert "from_version=3" in body["next"]
        body = root.get(body["next"] + "&size=3").json()
        assert [e["version"] for e in body["results"]] == [3, 4, 5] and body["next"] is None
        refused = root.get(events_url(ns), {"size": 4})
        assert refused.status_code == 400 and "size" in refused.json()

        actors = root.get(f"{API}/namespaces/{ns}/actors/").json()
        assert [a["actor_id"] for a in actors["results"]] == ["a", "b"]
        rest = root.get(actors["next"]).json()
        assert [a["actor_id"] for a in rest["results"]] == ["c", "d"] and rest["next"] is None
    # Back to the defaults: 100 a page.
    assert len(root.get(events_url(ns)).json()["results"]) == 5


# --- throttling ----------------------------------------------------------------------------


@pytest.fixture
def fresh_cache():
    """Throttles count in the default cache; each test starts with no history."""
    cache.clear()
    yield
    cache.clear()


def test_no_throttling_unless_the_project_sets_rates(root, ns, fresh_cache):
    for _ in range(30):
        assert root.get(f"{API}/namespaces/{ns}/actors/a/version/").status_code == 200


def test_a_read_rate_answers_429_with_retry_after_and_leaves_writes_alone(callers, ns, fresh_cache):
    writer = callers["write_grant"]
    url = f"{API}/namespaces/{ns}/actors/a/version/"
    with rest_framework(DEFAULT_THROTTLE_RATES={"aether_read": "3/minute"}):
        assert [writer.get(url).status_code for _ in range(3)] == [200, 200, 200]
        throttled = writer.get(url)
        assert throttled.status_code == 429
        assert throttled.json()["code"] == "throttled"
        assert 0 < int(throttled["Retry-After"]) <= 60
        # Writes count in their own scope, which has no rate here.
        body = {"event_type": "E", "version": 1}
        assert writer.post(events_url(ns), body, format="json").status_code == 201
        # The limit is per user.
        assert callers["read_grant"].get(url).status_code == 200


def test_a_write_rate_limits_writes_only(callers, ns, fresh_cache):
    writer = callers["write_grant"]
    with rest_framework(DEFAULT_THROTTLE_RATES={"aether_write": "1/hour"}):
        first = writer.post(events_url(ns), {"event_type": "E", "version": 1}, format="json")
        assert first.status_code == 201
        second = writer.post(events_url(ns), {"event_type": "E", "version": 2}, format="json")
        assert second.status_code == 429 and int(second["Retry-After"]) > 60
        assert writer.get(events_url(ns)).status_code == 200


# --- the project's exception handler -------------------------------------------------------


def enveloping_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """A project's handler: every error in an envelope of its own."""
    from rest_framework.views import exception_handler

    response = exception_handler(exc, context)
    if response is not None:
        response.data = {"error": {"status": response.status_code, "body": response.data}}
    return response


def test_the_projects_exception_handler_formats_drf_errors(callers, ns):
    with rest_framework(EXCEPTION_HANDLER=f"{__name__}.enveloping_handler"):
        hidden = callers["no_grant"].get(f"{API}/namespaces/{ns}/")
        assert hidden.status_code == 404
        assert hidden.json() == {"error": {"status": 404, "body": {"detail": "no such namespace"}}}
        invalid = callers["superuser"].get(events_url(ns), {"limit": "0"})
        assert invalid.status_code == 400 and invalid.json()["error"]["body"]["limit"]
        anonymous = callers["anonymous"].get(f"{API}/namespaces/")
        assert anonymous.status_code == 403 and "error" in anonymous.json()


def test_aether_errors_keep_their_own_body_under_a_projects_handler(root, ns):
    body = {"event_type": "E", "version": 1}
    assert root.post(events_url(ns), body, format="json").status_code == 201
    with rest_framework(EXCEPTION_HANDLER=f"{__name__}.enveloping_handler"):
        conflict = root.post(events_url(ns), body, format="json")
        assert conflict.status_code == 409
        assert conflict.json() == {
            "code": "version_conflict",
            "detail": conflict.json()["detail"],
            "actor_id": "a",
            "attempted_version": 1,
            "current_version": 1,
        }
        big = {"event_type": "E", "version": 2, "data": {"x": "y" * (1024 * 1024 + 1)}}
        too_large = root.post(events_url(ns), big, format="json")
        assert too_large.status_code == 413
        assert too_large.json()["code"] == "payload_too_large"


def test_drfs_default_handler_configured_keeps_the_code_in_every_body(callers, ns):
    with rest_framework(EXCEPTION_HANDLER="rest_framework.views.exception_handler"):
        hidden = callers["no_grant"].get(f"{API}/namespaces/{ns}/")
        assert hidden.json() == {"code": "not_found", "detail": "no such namespace"}


# --- Swagger UI and Redoc ------------------------------------------------------------------


@pytest.mark.parametrize("page", ["schema/swagger-ui/", "schema/redoc/"])
def test_the_schema_pages_are_for_authenticated_callers(callers, page):
    anonymous = callers["anonymous"].get(f"{API}/{page}")
    assert anonymous.status_code in (401, 403)
    assert anonymous.json()["code"] == "not_authenticated"
    shown = callers["no_grant"].get(f"{API}/{page}")
    assert shown.status_code == 200
    assert shown["Content-Type"].startswith("text/html")
    assert f"{API}/schema/" in shown.content.decode()
    with aether(API_SCHEMA_PUBLIC=True):
        assert callers["anonymous"].get(f"{API}/{page}").status_code == 200
