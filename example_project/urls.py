"""URLs of the example project: the events page at ``/``, the orders page at
``/orders/``, the live feed at ``/live/``, the Django admin and the API at
``/api/aether/``. The live feed's WebSocket (``ws/aether/``) is routed in asgi.py."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("example_project.shop.urls")),
    path("admin/", admin.site.urls),
    path("api/aether/", include("aether_django.api.urls")),
]
