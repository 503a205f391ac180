"""Django app configuration for aether_django."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class AetherConfig(AppConfig):
    name = "aether_django"
    verbose_name = "Aether"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the system checks.
        from . import checks  # noqa: F401

        # Import every installed app's aggregates module, as the admin does with
        # admin.py, so the registry and the checks see every aggregate class.
        autodiscover_modules("aggregates")
