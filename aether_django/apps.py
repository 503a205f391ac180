"""Django app configuration for aether_django."""

from __future__ import annotations

from django.apps import AppConfig


class AetherConfig(AppConfig):
    name = "aether_django"
    verbose_name = "Aether"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the system checks.
        from . import checks  # noqa: F401
