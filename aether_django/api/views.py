"""API views. Every namespace endpoint checks the caller's NamespaceGrants (the
permission class :class:`~aether_django.permissions.HasNamespaceGrant`); a namespace the
caller may not read answers 404, so its existence does not leak. What the views show is
read through :mod:`aether_django.inspection`, as the admin and the commands read it."""

from __future__ import annotations

import logging
from typing import Any

from rest_framework import status
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from .. import correlation, inspection
from ..access import access_for
from ..aggregates import AggregateDoesNotExist
from ..cluster import cluster_config
from ..conf import aether_settings
from ..errors import (
    AetherError,
    AggregateReplayError,
    EventStoreError,
    InvalidNameError,
    ReplayError,
    VersionConflictError,
)
from ..events import ActorSnapshot, Event
from ..middleware import REQUEST_ID_HEADER, request_id_of
from ..names import validate_actor_id
from ..permissions import CanForgetSubjects, HasNamespaceGrant, require_namespace_grant
from ..store import EventStore, get_event_store, get_existing_event_store
from . import serializers as s
from .exceptions import CannotApply, DuplicateEventId, ForgetIncomplete, aether_exception_handler
from .openapi import AutoSchema, OpenApiParameter, OpenApiResponse, OpenApiTypes, extend_schema
from .pagination import ActorEvents, AetherCursorPagination, PaginatedViewMixin
from .throttling import AetherScopedRateThrottle

logger = logging.getLogger(__name__)


#: Items per page unless ``limit`` says otherwise, and the most ``limit`` may ask for
#: (the defaults of the pagination classes, which are where a project changes them).
DEFAULT_LIMIT = AetherCursorPagination.default_limit
MAX_LIMIT = AetherCursorPagination.max_limit


def _error(description: str, serializer: Any = None) -> OpenApiResponse:
    return OpenApiResponse(response=serializer or s.ErrorSerializer, description=description)


_ERRORS = {
    400: _error(
        "invalid input: code invalid with DRF's field errors, or parse_error",
        s.ValidationErrorSerializer,
    ),
    401: _error("not authenticated (403 instead when SessionAuthentication comes first)"),
    403: _error("not authenticated, or not allowed"),
    404: _error("no such namespace, actor, or no read grant"),
    429: _error(
        "throttled: over a rate of REST_FRAMEWORK['DEFAULT_THROTTLE_RATES'] (scopes "
        "aether_read, aether_write); Retry-After says when to try again"
    ),
    503: _error(
        "the event store did not answer in time (store_unavailable), or did not confirm "
        "an append (outcome_unknown)"
    ),
}
#: The errors of the endpoints of one namespace.
_NS_ERRORS = {
    **_ERRORS,
    409: _error(
        "the namespace's stream belongs to another namespace", s.NamespaceCollisionSerializer
    ),
    422: _error("a stored event cannot be decoded (corrupt_event), or applied (cannot_apply)"),
}
#: The errors of the endpoints that take a body.
_WRITE_ERRORS = {
    **_NS_ERRORS,
    413: _error("an encoded event or snapshot, or the body, is larger than the limit"),
    415: _error("the body is neither JSON nor a form"),
}
_LIMIT = OpenApiParameter("limit", OpenApiTypes.INT, description=f"1..{MAX_LIMIT}")


