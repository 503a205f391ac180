"""URLs of the example project: the events page at ``/``, the orders page at
``/orders/`` and the Django admin."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("example_project.shop.urls")),
    path("admin/", admin.site.urls),
]
