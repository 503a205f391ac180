"""The API's OpenAPI schema and its pages; needs drf-spectacular (the ``[api-schema]`` extra).

:mod:`aether_django.api.urls` mounts the schema at ``schema/`` when drf-spectacular is
installed, and leaves it out otherwise; Swagger UI (``schema/swagger-ui/``) and Redoc
(``schema/redoc/``) also need ``"drf_spectacular"`` in ``INSTALLED_APPS`` (their
templates). All three are for the same callers: authenticated users, or anyone with
``AETHER["API_SCHEMA_PUBLIC"]``. Each page loads the schema from the ``schema`` route of
the namespace it is mounted under (``aether_api`` by default).
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from ..conf import aether_settings
from ..extras import missing_extra
from .exceptions import aether_exception_handler

try:
    from drf_spectacular.views import (
        SpectacularAPIView,
        SpectacularRedocView,
        SpectacularSwaggerView,
    )
except ModuleNotFoundError as exc:  # installed by the [api-schema] extra
    raise missing_extra(__name__, "drf-spectacular", "api-schema") from exc

__all__ = ["RedocView", "SchemaAccessMixin", "SchemaView", "SwaggerView"]


class SchemaAccessMixin:
    """Who may read the schema or a page about it, and JSON errors.

    The schema names every endpoint, parameter and error, which is a map of the API for
    whoever probes it; a project that publishes its API turns ``API_SCHEMA_PUBLIC`` on.
    The setting is read per request, so it wins over drf-spectacular's
    ``SERVE_PERMISSIONS``.
    """

    request: Any

    def get_permissions(self) -> list[BasePermission]:
        if aether_settings.API_SCHEMA_PUBLIC:
            return [AllowAny()]
        return [IsAuthenticated()]

    def get_exception_handler(self) -> Any:
        return aether_exception_handler

    def handle_exception(self, exc: Exception) -> Response:
        # An error body is JSON like every other error of the API, not an OpenAPI
        # document in YAML or a page's HTML (what the view's own negotiation picks).
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        response: Response = super().handle_exception(exc)  # type: ignore[misc]
        return response


class SchemaView(SchemaAccessMixin, SpectacularAPIView):
    """The OpenAPI schema."""


class _SchemaPage(SchemaAccessMixin):
    url_name: str

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # The schema is the "schema" route of the namespace this page is mounted under
        # (a project may include the API under an instance namespace of its own).
        match = getattr(request, "resolver_match", None)
        namespace = match.namespace if match is not None and match.namespace else "aether_api"
        self.url_name = f"{namespace}:schema"
        super().initial(request, *args, **kwargs)  # type: ignore[misc]


class SwaggerView(_SchemaPage, SpectacularSwaggerView):
    """Swagger UI for the API's schema (drf-spectacular's page)."""


class RedocView(_SchemaPage, SpectacularRedocView):
    """Redoc for the API's schema (drf-spectacular's page)."""
