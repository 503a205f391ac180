"""URLs used by the runtime and aggregate tests: sync and async views that save events."""

from django.contrib import admin
from django.urls import include, path

from aether_django.api import commands

from . import views
from .aggregates.domain import Order

# The API serves the test Order's commands (tests/api/test_commands.py); "place" may
# start an order.
commands.register(Order, creating=["place"])

urlpatterns = [
    path("sync/<str:namespace>/<str:actor_id>/", views.sync_append),
    path("async/<str:namespace>/<str:actor_id>/", views.async_append),
    path("orders/<str:actor_id>/place/", views.order_place),
    path("orders/<str:actor_id>/add-line/", views.order_add_line),
    path("api/aether/", include("aether_django.api.urls")),
    path("admin/", admin.site.urls),
    path("aether/", include("aether_django.urls")),
]
