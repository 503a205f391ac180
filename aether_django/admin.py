"""Django admin: NamespaceGrant editing, and read-only pages for streams, actors and the cluster.

The inspection pages read JetStream and the cluster bucket live on every request;
nothing is copied into the database. Event history is shown, never edited.

Access: every page is for active staff. The namespace pages follow the same grants as
the API (:class:`~aether_django.access.NamespaceAccess`): the list holds only the
namespaces the user may read, and the page of any other namespace, or of an actor in
it, is the 404 of a namespace that does not exist. Superusers see every namespace. The
cluster pages hold no namespace data and are shown to all staff.

URLs: namespace pages live under ``streaminspection/ns/<namespace>/`` so that no
namespace name can collide with Django's ``add/``, ``<id>/change/``, ``<id>/delete/``
and ``<id>/history/`` URLs, which both inspection models answer with 403 on purpose.
Every inspection page answers 405 to methods other than GET and HEAD.

What the pages show is read through :mod:`aether_django.inspection`, as the API and
the commands read it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.views.decorators.http import require_safe
from nats.errors import Error as NatsError

from . import inspection
from .access import access_for
from .aggregates import AggregateDoesNotExist, get_aggregate_class
from .cluster import cluster_config, shard_of
from .cluster.coordinator import Coordinator
from .errors import AetherError, AggregateReplayError, InvalidNameError
from .models import ClusterInspection, NamespaceGrant, StreamInspection
from .names import validate_actor_id, validate_namespace
from .runtime import get_runtime
from .store import get_existing_event_store

logger = logging.getLogger(__name__)

ACTORS_PER_PAGE = 100

# What the namespace pages answer with the "unavailable" page (503): the store's own
# errors, and a timeout or lost connection that reaches this far untranslated. Building
# an actor's state raises AggregateReplayError for anything its history does to the
# aggregate's code, which the actor page shows beside the history, so the rest of
# these are faults of the store there too.
UNAVAILABLE = (AetherError, OSError, NatsError)

# One message for a namespace that does not exist and for one the user may not read,
# so that the two answers are the same.
NO_SUCH_NAMESPACE = "no such namespace"
NO_SUCH_ACTOR = "no such actor"


@admin.register(NamespaceGrant)
class NamespaceGrantAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("pattern", "user", "group", "can_read", "can_write", "can_create", "created_at")
    list_filter = ("can_read", "can_write", "can_create")
    search_fields = ("pattern", "user__username", "group__name")
    autocomplete_fields = ()
    raw_id_fields = ("user", "group")


class _InspectionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Base of the read-only pages: staff may look; nobody may add, change or delete.

    Which namespaces a page may show is decided by the subclass: StreamAdmin applies
    the user's grants, ClusterAdmin shows no namespace data.
    """

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def safe_page(self, view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        """``view`` as an admin page: staff login first, then GET and HEAD only (405)."""
        # require_safe inside admin_view: a caller who is not staff is sent to the login
        # page whatever the method, and staff get 405 for anything but GET and HEAD.
        return self.admin_site.admin_view(require_safe(view))

    def refused_urls(self) -> list[URLPattern]:
        """Django's add, change, delete and history URLs of this model, answered with 403.

        They come after the model's own pages in ``get_urls``, so they only catch what
        those do not match.
        """
        opts = self.model._meta
        prefix = f"{opts.app_label}_{opts.model_name}"
        view = self.admin_site.admin_view(self.refused_view)
        return [
            path("add/", view, name=f"{prefix}_add"),
            path("<path:object_id>/change/", view, name=f"{prefix}_change"),
            path("<path:object_id>/delete/", view, name=f"{prefix}_delete"),
            path("<path:object_id>/history/", view, name=f"{prefix}_history"),
        ]

    def refused_view(self, request: HttpRequest, object_id: str = "") -> HttpResponse:
        """Any method, any object id: the same 403, which therefore says nothing about
        whether the object exists."""
        raise PermissionDenied(f"{self.model._meta.verbose_name_plural} are read-only")

    def render(self, request: HttpRequest, template: str, **context: Any) -> HttpResponse:
        base = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "has_view_permission": True,
        }
        return TemplateResponse(request, f"admin/aether_django/{template}", {**base, **context})

    def error_page(self, request: HttpRequest, error: Exception) -> HttpResponse:
        response = self.render(request, "unavailable.html", title="Unavailable", error=error)
        response.status_code = 503
        return response


