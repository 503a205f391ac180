"""Operations endpoints: liveness, readiness and Prometheus metrics.

Mount with ``path("aether/", include("aether_django.urls"))``. ``healthz`` and
``readyz`` reveal nothing and need no login (load balancers call them);
``metrics`` needs a staff session or ``Authorization: Bearer <METRICS_TOKEN>``.
With ``READYZ_PROJECTIONS`` set, ``readyz`` also names the required projections that
are paused, failed or too far behind (never their error messages).

The cluster figures of ``metrics`` (nodes by status, the leader and its term, shards
per node, shard moves) are read from the cluster bucket at each scrape, not counted
in this process: the nodes that lead and rebalance are Celery workers, which serve no
HTTP, so a web process's own counters would say nothing about them. The projections'
lag and state are read the same way, from their checkpoints and the stream heads.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from . import inspection, metrics
from .conf import aether_settings
from .errors import ProjectionError
from .models import ProjectionCheckpoint
from .nats.api import ACCOUNT_INFO, parse_reply
from .projections import all_projections, operations
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
    """NATS is connected and JetStream answers, and the projections that
    ``READYZ_PROJECTIONS`` requires are running; 503 otherwise."""
    try:
        info = get_runtime().run(_jetstream_ready(min(float(aether_settings.TIMEOUT), 2.0)))
    except Exception as exc:  # any failure to reach JetStream means "not ready"
        return JsonResponse(
            {"status": "unavailable", "detail": str(exc) or type(exc).__name__}, status=503
        )
    body: dict[str, Any] = {"status": "ready", "streams": info.get("streams", 0)}
    if aether_settings.READYZ_PROJECTIONS:
        try:
            names, waiting = projection_readiness()
        except ProjectionError as exc:  # a wrong setting: say which
            return JsonResponse({"status": "unavailable", "detail": str(exc)}, status=503)
        except Exception as exc:  # the database or NATS: not ready, without their details
            logger.warning("readyz could not read the projections", exc_info=True)
            detail = f"the projections' checkpoints could not be read ({type(exc).__name__})"
            return JsonResponse({"status": "unavailable", "detail": detail}, status=503)
        if waiting:
            detail = "; ".join(w["reason"] for w in waiting)
            return JsonResponse(
                {"status": "unavailable", "detail": detail, "projections": waiting}, status=503
            )
        body["projections"] = names
    return JsonResponse(body)


def projection_readiness() -> tuple[list[str], list[dict[str, Any]]]:
    """The required projections' names, and what keeps each namespace of them from
    being ready: paused, failed, or (with ``READYZ_PROJECTION_MAX_LAG``) too far behind.

    The reasons name projections, namespaces, states and sequences, never a handler's
    error message: readyz answers anyone, and the message may quote event data.
    """
    projections = operations.named(aether_settings.READYZ_PROJECTIONS, "READYZ_PROJECTIONS")
    max_lag = aether_settings.READYZ_PROJECTION_MAX_LAG
    waiting: list[dict[str, Any]] = []
    for row in operations.statuses(projections):
        if row.state == ProjectionCheckpoint.FAILED:
            reason = (
                f"{row.projection} failed in {row.namespace} at sequence {row.last_error_sequence}"
            )
        elif row.state == ProjectionCheckpoint.PAUSED:
            reason = f"{row.projection} is paused in {row.namespace}"
        elif max_lag is not None and row.lag > int(max_lag):
            reason = (
                f"{row.projection} is {row.lag} events behind in {row.namespace} "
                f"(READYZ_PROJECTION_MAX_LAG is {max_lag})"
            )
        else:
            continue
        waiting.append(
            {
                "projection": row.projection,
                "namespace": row.namespace,
                "state": row.state,
                "position": row.position,
                "head": row.head,
                "lag": row.lag,
                "reason": reason,
            }
        )
    return [p._meta.name for p in projections], waiting


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
    collected = cluster_samples()
    # With NATS away the cluster read has waited its timeout already: no second wait.
    nats_answered = list(collected[metrics.CLUSTER_READABLE]) == [({}, 1)]
    collected.update(projection_samples() if nats_answered else _no_projection_samples())
    return HttpResponse(metrics.render(collected), content_type=metrics.CONTENT_TYPE)


def _no_projection_samples() -> dict[Any, metrics.Samples]:
    return {metrics.PROJECTION_LAG: [], metrics.PROJECTION_STATE: []}


#: The states ``aether_projection_state`` has a sample for (one of them is 1).
PROJECTION_STATES = (
    ProjectionCheckpoint.RUNNING,
    ProjectionCheckpoint.PAUSED,
    ProjectionCheckpoint.FAILED,
    "new",
)


def projection_samples() -> dict[Any, metrics.Samples]:
    """Each projection's lag and state in each namespace, read now from the checkpoints
    and the stream heads (one database query a projection, one head a namespace).

    Read at the scrape rather than kept by the runners: a runner may run in any process
    (a Celery worker serves no HTTP), two runners of one projection must not add up,
    and the lag of a projection whose runner stopped is the one to see. Unreadable (the
    database or NATS not answering): no samples, and a warning in the log.
    """
    projections = all_projections()
    if not projections:
        return _no_projection_samples()
    try:
        rows = operations.statuses(projections)
    except Exception:  # report it, don't fail the scrape
        logger.warning("could not read the projections' checkpoints for metrics", exc_info=True)
        return _no_projection_samples()
    return {
        metrics.PROJECTION_LAG: [
            ({"projection": row.projection, "namespace": row.namespace}, row.lag) for row in rows
        ],
        metrics.PROJECTION_STATE: [
            (
                {"projection": row.projection, "namespace": row.namespace, "state": state},
                1 if row.state == state else 0,
            )
            for row in rows
            for state in PROJECTION_STATES
        ],
    }


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
