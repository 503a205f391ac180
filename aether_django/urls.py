"""Operations URLs: ``path("aether/", include("aether_django.urls"))``."""

from django.urls import path

from . import views

app_name = "aether"

urlpatterns = [
    path("healthz/", views.healthz, name="healthz"),
    path("readyz/", views.readyz, name="readyz"),
    path("metrics/", views.metrics_view, name="metrics"),
]
