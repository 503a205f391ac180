"""WebSocket routes: add ``websocket_urlpatterns`` to the project's ASGI router.

application = ProtocolTypeRouter({
    "http": get_asgi_application(),
    "websocket": AllowedHostsOriginValidator(
        AuthMiddlewareStack(URLRouter(aether_django.routing.websocket_urlpatterns))
    ),
})
"""

from django.urls import path

from .consumers import EventsConsumer

websocket_urlpatterns = [path("ws/aether/", EventsConsumer.as_asgi())]
