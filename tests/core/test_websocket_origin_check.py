"""System check W401: aether's WebSocket routes served with no origin validator in front.

Without one, a page on any other site can open a socket with the user's session cookie
(cross-site WebSocket hijacking). The applications below are built the way a project's
asgi.py builds them; ASGI_APPLICATION names them by dotted path.
"""

from __future__ import annotations

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator, OriginValidator
from django.core.asgi import get_asgi_application
from django.core.checks import run_checks
from django.test import override_settings
from django.urls import path

from aether_django.routing import websocket_urlpatterns

http = get_asgi_application()

#: The routes with no validator: the warning's case.
UNGUARDED = ProtocolTypeRouter(
    {"http": http, "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns))}
)
#: A validator inside the auth middleware, around a nested router, still guards them.
GUARDED_INSIDE = ProtocolTypeRouter(
    {
        "http": http,
        "websocket": AuthMiddlewareStack(
            OriginValidator(
                URLRouter([path("live/", URLRouter(websocket_urlpatterns))]),
                ["https://shop.example"],
            )
        ),
    }
)
#: A validator around some routes only: aether's, nested beside them, are not guarded.
GUARDED_ELSEWHERE = ProtocolTypeRouter(
    {
        "websocket": AuthMiddlewareStack(
            URLRouter(
                [
                    path("chat/", AllowedHostsOriginValidator(URLRouter([]))),
                    path("live/", URLRouter(websocket_urlpatterns)),
                ]
            )
        ),
    }
)
#: No WebSockets at all.
HTTP_ONLY = ProtocolTypeRouter({"http": http})


def origin_warnings() -> list[str]:
    return [m.msg for m in run_checks() if m.id == "aether_django.W401"]


@override_settings(ASGI_APPLICATION=f"{__name__}.UNGUARDED")
def test_websocket_routes_without_an_origin_validator_warn():
    (message,) = origin_warnings()
    assert "hijacking" in message and "EventsConsumer" in message


@override_settings(ASGI_APPLICATION=f"{__name__}.GUARDED_ELSEWHERE")
def test_a_validator_around_other_routes_only_warns():
    assert len(origin_warnings()) == 1


def test_the_test_projects_application_with_its_validator_passes():
    with override_settings(ASGI_APPLICATION="tests.asgi.application"):
        assert origin_warnings() == []
    with override_settings(ASGI_APPLICATION=f"{__name__}.GUARDED_INSIDE"):
        assert origin_warnings() == []


def test_no_warning_without_aether_websocket_routes_or_an_asgi_application():
    with override_settings(ASGI_APPLICATION=f"{__name__}.HTTP_ONLY"):
        assert origin_warnings() == []
    with override_settings(ASGI_APPLICATION=None):
        assert origin_warnings() == []
