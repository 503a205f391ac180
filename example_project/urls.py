"""URLs of the example project: the events page at ``/``, the orders page at
``/orders/``, the live feed at ``/live/``, the Django admin, the API at
``/api/aether/`` and aether_django's health, readiness and metrics endpoints at
``/aether/healthz/``, ``/aether/readyz/`` and ``/aether/metrics/`` (docs/operations.md),
and the shop's order list (its read model) at ``/api/shop/orders/``.
The live feed's WebSocket (``ws/aether/``) is routed in asgi.py."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("example_project.shop.urls")),
    path("admin/", admin.site.urls),
    path("api/aether/", include("aether_django.api.urls")),
    path("api/shop/", include(("example_project.shop.api", "shop_api"))),
    # Load balancers and compose's healthcheck call readyz; Prometheus scrapes metrics.
    path("aether/", include("aether_django.urls")),
]