def _positive(request: Request, name: str, default: int | None, *, minimum: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18 or int(raw) < minimum:
        raise ValidationError({name: [f"must be an integer >= {minimum}"]})
    return int(raw)


class AetherAPIView(APIView):
    """Base of every view: aether's error bodies, the read/write throttle scopes, and
    an OpenAPI schema whatever the project's DEFAULT_SCHEMA_CLASS."""

    schema = AutoSchema()

    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        """The request runs with its ``X-Request-ID`` (or a fresh id) as correlation and
        causation id, so the events it stores carry it; the response echoes it."""
        request_id = request_id_of(request)  # RequestIdMiddleware's, when it ran
        with correlation.use(request_id):
            response = super().dispatch(request, *args, **kwargs)
        response[REQUEST_ID_HEADER] = request_id
        return response

    def get_exception_handler(self) -> Any:
        # Aether's errors formatted here; the rest by the project's EXCEPTION_HANDLER.
        return aether_exception_handler

    def get_throttles(self) -> list[BaseThrottle]:
        """The project's throttles and the API's read/write scopes (off without rates)."""
        throttles = super().get_throttles()
        if not any(isinstance(t, AetherScopedRateThrottle) for t in throttles):
            throttles.append(AetherScopedRateThrottle())
        return throttles


class NamespaceView(AetherAPIView):
    """Base: authenticated callers, namespace checked against their grants."""

    permission_classes = [IsAuthenticated & HasNamespaceGrant]

    def namespace(self, request: Request, namespace: str, *, write: bool = False) -> str:
        """``namespace``, validated and checked against the grants.

        The permission class checked it already; checking again (the grants are
        loaded once per request) keeps a subclass that replaces
        ``permission_classes`` from serving a namespace without a grant.
        """
        return require_namespace_grant(request, namespace, write=write)

    def store(self, request: Request, namespace: str, *, write: bool = False) -> EventStore:
        """The namespace's store, after the grant checks.

        A namespace that does not exist gets a store that is not kept (reads of made-up
        names fill no cache). A write to it would create it, which takes a grant with
        ``can_create``.
        """
        namespace = self.namespace(request, namespace, write=write)
        store = get_existing_event_store(namespace)
        if write and not store.exists():
            if not access_for(request).can_create(namespace):
                raise PermissionDenied(
                    "this namespace does not exist; creating it takes a grant with "
                    "can_create (besides can_write)"
                )
            return get_event_store(namespace)
        return store

    def actor(self, actor_id: str) -> str:
        try:
            return validate_actor_id(actor_id)
        except InvalidNameError as exc:
            raise ValidationError({"actor_id": [str(exc)]}) from None


class NamespaceListView(NamespaceView):
    @extend_schema(responses={200: s.NamespaceSerializer(many=True), **_ERRORS})
    def get(self, request: Request) -> Response:
        """The namespaces the caller may read, with their stream's figures."""
        infos = inspection.namespace_infos(access_for(request))
        return Response(s.NamespaceSerializer(infos, many=True).data)


class NamespaceDetailView(NamespaceView):
    @extend_schema(responses={200: s.NamespaceSerializer, **_NS_ERRORS})
    def get(self, request: Request, namespace: str) -> Response:
        """One namespace's figures."""
        info = self.store(request, namespace).get_info()
        if info is None:
            raise NotFound("no such namespace")
        return Response(s.NamespaceSerializer(info).data)


class ActorListView(PaginatedViewMixin, NamespaceView):
    #: None: AETHER["API_ACTOR_PAGINATION_CLASS"] (ActorCursorPagination by default).
    pagination_setting = "API_ACTOR_PAGINATION_CLASS"

    @extend_schema(
        parameters=[_LIMIT, OpenApiParameter("cursor", OpenApiTypes.STR)],
        responses={200: s.page_of(s.ActorSerializer), **_NS_ERRORS},
    )
    def get(self, request: Request, namespace: str) -> Response:
        """The actors of a namespace, in the order of their subject tokens (ids of
        letters, digits, '-' and '_' in byte order), with their version and shard."""
        store = self.store(request, namespace)
        actor_ids = self.paginator.paginate_queryset(store, request, self) or []
        results = [row.as_dict() for row in inspection.actor_rows(store, actor_ids)]
        return self.paginator.get_paginated_response(results)


class EventListView(PaginatedViewMixin, NamespaceView):
    #: None: AETHER["API_EVENT_PAGINATION_CLASS"] (EventCursorPagination by default).
    pagination_setting = "API_EVENT_PAGINATION_CLASS"

    @extend_schema(
        parameters=[OpenApiParameter("from_version", OpenApiTypes.INT), _LIMIT],
        responses={200: s.page_of(s.EventSerializer), **_NS_ERRORS},
    )
    def get(self, request: Request, namespace: str, actor_id: str) -> Response:
        """The actor's events in version order, from ``from_version`` on (inclusive): at
        most ``limit`` of them and at most API_PAGE_BYTES of encoded events (at least one)."""
        store = self.store(request, namespace)
        actor_id = self.actor(actor_id)
        # Bounded by bytes too (EventCursorPagination says why).
        page = self.paginator.paginate_queryset(ActorEvents(store, actor_id), request, self)
        return self.paginator.get_paginated_response([s.event_body(e) for e in page or []])

    @extend_schema(
        request=s.APPEND_REQUEST,
        responses={
            201: s.AppendResultSerializer,
            **_WRITE_ERRORS,
            409: _error(
                "a version conflict, an event id of another stored event, or a namespace collision",
                s.APPEND_CONFLICT,
            ),
        },
    )
    def post(self, request: Request, namespace: str, actor_id: str) -> Response:
        """Append one event with an explicit version, or a batch after ``expected_version``."""
        store = self.store(request, namespace, write=True)
        actor_id = self.actor(actor_id)
        if not isinstance(request.data, dict):
            raise ValidationError({"non_field_errors": ["expected a JSON object"]})
        events, client_ids = self._events(request.data, actor_id)
        self._check_step(
            store, events, batch="events" in request.data or "expected_version" in request.data
        )
        try:
            stored = store.save_events(events)
        except VersionConflictError as conflict:
            if not client_ids:
                raise
            stored = self._already_stored(store, events, conflict)
        except EventStoreError as exc:
            # The store's answer when a client-chosen id is the id of another event (of
            # another actor, or of this actor at another version); ids it makes are unique.
            if "event ids must be unique" in str(exc):
                raise DuplicateEventId() from None
            raise
        return Response(
            {"events": [s.event_body(e) for e in stored]}, status=status.HTTP_201_CREATED
        )

    def _events(self, body: dict[str, Any], actor_id: str) -> tuple[list[Event], bool]:
        """The events to store, and whether the client chose every id (retries are then
        recognisable)."""
        if "events" in body or "expected_version" in body:
            batch = s.AppendBatchSerializer(data=body)
            batch.is_valid(raise_exception=True)
            first = batch.validated_data["expected_version"] + 1
            items = batch.validated_data["events"]
        else:
            one = s.AppendOneSerializer(data=body)
            one.is_valid(raise_exception=True)
            items = [one.validated_data]
            first = one.validated_data["version"]
        events = [_event(item, actor_id, first + i) for i, item in enumerate(items)]
        return events, all(item.get("id") for item in items)

    def _check_step(self, store: EventStore, events: list[Event], *, batch: bool) -> None:
        """Refuse a first version more than API_MAX_VERSION_GAP above the actor's current one.

        Gaps are allowed, but one append at the top of the version range would leave
        the actor no version to move on to. A first version within the bound is within
        it whatever the actor's version, so only larger ones cost a read. A concurrent
        append only raises the current version, so it cannot make a refused step pass.
        """
        gap = int(aether_settings.API_MAX_VERSION_GAP)
        first = events[0].version
        if first <= gap:
            return
        current = store.get_latest_version(events[0].actor_id)
        if first - current > gap:
            field = "expected_version" if batch else "version"
            raise ValidationError(
                {
                    field: [
                        f"the first version, {first}, is more than {gap} above the actor's "
                        f"current version {current} (API_MAX_VERSION_GAP)"
                    ]
                }
            )

    def _already_stored(
        self, store: EventStore, events: list[Event], conflict: VersionConflictError
    ) -> list[Event]:
        """A retried request whose events (by client-supplied id) are stored already."""
        stored = {e.version: e for e in store.get_events(events[0].actor_id, events[0].version)}
        found = [stored.get(e.version) for e in events]
        if all(f is not None and f.id == e.id for f, e in zip(found, events, strict=True)):
            return [f for f in found if f is not None]
        raise conflict


def _event(item: dict[str, Any], actor_id: str, version: int) -> Event:
    command_id = item.get("command_id") or None
    fields: dict[str, Any] = {
        "event_type": item["event_type"],
        "actor_id": actor_id,
        "version": version,
        "data": item.get("data") or {},
        # The request's ids (X-Request-ID), unless the client gave its own.
        "metadata": correlation.stamp(item.get("metadata") or {}, command_id=command_id),
        "command_id": command_id,
    }
    if item.get("id"):
        fields["id"] = item["id"]
    return Event(**fields)


class VersionView(NamespaceView):
    @extend_schema(responses={200: s.VersionSerializer, **_NS_ERRORS})
    def get(self, request: Request, namespace: str, actor_id: str) -> Response:
        """The actor's current version (0 for an actor with no events)."""
        store = self.store(request, namespace)
        actor_id = self.actor(actor_id)
        return Response({"actor_id": actor_id, "version": store.get_latest_version(actor_id)})


class SnapshotView(NamespaceView):
    @extend_schema(responses={200: s.SnapshotSerializer, **_NS_ERRORS})
    def get(self, request: Request, namespace: str, actor_id: str) -> Response:
        """The actor's latest snapshot (404 when there is none)."""
        store = self.store(request, namespace)
        snapshot = store.get_latest_snapshot(self.actor(actor_id))
        if snapshot is None:
            raise NotFound("no snapshot")
        return Response(_snapshot_body(snapshot))

    @extend_schema(
        request=s.SnapshotSerializer, responses={200: s.SnapshotSerializer, **_WRITE_ERRORS}
    )
    def put(self, request: Request, namespace: str, actor_id: str) -> Response:
        """Save a snapshot of the actor (replacing the previous one), when
        API_SNAPSHOT_WRITES allows it."""
        store = self.store(request, namespace, write=True)
        if not aether_settings.API_SNAPSHOT_WRITES:
            # An aggregate loads a snapshot as its state: writing one writes state
            # without an event, which only a project that needs it turns on.
            raise PermissionDenied(
                "snapshot writes through the API are turned off (AETHER['API_SNAPSHOT_WRITES'])"
            )
        actor_id = self.actor(actor_id)
        body = s.SnapshotSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        version = body.validated_data["version"]
        # The stored version only grows, so a snapshot within it now stays within it.
        stored = store.get_latest_version(actor_id)
        if version > stored:
            raise ValidationError({"version": [f"{version} is above the actor's version {stored}"]})
        snapshot = ActorSnapshot(
            actor_id=actor_id, version=version, state=body.validated_data["state"]
        )
        store.save_snapshot(snapshot)
        return Response(_snapshot_body(snapshot))


def _snapshot_body(snapshot: ActorSnapshot) -> dict[str, Any]:
    return {
        "actor_id": snapshot.actor_id,
        "version": snapshot.version,
        "state": dict(snapshot.state),
        "timestamp": snapshot.timestamp.isoformat().replace("+00:00", "Z"),
    }


def load_state(
    namespace: str, actor_id: str, *, at_version: int | None = None
) -> inspection.AggregateState:
    """The actor's state as the namespace's aggregate class builds it, or the API's
    error: 404 for no class or no such actor, 422 for a history it cannot replay."""
    try:
        found = inspection.aggregate_state(namespace, actor_id, at_version=at_version)
    except AggregateDoesNotExist:
        raise NotFound("no such actor") from None
    except AggregateReplayError as exc:
        if isinstance(exc, ReplayError):
            raise  # a message that does not decode: corrupt_event, as for the events
        # A fact about the stored history (a handler that meets data of another
        # shape, an event type without a handler), not a server fault: 422. The
        # project's exception text stays in the log; the body says only its type.
        logger.warning("%s in namespace %r", exc, namespace, exc_info=exc.cause)
        if isinstance(exc.cause, AetherError):  # aether's own words, e.g. no handler
            raise CannotApply(str(exc.cause)) from None
        raise CannotApply(
            f"{exc.aggregate} cannot build this actor's state from its stored events: {exc.reason}"
        ) from None
    if found is None:
        raise NotFound("no aggregate class is registered for this namespace")
    return found


class StateView(NamespaceView):
    @extend_schema(
        parameters=[OpenApiParameter("at_version", OpenApiTypes.INT)],
        responses={200: s.StateSerializer, **_NS_ERRORS},
    )
    def get(self, request: Request, namespace: str, actor_id: str) -> Response:
        """The actor's state (or its state as of ``at_version``), for a registered aggregate."""
        namespace = self.namespace(request, namespace)
        actor_id = self.actor(actor_id)
        at_version = _positive(request, "at_version", None, minimum=1)
        found = load_state(namespace, actor_id, at_version=at_version)
        return Response(
            {
                "actor_id": found.actor_id,
                "version": found.version,
                "aggregate": found.aggregate,
                "state": found.state,
            }
        )


class ClusterView(AetherAPIView):
    """Cluster topology: staff only (it names hosts, and no namespace grant covers it)."""

    permission_classes = [IsAdminUser]

    @extend_schema(responses={200: s.ClusterSerializer, **_ERRORS})
    def get(self, request: Request) -> Response:
        """The leader, its term, the number of shards and every node's status."""
        status_ = inspection.cluster_status(reader="api")
        return Response(
            {
                "leader": status_.leader,
                "term": status_.term,
                "num_shards": status_.num_shards,
                "nodes": [
                    {
                        "node_id": n.node_id,
                        "status": n.status,
                        "last_heartbeat": n.last_heartbeat,
                        "shard_count": n.shard_count,
                    }
                    for n in status_.nodes
                ],
            }
        )


class ShardsView(ClusterView):
    @extend_schema(responses={200: s.ShardsSerializer, **_ERRORS})
    def get(self, request: Request) -> Response:
        """The shard map: shard -> node, shards per node, shards moved by the last rebalance."""
        shard_map = inspection.cluster_status(reader="api").shard_map
        if shard_map is None:
            return Response(
                {
                    "num_shards": cluster_config().num_shards,
                    "term": None,
                    "moved": 0,
                    "shards": {},
                    "counts": {},
                }
            )
        return Response(
            {
                "num_shards": shard_map.num_shards,
                "term": shard_map.term,
                "moved": shard_map.moved,
                "shards": {str(k): v for k, v in sorted(shard_map.assignment.items())},
                "counts": shard_map.counts(),
            }
        )


def __getattr__(name: str) -> Any:
    # SchemaView moved to aether_django.api.schema, which needs drf-spectacular (the
    # [api-schema] extra); it is still found here, imported only when asked for.
    if name == "SchemaView":
        from .schema import SchemaView

        return SchemaView
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ForgetView(AetherAPIView):
    """Forget a data subject (crypto-shredding, docs/privacy.md): its data key erased,
    its read-model rows deleted, an audit event recorded. It takes the permission
    ``aether_django.forget_subject`` (superusers hold it); no namespace grant is enough."""

    permission_classes = [IsAuthenticated & CanForgetSubjects]

    @extend_schema(
        request=s.ForgetSerializer,
        responses={
            200: s.ForgetResultSerializer,
            **{k: v for k, v in _ERRORS.items() if k != 404},
            503: _error(
                "the store did not answer (store_unavailable), or the key is erased but "
                "the read models could not all be cleared (forget_incomplete): send the "
                "request again"
            ),
        },
    )
    def post(self, request: Request) -> Response:
        """Forget ``subject_id``; the answer names the audit event. Idempotent: sending
        it again records another audit event and erases nothing more."""
        from .. import privacy

        given = s.ForgetSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        subject_id = given.validated_data["subject_id"]
        try:
            audit = privacy.forget(subject_id)
        except privacy.ForgetIncompleteError as exc:
            logger.warning("api: forget incomplete: %s", exc)
            raise ForgetIncomplete() from exc
        # The audit event's id, not the subject id: the log must not keep what was erased.
        logger.info(
            "api: data subject forgotten, audit event %s (by %s)",
            audit.id,
            request.user.get_username(),
        )
        return Response(
            {
                "audit_event_id": audit.id,
                "namespace": privacy.AUDIT_NAMESPACE,
                "subject_sha256": audit.data["subject_sha256"],
                "kid": audit.data["kid"],
                "rows_deleted": audit.data.get("rows_deleted", {}),
            }
        )
