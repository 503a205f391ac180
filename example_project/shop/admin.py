"""The shop's read model in the admin: to look at, not to edit.

OrderSummary rows are written by OrderSummaryProjection alone (an edit here would
be one no event explains, undone by the next rebuild), so the admin offers no add,
change or delete; orders change through their commands on the orders page.
"""

from __future__ import annotations

from django.contrib import admin

from aether_django.admin import ReadOnlyAdminMixin

from .models import OrderSummary


@admin.register(OrderSummary)
class OrderSummaryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "order_id",
        "customer",
        "status",
        "line_count",
        "total_cents",
        "version",
        "placed_at",
        "updated_at",
    ]
    list_filter = ["status"]
    search_fields = ["order_id", "customer"]
    ordering = ["-placed_at", "order_id"]
