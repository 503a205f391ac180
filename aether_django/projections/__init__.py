"""Projections: ordinary Django models kept up to date from the events.

::

    from aether_django.projections import Projection, on

    class OrderSummaryProjection(Projection):
        class Meta:
            source = "orders"
            models = [OrderSummary]

        @on("OrderPlaced")
        def placed(self, event, context):
            OrderSummary.objects.create(order_id=event.actor_id, status="placed")

Declared in ``<app>/projections.py`` (autodiscovered), run by
``manage.py aether_projections run``. A :class:`ProcessManager` is a projection whose
handlers issue commands to aggregates, each exactly once (.process). See
docs/projections.md.
"""

from __future__ import annotations

from .base import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_ON_ERROR,
    Projection,
    ProjectionContext,
    all_projections,
    get_projection,
    on,
)
from .process import ProcessContext, ProcessManager

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_ON_ERROR",
    "ProcessContext",
    "ProcessManager",
    "Projection",
    "ProjectionContext",
    "all_projections",
    "get_projection",
    "on",
]
