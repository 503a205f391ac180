"""drf-spectacular's schema annotations, or stand-ins that do nothing without it.

The API's views and serializers describe themselves for the OpenAPI schema with
drf-spectacular's decorators. drf-spectacular comes with the ``[api-schema]`` extra;
without it these names are inert stand-ins, so the API still works (only its
``schema/`` endpoint, :mod:`aether_django.api.schema`, is not mounted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..extras import has_module

__all__ = [
    "SPECTACULAR",
    "AutoSchema",
    "OpenApiParameter",
    "OpenApiResponse",
    "OpenApiSerializerExtension",
    "OpenApiTypes",
    "PolymorphicProxySerializer",
    "extend_schema",
    "extend_schema_field",
]

#: Whether drf-spectacular is installed (the ``[api-schema]`` extra).
SPECTACULAR = has_module("drf_spectacular")

_T = TypeVar("_T")

if TYPE_CHECKING or SPECTACULAR:
    from drf_spectacular.extensions import OpenApiSerializerExtension
    from drf_spectacular.openapi import AutoSchema
    from drf_spectacular.types import OpenApiTypes
    from drf_spectacular.utils import (
        OpenApiParameter,
        OpenApiResponse,
        PolymorphicProxySerializer,
        extend_schema,
        extend_schema_field,
    )
else:
    from rest_framework.schemas.inspectors import DefaultSchema as AutoSchema

    class _Described:
        """Keeps the arguments of a schema description nobody will render."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.args = args
            self.kwargs = kwargs

    class OpenApiParameter(_Described):
        pass

    class OpenApiResponse(_Described):
        pass

    class PolymorphicProxySerializer(_Described):
        pass

    class OpenApiSerializerExtension:
        """Without drf-spectacular, nobody looks the extensions up."""

    class OpenApiTypes:
        INT = int
        STR = str

    def _decorator(*_args: Any, **_kwargs: Any) -> Callable[[_T], _T]:
        def unchanged(target: _T) -> _T:
            return target

        return unchanged

    extend_schema = _decorator
    extend_schema_field = _decorator
