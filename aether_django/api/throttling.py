"""Rate limits for the API: DRF's scoped throttle, one scope for reads and one for writes.

Every API view applies :class:`AetherScopedRateThrottle` besides the project's
``DEFAULT_THROTTLE_CLASSES``. It does nothing until the project gives its scopes a
rate::

    REST_FRAMEWORK = {
        "DEFAULT_THROTTLE_RATES": {"aether_read": "600/minute", "aether_write": "60/minute"},
    }

A request over the rate answers 429 ``throttled`` with a ``Retry-After`` header.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

__all__ = ["READ_SCOPE", "WRITE_SCOPE", "AetherScopedRateThrottle"]

#: The scopes of ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` the API's requests count in.
READ_SCOPE = "aether_read"
WRITE_SCOPE = "aether_write"


class AetherScopedRateThrottle(ScopedRateThrottle):
    """DRF's ``ScopedRateThrottle`` with a scope per kind of request, off without a rate.

    The scope is the view's ``throttle_scope`` when it has one, otherwise
    ``read_scope`` for GET, HEAD and OPTIONS and ``write_scope`` for the others. Unlike
    DRF's class, a scope with no rate in ``DEFAULT_THROTTLE_RATES`` is not a
    configuration error but no limit, and the rates are read per request (DRF's
    class keeps the rates of the moment it was imported).
    """

    read_scope = READ_SCOPE
    write_scope = WRITE_SCOPE

    def get_scope(self, request: Request, view: APIView) -> str:
        scope = getattr(view, self.scope_attr, None)
        if scope:
            return str(scope)
        return self.read_scope if request.method in SAFE_METHODS else self.write_scope

    def get_rate(self) -> str | None:
        rates: dict[str, Any] = api_settings.DEFAULT_THROTTLE_RATES or {}
        rate = rates.get(self.scope) if self.scope else None
        return str(rate) if rate else None

    def allow_request(self, request: Request, view: APIView) -> bool:
        self.scope = self.get_scope(request, view)
        self.rate = self.get_rate()
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        # ScopedRateThrottle's own allow_request would look the scope up again.
        return super(ScopedRateThrottle, self).allow_request(request, view)
