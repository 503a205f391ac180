"""System checks for ``settings.AETHER`` and for the declared aggregate classes."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

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


@register("aether_django")
def check_aggregates(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E101-E106, W102: aggregate declarations that cannot work as written."""
    from .aggregates import all_aggregates, recorded_event_types

    messages: list[CheckMessage] = []
    by_namespace: dict[str, list[str]] = defaultdict(list)
    for model in all_aggregates():
        meta = model._meta
        if meta.namespace is None:
            messages.append(
                Error(
                    f"Aggregate {meta.label} has no Meta.namespace.",
                    hint="Set Meta.namespace, or Meta.abstract = True for a base class.",
                    obj=model,
                    id="aether_django.E101",
                )
            )
        else:
            by_namespace[meta.namespace].append(meta.label)
        for event_type in model._duplicate_handlers:
            messages.append(
                Error(
                    f"Aggregate {meta.label} has two handlers for {event_type!r}.",
                    obj=model,
                    id="aether_django.E103",
                )
            )
        for problem in meta.problems:
            messages.append(
                Error(f"Aggregate {meta.label}: {problem}.", obj=model, id="aether_django.E104")
            )
        for problem in meta.command_problems:
            messages.append(
                Error(
                    f"Aggregate {meta.label}: {problem}.",
                    hint="Declare as commands (@command or Meta.commands) only public "
                    "methods of your own that check the aggregate's rules and record events.",
                    obj=model,
                    id="aether_django.E106",
                )
            )
        recorded = recorded_event_types(model)
        if recorded is not None:
            upcast_from = {event_type for event_type, _ in model._upcasters}
            for event_type in sorted(set(model._handlers) - recorded - upcast_from):
                messages.append(
                    Warning(
                        f"Aggregate {meta.label} handles {event_type!r} but no command records it.",
                        hint="Remove the handler, or silence aether_django.W102 if the "
                        "event is recorded with a computed type.",
                        obj=model,
                        id="aether_django.W102",
                    )
                )
    for namespace, labels in sorted(by_namespace.items()):
        if len(labels) > 1:
            messages.append(
                Error(
                    f"Namespace {namespace!r} has several aggregate classes: "
                    + ", ".join(sorted(labels))
                    + ".",
                    hint="Give each aggregate class its own namespace.",
                    id="aether_django.E105",
                )
            )
    return messages


@register("aether_django")
def check_api_schema(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W201: the API's OpenAPI schema needs drf-spectacular's AutoSchema as DRF's default."""
    from django.apps import apps

    if not apps.is_installed("rest_framework"):
        return []
    configured = (getattr(settings, "REST_FRAMEWORK", None) or {}).get("DEFAULT_SCHEMA_CLASS")
    if configured == "drf_spectacular.openapi.AutoSchema":
        return []
    return [
        Warning(
            "The aether_django API's schema endpoint needs drf-spectacular.",
            hint='Set REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = '
            '"drf_spectacular.openapi.AutoSchema".',
            id="aether_django.W201",
        )
    ]
