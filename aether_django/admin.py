"""Django admin: NamespaceGrant editing, read-only pages for streams, actors and the cluster,
and the projections page.

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
Every inspection page answers 405 to methods other than GET and HEAD. The projection
actions (rebuild, pause, resume, skip) are the one exception: a confirmation page, and
its POST, for superusers only (403 for other staff). So is forgetting a data subject
(``datasubject/``): a form, a confirmation and its POST, for staff holding the permission
``aether_django.forget_subject`` (superusers hold it; 403 for other staff).

What the pages show is read through :mod:`aether_django.inspection`, as the API and
the commands read it.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_http_methods, require_safe
from nats.errors import Error as NatsError

from . import inspection
from .access import access_for
from .aggregates import AggregateDoesNotExist, get_aggregate_class
from .cluster import shard_of
from .cluster.coordinator import ShardMap
from .conf import aether_settings
from .errors import (
    AetherError,
    AggregateReplayError,
    InvalidNameError,
    ProjectionError,
    ReplayError,
)
from .events import ReplayResult
from .models import (
    ClusterInspection,
    DataSubject,
    NamespaceGrant,
    ProjectionCheckpoint,
    ProjectionInspection,
    ProjectionSkip,
    StreamInspection,
)
from .names import validate_actor_id, validate_namespace
from .permissions import may_forget_subjects
from .projections import Projection, all_projections, get_projection, operations, placement
from .projections.runner import covered_namespaces
from .store import EventStore, get_existing_event_store

logger = logging.getLogger(__name__)

ACTORS_PER_PAGE = 100
#: Events of an actor's timeline a page, read from the store a page at a time.
EVENTS_PER_PAGE = 100

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
#: Longest correlation id the correlation page searches for (an id is a short token).
MAX_CORRELATION_ID = 255


def timeline_page(
    store: EventStore, actor_id: str, from_version: int
) -> tuple[ReplayResult, int | None]:
    """A page of the actor's timeline from ``from_version`` on, and where the next starts.

    Read as the API reads a page (``get_events_page``: at most EVENTS_PER_PAGE events and
    API_PAGE_BYTES of them, no more read than that). The next page starts at the version
    after the last one shown, so pages neither skip nor repeat an event. Should a message
    of the page not decode, the rest of the history is read with its errors beside the
    events, as the page shows them, and cut to a page: the events up to the next page's
    first one, and the undecodable messages stored before it.
    """
    try:
        events, more = store.get_events_page(
            actor_id,
            from_version,
            limit=EVENTS_PER_PAGE,
            max_bytes=int(aether_settings.API_PAGE_BYTES),
        )
    except ReplayError:
        pass
    else:
        return ReplayResult(events, []), (events[-1].version + 1 if more else None)
    rest = store.get_events_with_errors(actor_id, from_version)
    if len(rest.events) <= EVENTS_PER_PAGE:
        return rest, None
    following = rest.events[EVENTS_PER_PAGE]
    errors = [e for e in rest.errors if e.sequence < (following.sequence or 0)]
    return ReplayResult(rest.events[:EVENTS_PER_PAGE], errors), following.version


@admin.register(NamespaceGrant)
class NamespaceGrantAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("pattern", "user", "group", "can_read", "can_write", "can_create", "created_at")
    list_filter = ("can_read", "can_write", "can_create")
    search_fields = ("pattern", "user__username", "group__name")
    autocomplete_fields = ()
    raw_id_fields = ("user", "group")


class ReadOnlyAdminMixin:
    """A ModelAdmin that shows rows and offers no add, change or delete.

    For a projection's read models: their rows are written by the projection alone, so
    an edit in the admin would be one no event explains, undone by the next rebuild::

        @admin.register(OrderSummary)
        class OrderSummaryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
            list_display = ["order_id", "customer", "status"]
    """

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _InspectionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    """Base of the read-only pages: staff may look; nobody may add, change or delete.

    Which namespaces a page may show is decided by the subclass: StreamAdmin applies
    the user's grants, ClusterAdmin shows no namespace data.
    """

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

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
            # A query string, not a path: a correlation id is any string an event holds.
            path("correlation/", page(self.correlation_view), name="aether_correlation"),
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
            from_version = int(request.GET.get("from_version", "1"))
        except ValueError:
            raise Http404("invalid page") from None
        if not 0 <= from_version < 2**63:
            raise Http404("invalid page")
        from_version = max(1, from_version)
        try:
            store = get_existing_event_store(namespace)
            result, next_from = timeline_page(store, actor_id, from_version)
            latest = store.get_latest_version(actor_id)
            snapshot = store.get_latest_snapshot(actor_id)
        except UNAVAILABLE as exc:
            return self.error_page(request, exc)
        if not result.events and not result.errors and latest == 0:
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
            latest_version=latest,
            from_version=from_version,
            next_from=next_from,
            # Where the page before starts: versions rise by one or more, so a page
            # that starts EVENTS_PER_PAGE versions back holds no event after this
            # page's first (fewer events when versions have gaps; one cut short by its
            # bytes ends earlier, and its next link leads on from there).
            previous_from=max(1, from_version - EVENTS_PER_PAGE) if from_version > 1 else None,
            snapshot=snapshot,
            # A flag, not the class: a template calls what is callable, and an
            # aggregate class cannot be built without an actor id.
            aggregate=model is not None,
            aggregate_name=getattr(model, "__name__", ""),
            state=state,
            state_error=state_error,
        )

    def correlation_view(self, request: HttpRequest) -> HttpResponse:
        """Every event with one correlation id, in the namespaces the user may read (or
        in the one ``ns`` names), among the latest of each (inspection.CORRELATION_SCAN)."""
        correlation_id = request.GET.get("id", "").strip()
        namespace = request.GET.get("ns", "").strip()
        if not correlation_id or len(correlation_id) > MAX_CORRELATION_ID:
            raise Http404("give a correlation id: ?id=")
        access = access_for(request)
        if namespace:
            self.check_readable(request, namespace, NO_SUCH_NAMESPACE)
        try:
            namespaces = [namespace] if namespace else inspection.visible_namespaces(access)
            found = inspection.correlated_events(
                correlation_id,
                namespaces,
                scan=inspection.CORRELATION_SCAN,
                limit=inspection.CORRELATION_LIMIT,
            )
        except UNAVAILABLE as exc:
            return self.error_page(request, exc)
        return self.render(
            request,
            "correlation.html",
            title=f"Correlation {correlation_id}",
            correlation_id=correlation_id,
            namespace=namespace,
            searched=namespaces,
            found=found,
            scan=inspection.CORRELATION_SCAN,
            limit=inspection.CORRELATION_LIMIT,
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
        try:
            status = inspection.cluster_status(reader="admin")
        except Exception as exc:  # NATS down, bucket unreadable: say so, don't 500
            return self.error_page(request, exc)
        shard_map = status.shard_map
        grid = shard_grid(shard_map) if shard_map is not None else None
        return self.render(
            request,
            "shards.html",
            title="Shard map",
            shard_map=shard_map,
            grid=grid,
            num_shards=status.num_shards,
        )


@admin.register(DataSubject)
class DataSubjectAdmin(_InspectionAdmin):
    """Forget a data subject (docs/privacy.md): a form for its id, a confirmation page,
    then :func:`aether_django.privacy.forget`. Active staff holding
    ``aether_django.forget_subject`` only (superusers do); other staff get 403, and the
    entry is not on their index."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        user = request.user
        return bool(user.is_active and user.is_staff and may_forget_subjects(user))

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "",
                self.admin_site.admin_view(
                    require_http_methods(["GET", "HEAD", "POST"])(self.forget_view)
                ),
                name="aether_django_datasubject_changelist",
            ),
            *self.refused_urls(),
        ]

    def forget_view(self, request: HttpRequest) -> HttpResponse:
        """GET: the form. POST without ``confirm``: the confirmation page. POST with
        ``confirm=yes``: forget, then back to the form with the audit event's id."""
        if not self.has_view_permission(request):
            raise PermissionDenied("forgetting a data subject takes aether_django.forget_subject")
        from . import privacy

        subject_id = request.POST.get("subject_id", "") if request.method == "POST" else ""
        error = ""
        confirming = False
        if request.method == "POST":
            if not subject_id:
                error = "Give the id of the data subject to forget."
            elif request.POST.get("confirm") != "yes":
                confirming = True
            else:
                try:
                    audit = privacy.forget(subject_id)
                except (privacy.ForgetIncompleteError, *UNAVAILABLE) as exc:
                    error = f"Not finished: {exc}"
                else:
                    # The audit event's id, not the subject id: what was erased stays so.
                    done = f"Data subject forgotten: audit event {audit.id}"
                    self.message_user(request, done, messages.SUCCESS)
                    logger.info("admin: %s (by %s)", done, request.user.get_username())
                    return HttpResponseRedirect(
                        reverse("admin:aether_django_datasubject_changelist")
                    )
        response = self.render(
            request,
            "forget.html",
            title="Forget this data subject?" if confirming else "Forget a data subject",
            subject_id=subject_id,
            confirming=confirming,
            error=error,
            audit_namespace=privacy.AUDIT_NAMESPACE,
        )
        if error:
            response.status_code = 400
        return response


