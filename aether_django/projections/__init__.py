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

from ..privacy import add_forget_step as _add_forget_step
from . import forgetting as _forgetting
from .base import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_ON_ERROR,
    ForgetContext,
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
    "ForgetContext",
    "ProcessContext",
    "ProcessManager",
    "Projection",
    "ProjectionContext",
    "all_projections",
    "get_projection",
    "on",
]

# forget() deletes the read-model rows of a data subject too; the privacy layer below
# cannot import projections, so this package hands it the step.
_add_forget_step(_forgetting.forget_read_models)
