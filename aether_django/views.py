"""Operations endpoints: liveness, readiness and Prometheus metrics.

Mount with ``path("aether/", include("aether_django.urls"))``. ``healthz`` and
``readyz`` reveal nothing and need no login (load balancers call them);
``metrics`` needs a staff session or ``Authorization: Bearer <METRICS_TOKEN>``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from . import metrics
from .conf import aether_settings
from .jsapi import parse_ack
from .runtime import get_runtime


def healthz(request: HttpRequest) -> HttpResponse:
    """The process answers HTTP."""
    return JsonResponse({"status": "ok"})


async def _jetstream_ready(timeout: float) -> dict[str, Any]:
    nc = await get_runtime().connection()
    reply = await nc.request("$JS.API.INFO", b"", timeout=timeout)
    return parse_ack(reply)


def readyz(request: HttpRequest) -> HttpResponse:
    """NATS is connected and JetStream answers; 503 otherwise."""
    try:
        info = get_runtime().run(_jetstream_ready(min(float(aether_settings.TIMEOUT), 2.0)))
    except Exception as exc:  # any failure to reach JetStream means "not ready"
        return JsonResponse(
            {"status": "unavailable", "detail": str(exc) or type(exc).__name__}, status=503
        )
    return JsonResponse({"status": "ready", "streams": info.get("streams", 0)})


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics of this process (staff session or the metrics bearer token)."""
    token = str(aether_settings.METRICS_TOKEN or "")
    header = request.headers.get("Authorization", "")
    allowed = (
        bool(request.user.is_authenticated and request.user.is_staff)
        if hasattr(request, "user")
        else False
    )
    if token and header.startswith("Bearer "):
        allowed = allowed or hmac.compare_digest(header[7:].encode(), token.encode())
    if not allowed:
        return HttpResponse(
            json.dumps({"code": "not_authenticated"}), status=401, content_type="application/json"
        )
    return HttpResponse(metrics.render(), content_type="text/plain; version=0.0.4")
