"""Django app configuration for aether_django."""

from __future__ import annotations

import os

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class AetherConfig(AppConfig):
    name = "aether_django"
    verbose_name = "Aether"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        self._connect_process_hooks()

        # Registers the system checks.
        from . import checks  # noqa: F401

        # Import every installed app's aggregates module, as the admin does with
        # admin.py, so the registry and the checks see every aggregate class.
        autodiscover_modules("aggregates")
        # And every projections module, after the aggregates whose upcasters they use.
        autodiscover_modules("projections")

    @staticmethod
    def _connect_process_hooks() -> None:
        # Connected here, not when the packages are imported, so that importing a
        # store or a bus has no side effects (and store.jetstream needs no Django).
        from . import metrics
        from .bus import forget_event_bus, reset_event_bus, subscription_count
        from .conf import configure_tracing, on_reload
        from .privacy.keys import reset_key_ring
        from .runtime import reset_runtime
        from .store import reset_event_stores

        # What was built from the old AETHER settings goes: the bus first, while the
        # runtime its subscriptions run on is still there, then the stores, then the
        # runtime's connections.
        on_reload(reset_event_bus)
        on_reload(reset_event_stores)
        on_reload(reset_runtime)
        # Cached data keys and key buckets were read with the old master key and bucket.
        on_reload(reset_key_ring)
        # Tracing on or off as AETHER["TRACING"] says, now and whenever it changes.
        configure_tracing()
        on_reload(configure_tracing)
        metrics.BUS_SUBSCRIPTIONS.read = subscription_count
        # The parent's subscriptions live on the parent's loops; a child starts clean.
        os.register_at_fork(after_in_child=forget_event_bus)
