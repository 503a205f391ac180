"""URLs of the API: ``path("api/aether/", include("aether_django.api.urls"))``."""

from __future__ import annotations

from django.apps import apps
from django.urls import URLPattern, URLResolver, include, path, re_path

from . import commands, views
from .openapi import SPECTACULAR

app_name = "aether_api"

# Actor ids may hold any printable character, "/" included.
# "[\s\S]" and not ".": an actor id with a line break must reach the view, which
# refuses it with a JSON 400, instead of matching no URL (Django's HTML 404).
ACTOR = r"namespaces/(?P<namespace>[^/]+)/actors/(?P<actor_id>[\s\S]+)"

urlpatterns: list[URLPattern | URLResolver] = [
    path("namespaces/", views.NamespaceListView.as_view(), name="namespaces"),
    path("namespaces/<str:namespace>/", views.NamespaceDetailView.as_view(), name="namespace"),
    path("namespaces/<str:namespace>/actors/", views.ActorListView.as_view(), name="actors"),
    re_path(rf"^{ACTOR}/events/$", views.EventListView.as_view(), name="events"),
    re_path(rf"^{ACTOR}/version/$", views.VersionView.as_view(), name="version"),
    re_path(rf"^{ACTOR}/snapshot/$", views.SnapshotView.as_view(), name="snapshot"),
    re_path(rf"^{ACTOR}/state/$", views.StateView.as_view(), name="state"),
    # Aggregates whose commands a project registered (aether_django.api.commands).
    path("aggregates/", include(commands.lazy_urls())),  # type: ignore[arg-type]
    path("cluster/", views.ClusterView.as_view(), name="cluster"),
    path("cluster/shards/", views.ShardsView.as_view(), name="shards"),
    path("privacy/forget/", views.ForgetView.as_view(), name="privacy-forget"),
]

if SPECTACULAR:
    # The schema needs drf-spectacular (the [api-schema] extra); without it the rest of
    # the API works and reversing "aether_api:schema" fails. Swagger UI and Redoc also
    # need its templates, so its app in INSTALLED_APPS.
    from .schema import RedocView, SchemaView, SwaggerView

    urlpatterns.append(path("schema/", SchemaView.as_view(), name="schema"))
    if apps.is_installed("drf_spectacular"):
        urlpatterns += [
            path("schema/swagger-ui/", SwaggerView.as_view(), name="schema-swagger-ui"),
            path("schema/redoc/", RedocView.as_view(), name="schema-redoc"),
        ]