@admin.register(StreamInspection)
class StreamAdmin(_InspectionAdmin):
    """Namespaces → actors → an actor's timeline, snapshot and state."""

    def get_urls(self) -> list[URLPattern]:
        page = self.safe_page
        return [
            path("", page(self.namespaces_view), name="aether_django_streaminspection_changelist"),
            # Under "ns/": a namespace may be called "add", and an actor "x/change".
            path("ns/<str:namespace>/", page(self.actors_view), name="aether_namespace"),
            path("ns/<str:namespace>/<path:actor_id>/", page(self.actor_view), name="aether_actor"),
            *self.refused_urls(),
        ]

    def check_readable(self, request: HttpRequest, namespace: str, missing: str) -> None:
        """Raise the 404 ``missing`` unless ``namespace`` is valid and the user may read it.

        Checked before NATS is asked anything: a namespace the user may not read answers
        the same 404 whether it exists or not, and whether NATS answers or not.
        """
        try:
            validate_namespace(namespace)
        except InvalidNameError as exc:
            raise Http404(str(exc)) from None
        if not access_for(request).can_read(namespace):
            raise Http404(missing)

    def namespaces_view(self, request: HttpRequest) -> HttpResponse:
        access = access_for(request)
        try:
            # Figures only of readable namespaces: the others are not even asked about.
            infos = inspection.namespace_infos(access)
        except UNAVAILABLE as exc:
            return self.error_page(request, exc)
        return self.render(
            request,
            "namespaces.html",
            title="Namespaces",
            namespaces=infos,
            sees_all=access.superuser,
        )

    def actors_view(self, request: HttpRequest, namespace: str) -> HttpResponse:
        self.check_readable(request, namespace, NO_SUCH_NAMESPACE)
        try:
            store = get_existing_event_store(namespace)
            info = store.get_info()
        except UNAVAILABLE as exc:
            return self.error_page(request, exc)
        if info is None:
            raise Http404(NO_SUCH_NAMESPACE)
        query = request.GET.get("q", "").strip()
        after = request.GET.get("after") or None
        try:
            if after is not None:
                validate_actor_id(after)
            at = int(request.GET.get("at", "0"))
        except (InvalidNameError, ValueError):
            raise Http404("invalid page") from None
        page, next_query = None, None
        try:
            if query:
                # A search for a part of an id reads the whole actor list: that is
                # what it takes, and only staff can ask.
                matches = [a for a in store.get_actor_ids() if query in a]
                page = Paginator(matches, ACTORS_PER_PAGE).get_page(request.GET.get("p"))
                rows = inspection.actor_rows(store, list(page.object_list))
            else:
                # Browsing reads one page of the listing (see the API's actor list).
                listing = inspection.actor_page(store, after, ACTORS_PER_PAGE, at=max(0, at))
                rows = listing.rows
                if listing.next_after is not None:
                    next_query = urlencode({"after": listing.next_after, "at": listing.next_at})
        except UNAVAILABLE as exc:
            return self.error_page(request, exc)
        model = get_aggregate_class(namespace)
        actors = [row.as_dict() for row in rows]
        return self.render(
            request,
            "actors.html",
            title=f"Namespace {namespace}",
            namespace=namespace,
            info=info,
            actors=actors,
            page=page,
            next_query=next_query,
            first_page=after is not None,
            query=query,
            # A flag, not the class: a template calls what is callable, and an
            # aggregate class cannot be built without an actor id.
            aggregate=model is not None,
            aggregate_name=getattr(model, "__name__", ""),
        )

    def actor_view(self, request: HttpRequest, namespace: str, actor_id: str) -> HttpResponse:
        self.check_readable(request, namespace, NO_SUCH_ACTOR)
        try:
            validate_actor_id(actor_id)
        except InvalidNameError as exc:
            raise Http404(str(exc)) from None
        try:
            store = get_existing_event_store(namespace)
            result = store.get_events_with_errors(actor_id)
            snapshot = store.get_latest_snapshot(actor_id)
        except UNAVAILABLE as exc:
            return self.error_page(request, exc)
        if not result.events and not result.errors:
            raise Http404(NO_SUCH_ACTOR)
        state, state_error = None, None
        model = get_aggregate_class(namespace)
        if model is not None:
            try:
                found = inspection.aggregate_state(namespace, actor_id)
                state = found.state if found is not None else None
            except AggregateDoesNotExist as exc:
                state_error = str(exc) or type(exc).__name__
            except AggregateReplayError as exc:
                # A fact about the history, shown beside it, not a 500. Staff may read
                # the project's own message: it is their code.
                logger.warning("%s (admin page)", exc, exc_info=exc.cause)
                own = isinstance(exc.cause, AetherError) or not str(exc.cause)
                state_error = str(exc) if own else f"{exc}: {exc.cause}"
            except UNAVAILABLE as exc:
                # The store's own errors (NATS gone mid-page) are the page's, as above.
                return self.error_page(request, exc)
        return self.render(
            request,
            "actor.html",
            title=f"{actor_id} in {namespace}",
            namespace=namespace,
            actor_id=actor_id,
            shard=shard_of(actor_id),
            events=result.events,
            replay_errors=result.errors,
            snapshot=snapshot,
            # A flag, not the class: a template calls what is callable, and an
            # aggregate class cannot be built without an actor id.
            aggregate=model is not None,
            aggregate_name=getattr(model, "__name__", ""),
            state=state,
            state_error=state_error,
        )