@admin.register(ProjectionInspection)
class ProjectionAdmin(_InspectionAdmin):
    """Every registered projection: where it is in each namespace, failures, skips.

    Staff read the page, with the rows of the namespaces they may read (as on the
    namespace pages). Only superusers act: rebuild, pause, resume and skip each have a
    confirmation page (GET) whose form is POSTed with its CSRF token; anyone else is
    refused with 403 on both. Nothing here edits an event: a skip records that the
    projection passes over one, the history stays as it is.
    """

    ACTIONS = ("rebuild", "pause", "resume", "skip")

    def get_urls(self) -> list[URLPattern]:
        actions = [
            path(
                f"p/<path:name>/{action}/",
                self.admin_site.admin_view(
                    require_http_methods(["GET", "HEAD", "POST"])(
                        functools.partial(self.action_view, action=action)
                    )
                ),
                name=f"aether_projection_{action}",
            )
            for action in self.ACTIONS
        ]
        return [
            path(
                "",
                self.safe_page(self.projections_view),
                name="aether_django_projectioninspection_changelist",
            ),
            *actions,
            *self.refused_urls(),
        ]

    # --- the page ------------------------------------------------------------------------
    def projections_view(self, request: HttpRequest) -> HttpResponse:
        access = access_for(request)
        projections = all_projections()
        try:
            rows = operations.statuses(projections)
        except UNAVAILABLE as exc:
            return self.error_page(request, exc)
        by_name: dict[str, list[operations.NamespaceStatus]] = {}
        for row in rows:
            by_name.setdefault(row.projection, []).append(row)
        found = []
        links = _Budget(FAILING_EVENT_LINKS)
        place = placement.locate()
        for projection in projections:
            meta = projection._meta
            mine = by_name.get(meta.name, [])
            shown = [row for row in mine if access.can_read(row.namespace)]
            found.append(
                {
                    "name": meta.name,
                    "label": meta.label,
                    "source": meta.source,
                    "models": ", ".join(m._meta.label for m in meta.models) or "none",
                    "database": meta.database,
                    "placement": place(projection)["placement"],
                    "problems": meta.problems,
                    "state": _overall_state(shown),
                    "namespaces": [self.namespace_row(row, links) for row in shown],
                    "hidden": len(mine) - len(shown),
                    "skips": self.skip_records(projection, access),
                }
            )
        return self.render(
            request,
            "projections.html",
            title="Projections",
            projections=found,
            can_act=request.user.is_superuser,
        )

    def namespace_row(self, row: operations.NamespaceStatus, links: _Budget) -> dict[str, Any]:
        """A namespace's row, with a link to the failing event's place in its actor's
        timeline when the projection stopped at one (while ``links`` lasts: each costs
        a read of the stream)."""
        link = event = None
        failed = row.state == ProjectionCheckpoint.FAILED and row.last_error_sequence
        if failed and links.take():
            assert row.last_error_sequence is not None
            try:
                event = inspection.event_at(row.namespace, row.last_error_sequence)
            except UNAVAILABLE:
                # The row still says where it stopped; only the link is missing.
                logger.warning("could not read the failing event", exc_info=True)
            if event is not None:
                link = reverse("admin:aether_actor", args=[row.namespace, event.actor_id])
                link += "?" + urlencode({"from_version": event.version})
        return {"status": row, "event": event, "event_link": link}

    @staticmethod
    def skip_records(projection: type[Projection], access: Any) -> list[ProjectionSkip]:
        meta = projection._meta
        records = (
            ProjectionSkip.objects.using(meta.database)
            .filter(projection=meta.name)
            .order_by("-skipped_at", "-id")
        )
        return [r for r in records[:SKIPS_SHOWN] if access.can_read(r.namespace)]

    # --- the actions -----------------------------------------------------------------------
    def action_view(self, request: HttpRequest, name: str, action: str) -> HttpResponse:
        """The confirmation page of ``action`` (GET), or the action itself (POST with the
        form's ``confirm``). Superusers only; the admin checked staff and CSRF."""
        if not request.user.is_superuser:
            raise PermissionDenied("only superusers act on projections")
        try:
            projection = get_projection(name)
        except ProjectionError:
            raise Http404("no such projection") from None
        meta = projection._meta
        form = {
            "namespace": request.POST.get("namespace", request.GET.get("namespace", "")),
            "sequence": request.POST.get("sequence", ""),
            "reason": request.POST.get("reason", ""),
        }
        if action == "skip" and request.method != "POST":
            # Pre-filled from the failure: the one event a skip may pass over (in the
            # namespace asked for, or in the only one the projection failed in).
            failed = ProjectionCheckpoint.objects.using(meta.database).filter(
                projection=meta.name, state=ProjectionCheckpoint.FAILED
            )
            if form["namespace"]:
                failed = failed.filter(namespace=form["namespace"])
            found = list(failed.values_list("namespace", "last_error_sequence")[:2])
            if len(found) == 1:
                form["namespace"], sequence = found[0]
                form["sequence"] = str(sequence or "")
        try:
            return self.confirm_or_act(request, projection, action, form)
        except UNAVAILABLE as exc:
            return self.error_page(request, exc)

    def confirm_or_act(
        self,
        request: HttpRequest,
        projection: type[Projection],
        action: str,
        form: dict[str, str],
    ) -> HttpResponse:
        meta = projection._meta
        error = ""
        if request.method == "POST":
            if request.POST.get("confirm") != "yes":
                error = "Not confirmed: nothing was done."
            else:
                try:
                    done = self.perform(request, projection, action, form)
                except (ProjectionError, ValueError) as exc:
                    error = str(exc)
                else:
                    self.message_user(request, done, messages.SUCCESS)
                    logger.info("admin: %s (by %s)", done, request.user.get_username())
                    return HttpResponseRedirect(
                        reverse("admin:aether_django_projectioninspection_changelist")
                    )
        response = self.render(
            request,
            "projection_confirm.html",
            title=f"{action.capitalize()} {meta.name}?",
            projection=meta,
            models=", ".join(m._meta.label for m in meta.models) or "none",
            action=action,
            form=form,
            error=error,
            namespaces=covered_namespaces(projection) if action != "skip" else [],
        )
        if error:
            response.status_code = 400
        return response

    @staticmethod
    def perform(
        request: HttpRequest, projection: type[Projection], action: str, form: dict[str, str]
    ) -> str:
        """Do ``action``; what was done, for the message. ProjectionError or ValueError
        (nothing done) for a skip that is not the one allowed."""
        name = projection._meta.name
        if action == "rebuild":
            # Clear and reset in one transaction, and leave the replay to the runners
            # that run it: a web request must not wait for a whole history.
            operations.reset(projection)
            return f"Reset {name}: its models are empty and the runners replay it from the start."
        if action == "pause":
            return f"Paused {name} in {operations.pause(projection)} namespace(s)."
        if action == "resume":
            return f"Resumed {name} in {operations.resume(projection)} namespace(s)."
        try:
            sequence = int(form["sequence"])
        except ValueError:
            raise ValueError("the sequence must be a number") from None
        record = operations.skip(
            projection,
            form["namespace"],
            sequence,
            reason=form["reason"],
            by=request.user.get_username(),
        )
        return f"{name} skipped {record.namespace}:{record.sequence} ({record.reason})."


