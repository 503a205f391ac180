"""API errors: DRF exception classes for aether's errors, and the handler that maps them.

Every error body has a machine-readable ``code``; nothing answers 500 for any input.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError, ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler

from ..errors import (
    InvalidEventError,
    InvalidNameError,
    NamespaceCollisionError,
    PayloadTooLargeError,
    ReplayError,
    SaveOutcomeUnknownError,
    StoreUnavailableError,
    VersionConflictError,
)


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The encoded event is larger than the configured limit."
    default_code = "payload_too_large"


class StoreUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The event store did not answer in time; try again."
    default_code = "store_unavailable"


class OutcomeUnknown(APIException):
    """An append reached NATS but was never confirmed: it may or may not be stored."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = (
        "The event store did not confirm this write; it may have been stored. "
        "Repeat the request with the same event ids to find out."
    )
    default_code = "outcome_unknown"


class CorruptHistory(APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "A stored event of this actor cannot be decoded."
    default_code = "corrupt_event"


class CannotApply(APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "The namespace's aggregate class cannot apply a stored event of this actor."
    default_code = "cannot_apply"


class NamespaceCollision(APIException):
    # The detail names no other namespace: the caller may not be allowed to read it.
    status_code = status.HTTP_409_CONFLICT
    default_detail = (
        "This namespace's stream belongs to another namespace (one whose name differs "
        "only in '.' and '__', made before such names were refused); use another name."
    )
    default_code = "namespace_collision"


class DuplicateEventId(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = (
        "An event id of this request is the id of another stored event; event ids must be unique."
    )
    default_code = "duplicate_event_id"


def aether_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus aether's errors, and a ``code`` in every error body."""
    if isinstance(exc, VersionConflictError):
        return Response(
            {
                "code": "version_conflict",
                "detail": str(exc),
                "actor_id": exc.actor_id,
                "attempted_version": exc.attempted_version,
                "current_version": exc.current_version,
            },
            status=status.HTTP_409_CONFLICT,
        )
    if isinstance(exc, PayloadTooLargeError):
        exc = PayloadTooLarge(str(exc))
    elif isinstance(exc, InvalidNameError | InvalidEventError):
        exc = ValidationError({"detail": [str(exc)]}, code="invalid")
    elif isinstance(exc, SaveOutcomeUnknownError):
        exc = OutcomeUnknown()
    elif isinstance(exc, StoreUnavailableError):
        exc = StoreUnavailable()
    elif isinstance(exc, NamespaceCollisionError):
        exc = NamespaceCollision()
    elif isinstance(exc, ReplayError):
        exc = CorruptHistory(f"stored message {exc.sequence} cannot be decoded: {exc.reason}")
    elif isinstance(exc, RequestDataTooBig):
        # The body is over DATA_UPLOAD_MAX_MEMORY_SIZE (DRF reads request.body for JSON
        # and forms); left to Django, it would answer its HTML 400 page.
        exc = PayloadTooLarge("The request body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE.")
    elif isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        exc = ParseError(str(exc))
    elif isinstance(exc, RecursionError):
        # JSON nested deeper than Python's recursion limit: the parser (or DRF's
        # JSONField, re-encoding a value that parsed) gives up with RecursionError.
        exc = ParseError("JSON parse error - nested too deeply")
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(response.data, dict) and "code" not in response.data:
        if isinstance(exc, ValidationError):
            response.data = {"code": "invalid", **response.data}
        elif isinstance(exc, APIException):
            codes = exc.get_codes()
            response.data["code"] = codes if isinstance(codes, str) else "error"
    elif isinstance(response.data, list):
        response.data = {"code": "invalid", "errors": response.data}
    return response
