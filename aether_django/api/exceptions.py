"""API errors: DRF exception classes for aether's errors, and the handler that maps them.

Every error body has a machine-readable ``code``; nothing answers 500 for any input.
The handler formats aether's own errors itself and hands every other exception (DRF's
``NotFound``, ``ValidationError``, ``Throttled``, ...) to the project's
``REST_FRAMEWORK["EXCEPTION_HANDLER"]``, so a project's error envelope applies to
those as it does to the project's own views.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError, ValidationError
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler

from ..errors import (
    AetherError,
    InvalidEventError,
    InvalidNameError,
    NamespaceCollisionError,
    PayloadTooLargeError,
    ReplayError,
    SaveOutcomeUnknownError,
    StoreUnavailableError,
    VersionConflictError,
)


class AetherAPIException(APIException):
    """Base of the API's exceptions for aether's errors: formatted by aether's handler
    whatever the project's ``EXCEPTION_HANDLER``."""


class VersionConflict(AetherAPIException):
    """The actor already has the attempted version or a later one."""

    status_code = status.HTTP_409_CONFLICT
    default_code = "version_conflict"

    def __init__(self, error: VersionConflictError) -> None:
        super().__init__(str(error))
        self.error = error

    def fields(self) -> dict[str, Any]:
        """What a client needs to retry, beside ``detail``."""
        return {
            "actor_id": self.error.actor_id,
            "attempted_version": self.error.attempted_version,
            "current_version": self.error.current_version,
        }


class PayloadTooLarge(AetherAPIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The encoded event is larger than the configured limit."
    default_code = "payload_too_large"


class StoreUnavailable(AetherAPIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The event store did not answer in time; try again."
    default_code = "store_unavailable"


class OutcomeUnknown(AetherAPIException):
    """An append reached NATS but was never confirmed: it may or may not be stored."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = (
        "The event store did not confirm this write; it may have been stored. "
        "Repeat the request with the same event ids to find out."
    )
    default_code = "outcome_unknown"


class CorruptHistory(AetherAPIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "A stored event of this actor cannot be decoded."
    default_code = "corrupt_event"


class CannotApply(AetherAPIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "The namespace's aggregate class cannot apply a stored event of this actor."
    default_code = "cannot_apply"


class NamespaceCollision(AetherAPIException):
    # The detail names no other namespace: the caller may not be allowed to read it.
    status_code = status.HTTP_409_CONFLICT
    default_detail = (
        "This namespace's stream belongs to another namespace (one whose name differs "
        "only in '.' and '__', made before such names were refused); use another name."
    )
    default_code = "namespace_collision"


class DuplicateEventId(AetherAPIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = (
        "An event id of this request is the id of another stored event; event ids must be unique."
    )
    default_code = "duplicate_event_id"


class CommandRefused(AetherAPIException):
    """The aggregate's rules refused the command (a DomainError); nothing was stored."""

    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "The aggregate refused the command."
    default_code = "domain_error"


class CommandConflict(AetherAPIException):
    """Every attempt of the command met another writer of the actor; nothing was stored."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "Other writers changed the actor on every attempt; try again."
    default_code = "conflict"


class IdempotencyKeyReused(AetherAPIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = (
        "This Idempotency-Key was used with another command or other arguments for this "
        "actor; use a new key for a new command."
    )
    default_code = "idempotency_key_reused"


class ShardUnavailable(AetherAPIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "No cluster node served the actor's shard in time; try again."
    default_code = "shard_unavailable"


class CommandFailed(AetherAPIException):
    """The node that owns the actor could not run the command (its log says why)."""

    status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
    default_detail = "The command failed on the node that owns the actor."
    default_code = "command_failed"


class ForgetIncomplete(AetherAPIException):
    """forget() erased the key but a read model's database failed: POST again."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = (
        "The data key is erased, but the read models could not all be cleared: "
        "send the request again to finish."
    )
    default_code = "forget_incomplete"


def api_exception(exc: Exception) -> Exception:
    """``exc`` as a DRF exception where it is one of aether's errors or one of the
    request errors Django would answer with an HTML page; otherwise ``exc`` itself."""
    if isinstance(exc, VersionConflictError):
        return VersionConflict(exc)
    if isinstance(exc, PayloadTooLargeError):
        return PayloadTooLarge(str(exc))
    if isinstance(exc, InvalidNameError | InvalidEventError):
        return ValidationError({"detail": [str(exc)]}, code="invalid")
    if isinstance(exc, SaveOutcomeUnknownError):
        return OutcomeUnknown()
    if isinstance(exc, StoreUnavailableError):
        return StoreUnavailable()
    if isinstance(exc, NamespaceCollisionError):
        return NamespaceCollision()
    if isinstance(exc, ReplayError):
        return CorruptHistory(f"stored message {exc.sequence} cannot be decoded: {exc.reason}")
    if isinstance(exc, RequestDataTooBig):
        # The body is over DATA_UPLOAD_MAX_MEMORY_SIZE (DRF reads request.body for JSON
        # and forms); left to Django, it would answer its HTML 400 page.
        return PayloadTooLarge("The request body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE.")
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return ParseError(str(exc))
    if isinstance(exc, RecursionError):
        # JSON nested deeper than Python's recursion limit: the parser (or DRF's
        # JSONField, re-encoding a value that parsed) gives up with RecursionError.
        return ParseError("JSON parse error - nested too deeply")
    return exc


def format_exception(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's default handler, plus a ``code`` in every error body (and a version
    conflict's fields): how aether formats an error."""
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, VersionConflict):
        response.data = {"code": exc.default_code, "detail": str(exc.detail), **exc.fields()}
    elif isinstance(response.data, dict) and "code" not in response.data:
        if isinstance(exc, ValidationError):
            response.data = {"code": "invalid", **response.data}
        elif isinstance(exc, APIException):
            codes = exc.get_codes()
            response.data["code"] = codes if isinstance(codes, str) else "error"
    elif isinstance(response.data, list):
        response.data = {"code": "invalid", "errors": response.data}
    return response


def project_exception_handler() -> Any:
    """The project's ``REST_FRAMEWORK["EXCEPTION_HANDLER"]``, or None when that is DRF's
    default (or this module's handler), which aether's formatting stands in for."""
    handler = api_settings.EXCEPTION_HANDLER
    if handler in (exception_handler, aether_exception_handler):
        return None
    return handler


def aether_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """The API's exception handler: aether's errors formatted here, the rest by the
    project's ``EXCEPTION_HANDLER``.

    An aether error (anything under :class:`~aether_django.errors.AetherError`, and the
    API's own exceptions, :class:`AetherAPIException`) becomes its status and a body
    with a ``code``. Any other exception goes to the handler the project configured, after
    Django's request errors are made DRF exceptions; with DRF's default handler
    configured, aether formats those too, so every body has a ``code``.
    """
    ours = isinstance(exc, AetherError | AetherAPIException | RequestDataTooBig)
    exc = api_exception(exc)
    handler = None if ours else project_exception_handler()
    if handler is None:
        return format_exception(exc, context)
    response: Response | None = handler(exc, context)
    return response