#: Skip records the projections page shows of each projection, the latest first.
SKIPS_SHOWN = 20
#: Failing events the projections page reads to link them (one short bus subscription
#: each): a pattern source failed in hundreds of namespaces still loads quickly.
FAILING_EVENT_LINKS = 20


class _Budget:
    """How many more of something a page may do."""

    def __init__(self, left: int) -> None:
        self.left = left

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def _overall_state(rows: list[operations.NamespaceStatus]) -> str:
    """The worst state of a projection's namespaces: failed, paused, running, new."""
    states = {row.state for row in rows}
    for state in (ProjectionCheckpoint.FAILED, ProjectionCheckpoint.PAUSED, "running", "new"):
        if state in states:
            return state
    return "no namespace"


# --- the shard map as a picture ------------------------------------------------------
# One cell a shard, coloured by its owner, in rows of GRID_COLUMNS: 1,024 shards are a
# 32 x 32 square that fits a screen, where a list of them was 20,000 pixels tall.

GRID_COLUMNS = 32
#: One colour a node, in the order of the sorted node ids: 12 hues told apart at a glance
#: (Tableau 10 and two more), all light enough for the black outline of a moved shard to
#: show. A 13th node gets the first colour again, with a hatch (see HATCHES) and its
#: number written in its cells, so that no two nodes look alike however many there are.
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
    "#1b9e77",
    "#7570b3",
)
#: The overlay of the nodes past the palette: hatched one way, then the other, then both.
HATCHES = (
    "",
    "repeating-linear-gradient(45deg, rgba(0,0,0,.45) 0 2px, transparent 2px 5px)",
    "repeating-linear-gradient(-45deg, rgba(0,0,0,.45) 0 2px, transparent 2px 5px)",
    "repeating-linear-gradient(45deg, rgba(255,255,255,.6) 0 2px, transparent 2px 5px),"
    " repeating-linear-gradient(-45deg, rgba(0,0,0,.45) 0 2px, transparent 2px 5px)",
)


