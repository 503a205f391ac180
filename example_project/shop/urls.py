"""URLs of the example shop app: the events page and the orders page."""

from django.urls import path

from . import order_views, views

app_name = "shop"

urlpatterns = [
    path("", views.events_page, name="events"),
    path("orders/", order_views.orders_page, name="orders"),
    # ``path``, not ``str``: an actor id may contain slashes ("orders/a/b/" is "a/b").
    path("orders/<path:actor_id>/", order_views.order_page, name="order"),
]
