"""URLs of the example shop app."""

from django.urls import path

from . import views

app_name = "shop"

urlpatterns = [
    path("", views.events_page, name="events"),
]
