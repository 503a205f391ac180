"""Django middleware: a request id for every request, as the correlation id of the events it stores.

Add ``"aether_django.middleware.RequestIdMiddleware"`` to ``MIDDLEWARE`` and a
project's own views get what the API's views do: the ``X-Request-ID`` header (or a
fresh id) is the correlation and causation id of every event recorded while the
request is handled, and the response echoes it. The API's views use the middleware's
id when it ran, so one request has one id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from . import correlation

__all__ = ["REQUEST_ID_ATTRIBUTE", "REQUEST_ID_HEADER", "RequestIdMiddleware", "request_id_of"]

#: The header a request's id comes in and the response echoes.
REQUEST_ID_HEADER = "X-Request-ID"
#: The attribute of the request holding its id once the middleware ran.
REQUEST_ID_ATTRIBUTE = "aether_request_id"


def request_id_of(request: Any) -> str:
    """The request's id: the one the middleware gave it, else its usable
    ``X-Request-ID``, else a fresh one (kept on the request, so it stays the same)."""
    found = getattr(request, REQUEST_ID_ATTRIBUTE, None)
    if found:
        return str(found)
    made = correlation.request_id(request.META.get("HTTP_X_REQUEST_ID"))
    setattr(request, REQUEST_ID_ATTRIBUTE, made)
    return made


class RequestIdMiddleware:
    """Runs each request with its id as correlation id; echoes it in ``X-Request-ID``."""

    sync_capable = True
    async_capable = True

    def __init__(
        self,
        get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]],
    ) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        request_id = request_id_of(request)
        with correlation.use(request_id):
            response = self.get_response(request)
        assert isinstance(response, HttpResponseBase)
        response[REQUEST_ID_HEADER] = request_id
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        request_id = request_id_of(request)
        with correlation.use(request_id):
            response = await self.get_response(request)  # type: ignore[misc]
        assert isinstance(response, HttpResponseBase)
        response[REQUEST_ID_HEADER] = request_id
        return response
