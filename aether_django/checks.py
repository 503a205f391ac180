"""System checks for ``settings.AETHER``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register

from .conf import DEFAULTS


@register("aether_django")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E001: unknown AETHER keys (usually typos); E002: AETHER that is not a dict."""
    value = getattr(settings, "AETHER", {})
    if not isinstance(value, dict):
        return [
            Error(
                "settings.AETHER must be a dict.",
                id="aether_django.E002",
            )
        ]
    return [
        Error(
            f"Unknown setting AETHER[{key!r}].",
            hint="Known settings: " + ", ".join(sorted(DEFAULTS)),
            id="aether_django.E001",
        )
        for key in sorted(set(value) - set(DEFAULTS))
    ]
