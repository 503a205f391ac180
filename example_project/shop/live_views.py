"""The live feed page: a namespace's events as they are saved, over the ``ws/aether/`` WebSocket.

The page itself is plain HTML and JavaScript (templates/shop/live.html). It opens a
WebSocket to ``/ws/aether/`` (the session's user; see docs/websocket.md), subscribes
to the namespace from "new" (or "all"), shows each event as it arrives and, after a
drop, subscribes again from the last sequence it showed + 1, so nothing is missed
and nothing is shown twice. Its append form goes through the API
(``POST /api/aether/namespaces/{ns}/actors/{actor}/events/`` with the CSRF token),
so NamespaceGrants apply to writing as they do to reading.

The WebSocket authenticates with the session cookie, so the page is for logged-in
users only; others are sent to the admin's login page.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie

from aether_django.access import access_for
from aether_django.errors import AetherError, InvalidNameError
from aether_django.names import validate_namespace
from aether_django.store import get_event_store

from .views import DEFAULT_NAMESPACE, _Problems

#: Where aether_django.routing mounts the consumer (see example_project/asgi.py).
WEBSOCKET_PATH = "/ws/aether/"
#: Rows the page keeps; older ones are dropped from the table (not from the store).
MAX_ROWS = 500


@login_required(login_url="admin:login")
@ensure_csrf_cookie  # the append form's API call needs the CSRF cookie
def live_page(request: HttpRequest) -> HttpResponse:
    """Follow ``?namespace=`` (default "orders") live; ``?all=1`` starts from its first event."""
    namespace = request.GET.get("namespace", "").strip() or DEFAULT_NAMESPACE
    from_all = request.GET.get("all") == "1"
    problems = _Problems()
    valid = True
    try:
        validate_namespace(namespace)
    except InvalidNameError as exc:
        problems.add_store_error(exc)
        valid = False

    # Where the stream stood when the page was made: after a drop before the first
    # event arrived, the page resumes from here instead of from "new" again (which
    # would skip what was saved during the drop).
    last_sequence: int | None = None
    if valid and access_for(request).can_read(namespace):
        try:
            info = get_event_store(namespace).get_info()
        except AetherError as exc:
            # The page still tries the WebSocket, which reports its own errors.
            problems.add_store_error(exc)
        except NotImplementedError:  # a store without figures: resume from "new"
            pass
        else:
            last_sequence = info.last_sequence if info is not None else 0

    config: dict[str, Any] = {
        "namespace": namespace,
        "from": "all" if from_all else "new",
        "last_sequence": last_sequence,
        "websocket_path": WEBSOCKET_PATH,
        "api_namespaces": reverse("aether_api:namespaces"),
        "csrf_token": get_token(request),
        "max_rows": MAX_ROWS,
        "login_url": reverse("admin:login") + "?" + urlencode({"next": request.get_full_path()}),
    }
    context = {
        "page": "live",
        "namespace": namespace,
        "from_all": from_all,
        "valid": valid,
        "problems": problems.messages,
        "config": config,
        "events_url": reverse("shop:events"),
        "max_rows": MAX_ROWS,
    }
    return render(request, "shop/live.html", context, status=problems.status)
