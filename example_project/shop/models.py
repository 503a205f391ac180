"""The shop's read model: one row per order, written only by OrderSummaryProjection.

The Order aggregate (aggregates.py) is the truth and is loaded one order at a time;
this table is what lists, filters and pages over orders (the orders page, the API at
``/api/shop/orders/``). It is rebuilt from the events by
``manage.py aether_projections rebuild shop.order-summary``.
"""

from __future__ import annotations

from django.db import models

#: The statuses an order goes through (the Order aggregate's), for filters and forms.
STATUSES = ["placed", "paid", "shipped", "cancelled"]


class OrderSummary(models.Model):
    """An order as the list shows it: who, where it stands, what it comes to, and when."""

    order_id = models.CharField(max_length=255, unique=True, help_text="The order's actor id.")
    customer = models.CharField(max_length=200, db_index=True)
    status = models.CharField(
        max_length=20, db_index=True, choices=[(status, status) for status in STATUSES]
    )
    line_count = models.PositiveIntegerField(default=0)
    total_cents = models.BigIntegerField(default=0)
    #: The version of the order's last event applied (its history's length).
    version = models.PositiveIntegerField(default=0)
    #: The timestamps the events carry (when they were recorded), not when the
    #: projection happened to apply them: a rebuild writes the same values.
    placed_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        # Newest first; the order id breaks ties so that pages never overlap.
        ordering = ["-placed_at", "order_id"]
        verbose_name = "order summary"
        verbose_name_plural = "order summaries"

    def __str__(self) -> str:
        return f"{self.order_id} ({self.status})"
