"""Swagger UI and Redoc pages for the API's OpenAPI schema (drf-spectacular's views).

Needs drf-spectacular: :mod:`aether_django.api.urls` imports this module only when
drf-spectacular is installed, and mounts ``schema/swagger-ui/`` and ``schema/redoc/``.
The pages are for the same callers as the schema itself: authenticated users, or
anyone with ``AETHER["API_SCHEMA_PUBLIC"]``. Each page loads the schema from the
``schema`` route of the namespace it is mounted under (``aether_api`` by default).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from ..conf import aether_settings
from .exceptions import aether_exception_handler

__all__ = ["RedocView", "SchemaPageMixin", "SwaggerView"]


class SchemaPageMixin:
    """Who may see a page about the schema, and JSON errors instead of HTML ones.

    ``API_SCHEMA_PUBLIC`` is read per request, so it wins over drf-spectacular's
    ``SERVE_PERMISSIONS``, as for the schema itself.
    """

    request: Any
    url_name: str

    def get_permissions(self) -> list[BasePermission]:
        if aether_settings.API_SCHEMA_PUBLIC:
            return [AllowAny()]
        return [IsAuthenticated()]

    def get_exception_handler(self) -> Any:
        return aether_exception_handler

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # The schema is the "schema" route of the namespace this page is mounted under
        # (a project may include the API under an instance namespace of its own).
        match = getattr(request, "resolver_match", None)
        namespace = match.namespace if match is not None and match.namespace else "aether_api"
        self.url_name = f"{namespace}:schema"
        super().initial(request, *args, **kwargs)  # type: ignore[misc]

    def handle_exception(self, exc: Exception) -> Response:
        # An error is a JSON body like every other error of the API, not a template
        # rendered by the page's HTML renderer.
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        response: Response = super().handle_exception(exc)  # type: ignore[misc]
        return response


class SwaggerView(SchemaPageMixin, SpectacularSwaggerView):
    """Swagger UI for the API's schema (drf-spectacular's page)."""


class RedocView(SchemaPageMixin, SpectacularRedocView):
    """Redoc for the API's schema (drf-spectacular's page)."""
