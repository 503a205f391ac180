"""The shop's read model in the admin: to look at, not to edit.

OrderSummary rows are written by OrderSummaryProjection alone (an edit here would
be one no event explains, undone by the next rebuild), so the admin offers no add,
change or delete; orders change through their commands on the orders page.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import OrderSummary


@admin.register(OrderSummary)
class OrderSummaryAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
