"""The API's OpenAPI schema endpoint; needs drf-spectacular (the ``[api-schema]`` extra).

:mod:`aether_django.api.urls` mounts it at ``schema/`` when drf-spectacular is
installed, and leaves it out otherwise.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from ..conf import aether_settings
from ..extras import missing_extra
from .exceptions import aether_exception_handler

try:
    from drf_spectacular.views import SpectacularAPIView
except ModuleNotFoundError as exc:  # installed by the [api-schema] extra
    raise missing_extra(__name__, "drf-spectacular", "api-schema") from exc

__all__ = ["SchemaView"]


class SchemaView(SpectacularAPIView):
    """The OpenAPI schema: for authenticated callers, or anyone with API_SCHEMA_PUBLIC.

    It names every endpoint, parameter and error, which is a map of the API for whoever
    probes it; a project that publishes its API turns the setting on. The setting is
    read per request, so it wins over drf-spectacular's SERVE_PERMISSIONS.
    """

    def get_permissions(self) -> list[BasePermission]:
        if aether_settings.API_SCHEMA_PUBLIC:
            return [AllowAny()]
        return [IsAuthenticated()]

    def get_exception_handler(self) -> Any:
        return aether_exception_handler

    def handle_exception(self, exc: Exception) -> Response:
        # An error body is JSON like every other error of the API, not an OpenAPI
        # document in YAML (the renderer the schema's own negotiation would pick).
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return super().handle_exception(exc)