@admin.register(ClusterInspection)
class ClusterAdmin(_InspectionAdmin):
    """Nodes, the leader and its term, and the shard map: no namespace data, so all staff."""

    def get_urls(self) -> list[URLPattern]:
        page = self.safe_page
        return [
            path("", page(self.nodes_view), name="aether_django_clusterinspection_changelist"),
            path("shards/", page(self.shards_view), name="aether_shards"),
            *self.refused_urls(),
        ]

    def _coordinator(self) -> Coordinator:
        return Coordinator(get_runtime(), "admin", cluster_config())

    def nodes_view(self, request: HttpRequest) -> HttpResponse:
        try:
            status = inspection.cluster_status(reader="admin")
        except Exception as exc:  # NATS down, bucket unreadable: say so, don't 500
            return self.error_page(request, exc)
        now = time.time()
        rows = [
            {
                "node": node,
                "heartbeat": datetime.fromtimestamp(node.last_heartbeat, UTC),
                "seconds_ago": max(0.0, round(now - node.last_heartbeat, 1)),
            }
            for node in status.nodes
        ]
        return self.render(
            request, "nodes.html", title="Cluster nodes", lease=status.lease, nodes=rows
        )

    def shards_view(self, request: HttpRequest) -> HttpResponse:
        coordinator = self._coordinator()
        try:
            shard_map = get_runtime().run(coordinator.read_shard_map())
        except Exception as exc:
            return self.error_page(request, exc)
        by_node: dict[str, list[int]] = {}
        if shard_map is not None:
            for shard, node in sorted(shard_map.assignment.items()):
                by_node.setdefault(node, []).append(shard)
        return self.render(
            request,
            "shards.html",
            title="Shard map",
            shard_map=shard_map,
            by_node=sorted(by_node.items()),
            num_shards=coordinator.config.num_shards,
        )
