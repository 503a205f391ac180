"""URLs used by the runtime tests: one sync and one async view that save events."""

from django.urls import path

from . import views

urlpatterns = [
    path("sync/<str:namespace>/<str:actor_id>/", views.sync_append),
    path("async/<str:namespace>/<str:actor_id>/", views.async_append),
]
