"""Operations endpoints: liveness, readiness and Prometheus metrics.

Mount with ``path("aether/", include("aether_django.urls"))``. ``healthz`` and
``readyz`` reveal nothing and need no login (load balancers call them);
``metrics`` needs a staff session or ``Authorization: Bearer <METRICS_TOKEN>``.

The cluster figures of ``metrics`` (nodes by status, the leader and its term, shards
per node, shard moves) are read from the cluster bucket at each scrape, not counted
in this process: the nodes that lead and rebalance are Celery workers, which serve no
HTTP, so a web process's own counters would say nothing about them.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from . import inspection, metrics
from .conf import aether_settings
from .nats.api import ACCOUNT_INFO, parse_reply
from .runtime import get_runtime

logger = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> HttpResponse:
    """The process answers HTTP."""
    return JsonResponse({"status": "ok"})


async def _jetstream_ready(timeout: float) -> dict[str, Any]:
    nc = await get_runtime().connection()
    reply = await nc.request(ACCOUNT_INFO, b"", timeout=timeout)
    return parse_reply(reply.data)


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
    return HttpResponse(metrics.render(cluster_samples()), content_type=metrics.CONTENT_TYPE)


def _cluster_figures(status: inspection.ClusterStatus) -> dict[Any, metrics.Samples]:
    lease, shard_map = status.lease, status.shard_map
    statuses = {"alive": 0, "failed": 0}
    for node in status.nodes:
        statuses[node.status] = statuses.get(node.status, 0) + 1
    return {
        metrics.CLUSTER_READABLE: [({}, 1)],
        metrics.NODES: [({"status": status}, n) for status, n in statuses.items()],
        metrics.CLUSTER_LEADER_TERM: [({}, lease.term if lease else 0)],
        metrics.CLUSTER_LEADER: [({"node": lease.node_id}, 1)] if lease else [],
        metrics.CLUSTER_SHARDS: [
            ({"node": node}, count)
            for node, count in (shard_map.counts() if shard_map else {}).items()
        ],
        metrics.CLUSTER_SHARD_MOVES: [({}, shard_map.moves_total if shard_map else 0)],
    }


def cluster_samples() -> dict[Any, metrics.Samples]:
    """The cluster figures, read from the cluster bucket now.

    When the bucket cannot be read (NATS away), ``aether_cluster_readable`` is 0 and
    the other cluster figures have no samples: an absent value, rather than a stale
    or made-up one.
    """
    # Bounded like readyz: a scrape must answer even when NATS does not.
    timeout = min(float(aether_settings.TIMEOUT), 2.0)
    empty: dict[Any, metrics.Samples] = {
        metric: []
        for metric in (
            metrics.NODES,
            metrics.CLUSTER_LEADER_TERM,
            metrics.CLUSTER_LEADER,
            metrics.CLUSTER_SHARDS,
            metrics.CLUSTER_SHARD_MOVES,
        )
    }
    try:
        return _cluster_figures(inspection.cluster_status(timeout=timeout, reader="metrics"))
    except Exception:  # NATS down or the bucket unreadable: report it, don't fail the scrape
        logger.warning("could not read the cluster bucket for metrics", exc_info=True)
        return {**empty, metrics.CLUSTER_READABLE: [({}, 0)]}
