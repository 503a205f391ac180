"""ASGI entry point of the example project (``daphne example_project.asgi:application``).

Only HTTP is routed for now; Channels' ProtocolTypeRouter is where WebSocket
routes will go.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

# Set Django up before anything imports models (Channels' routing may).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

# daphne does not serve static files; in development (DEBUG) Django does, as
# runserver would, so the admin has its styles.
http_app = ASGIStaticFilesHandler(django_asgi_app) if settings.DEBUG else django_asgi_app

application = ProtocolTypeRouter({"http": http_app})
