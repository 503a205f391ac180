"""The shop's order API: ``GET /api/shop/orders/`` lists the OrderSummary read model.

A read-only viewset (``ReadOnlyModelViewSet``: list and retrieve). An order changes
only through the Order aggregate's commands, whose events are the truth; the rows
here are derived from them by OrderSummaryProjection, and a row written through the
API would be one no event explains, undone by the next rebuild. Writes go through
the orders page (or ``Order.objects.update``), not through this API.

* Authentication as in the rest of the API (the project's
  ``DEFAULT_AUTHENTICATION_CLASSES``: the admin's session or HTTP basic auth), and
  the caller must hold a read grant on the orders' namespace (NamespaceGrant,
  superusers: all), as reading those orders' events through ``/api/aether/`` would
  require: the rows are those events, summed up.
* Filters (django-filter): ``?status=paid`` (one of the order statuses; another
  value answers 400), ``?customer=Ann`` (exact), ``?customer_contains=an`` (any
  case), and ``?ordering=`` on ``placed_at``, ``updated_at``, ``total_cents`` or
  ``order_id`` (``-`` for descending).
* Pages: ``{"count", "next", "previous", "results"}``, ``?page=`` and
  ``?page_size=`` (at most 200); a page past the end answers 404.
"""

from __future__ import annotations

from typing import Any

import django_filters
from rest_framework import serializers, viewsets
from rest_framework.filters import OrderingFilter
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.routers import SimpleRouter

from aether_django.access import access_for
from aether_django.api import commands

from .aggregates import Order
from .models import STATUSES, OrderSummary


class OrderSummarySerializer(serializers.ModelSerializer[OrderSummary]):
    """One order as the list shows it."""

    class Meta:
        model = OrderSummary
        fields = [
            "order_id",
            "customer",
            "status",
            "line_count",
            "total_cents",
            "version",
            "placed_at",
            "updated_at",
        ]
        read_only_fields = fields


# django-filter ships no type information: its FilterSet is Any to mypy.
class OrderSummaryFilter(django_filters.FilterSet):  # type: ignore[misc]
    """``status`` (a choice: an unknown status is an error, not an empty list),
    ``customer`` (exact) and ``customer_contains`` (a part, in any case)."""

    status = django_filters.ChoiceFilter(choices=[(s, s) for s in STATUSES])
    customer = django_filters.CharFilter(field_name="customer")
    customer_contains = django_filters.CharFilter(field_name="customer", lookup_expr="icontains")

    class Meta:
        model = OrderSummary
        fields = ["status", "customer", "customer_contains"]


#: The namespace whose events the rows sum up (and whose read grant the API requires).
NAMESPACE = str(Order._meta.namespace)


class OrderPagination(PageNumberPagination):
    """Numbered pages with a count: the read model is a table, counting it is cheap."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class CanReadOrders(BasePermission):
    """The caller holds a read grant on the orders' namespace (superusers: all)."""

    message = f"reading orders takes a read grant on the namespace {NAMESPACE!r}"

    def has_permission(self, request: Any, view: Any) -> bool:
        return access_for(request).can_read(NAMESPACE)


class OrderSummaryViewSet(viewsets.ReadOnlyModelViewSet[OrderSummary]):
    """List and retrieve orders from the read model (see the module docstring)."""

    queryset = OrderSummary.objects.all()
    serializer_class = OrderSummarySerializer
    # Two classes, not one "&" of them: each refusal then says which check failed.
    permission_classes = [IsAuthenticated, CanReadOrders]
    pagination_class = OrderPagination
    filter_backends = [django_filters.rest_framework.DjangoFilterBackend, OrderingFilter]
    filterset_class = OrderSummaryFilter
    ordering_fields = ["placed_at", "updated_at", "total_cents", "order_id"]
    # An order id may hold "/" (any printable character): retrieve matches the rest.
    lookup_field = "order_id"
    lookup_value_regex = r"[\s\S]+"


# The Order aggregate's commands over HTTP, at
# /api/aether/aggregates/orders/{order_id}/commands/{command}/ (docs/api.md#commands):
# "place" starts an order, the others need one that exists.
commands.register(Order, creating=["place"])

router = SimpleRouter()
router.register("orders", OrderSummaryViewSet, basename="order")
urlpatterns = router.urls