@dataclass(frozen=True, slots=True)
class GridNode:
    """A node of the legend: its colour, its hatch, and what it holds and gained."""

    node_id: str
    number: int  # 1-based, as the legend and hatched cells show it
    css: str  # the class of its cells
    colour: str
    hatch: str
    shards: list[int]
    moved_in: list[tuple[int, str | None]]  # (shard, previous owner) of the last rebalance

    @property
    def ranges(self) -> str:
        """Its shards as ranges (like "0-99, 205", with en dashes), for the text of the map."""
        return _ranges(self.shards)


@dataclass(frozen=True, slots=True)
class GridCell:
    shard: int
    node: GridNode | None  # None: a shard no node owns (no node alive at the last rebalance)
    moved: bool
    previous: str | None

    @property
    def title(self) -> str:
        owner = self.node.node_id if self.node else "no owner"
        text = f"shard {self.shard}: {owner}"
        if self.moved:
            text += f", moved from {self.previous}" if self.previous else ", newly assigned"
        return text


@dataclass(frozen=True, slots=True)
class ShardGrid:
    columns: int
    rows: list[tuple[int, list[GridCell]]]  # (first shard of the row, its cells)
    nodes: list[GridNode]
    moved: int  # shards of the last rebalance whose move the map records
    moves_recorded: bool  # False for a map of a version that did not record them


