"""ASGI entry point of the example project.

``python3 dev.py demo`` serves it with uvicorn::

    python -m uvicorn example_project.asgi:application --host 127.0.0.1 --port 8000 \
        --ws websockets --ws-per-message-deflate false

HTTP goes to Django; WebSockets on ``ws/aether/`` go to aether_django's live
subscriptions (docs/websocket.md), with the session's user (AuthMiddlewareStack)
and only from origins in ALLOWED_HOSTS (AllowedHostsOriginValidator).
"""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

# Set Django up before anything imports models (Channels' auth and the consumers do).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

import aether_django.routing  # noqa: E402

# uvicorn does not serve static files; in development (DEBUG) Django does, as
# runserver would, so the admin has its styles.
http_app = ASGIStaticFilesHandler(django_asgi_app) if settings.DEBUG else django_asgi_app

application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(aether_django.routing.websocket_urlpatterns))
        ),
    }
)

# Django imports the URLconf, and with it every view, serializer and schema module,
# on the first request; import it now so that it is frozen below with the rest.
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns  # noqa: B018

# Everything loaded so far (Django, the apps, their modules) lives as long as the
# process: freezing it keeps the cyclic garbage collector from walking it again on
# every full collection, which with hundreds of open WebSockets otherwise pauses
# the process for tens of milliseconds at a time (docs/deployment.md).
gc.freeze()
gc.set_threshold(700, 10, 100)
