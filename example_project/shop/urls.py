"""URLs of the example shop app: the events page, the orders page and the live feed."""

from django.urls import path

from . import live_views, order_views, views

app_name = "shop"

urlpatterns = [
    path("", views.events_page, name="events"),
    path("orders/", order_views.orders_page, name="orders"),
    path("live/", live_views.live_page, name="live"),
    # ``path``, not ``str``: an actor id may contain slashes ("orders/a/b/" is "a/b").
    path("orders/<path:actor_id>/", order_views.order_page, name="order"),
]