def shard_grid(shard_map: ShardMap) -> ShardGrid:
    """Lay ``shard_map`` out as rows of cells with a legend, its last moves marked."""
    node_ids = sorted(set(shard_map.assignment.values()))
    nodes: dict[str, GridNode] = {}
    for i, node_id in enumerate(node_ids):
        nodes[node_id] = GridNode(
            node_id=node_id,
            number=i + 1,
            css=f"aether-n{i}",
            colour=PALETTE[i % len(PALETTE)],
            hatch=HATCHES[(i // len(PALETTE)) % len(HATCHES)],
            shards=shard_map.shards_of(node_id),
            moved_in=[],
        )
    cells = []
    for shard in range(shard_map.num_shards):
        node = nodes.get(shard_map.assignment.get(shard, ""))
        moved = shard in shard_map.moved_from
        previous = shard_map.moved_from.get(shard)
        if moved and node is not None:
            node.moved_in.append((shard, previous))
        cells.append(GridCell(shard, node, moved, previous))
    # Square for small maps (100 shards: 10 x 10), GRID_COLUMNS wide for large ones.
    columns = max(1, min(GRID_COLUMNS, math.ceil(math.sqrt(shard_map.num_shards))))
    rows = [(start, cells[start : start + columns]) for start in range(0, len(cells), columns)]
    return ShardGrid(
        columns=columns,
        rows=rows,
        nodes=list(nodes.values()),
        moved=len(shard_map.moved_from),
        moves_recorded=shard_map.moves_recorded,
    )


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``"0-2, 5"``, with an en dash for the hyphen."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}\u2013{r[-1]}" for r in runs)
