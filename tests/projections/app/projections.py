"""Projections of the test app (autodiscovered), and a factory for tests that need their own."""

from __future__ import annotations

import threading
import time
from typing import Any

from aether_django.events import Event
from aether_django.projections import Projection, ProjectionContext, on

from .models import Applied, OrderSummary

#: Sequences a LedgerProjection refuses while listed here ("the bug"); a test removes
#: one to stand for the fix.
POISON: set[tuple[str, int]] = set()
_lock = threading.Lock()


class OrderSummaryProjection(Projection):
    """The issue's example, on a namespace of its own."""

    class Meta:
        source = "proj-shop"
        models = [OrderSummary]
        name = "order-summary"

    @on("OrderPlaced")
    def placed(self, event: Event, context: ProjectionContext) -> None:
        OrderSummary.objects.using(context.database).create(
            order_id=event.actor_id,
            namespace=context.namespace,
            customer=event.data.get("customer", ""),
            status="placed",
        )

    @on("LineAdded")
    def line_added(self, event: Event, context: ProjectionContext) -> None:
        row = OrderSummary.objects.using(context.database).get(order_id=event.actor_id)
        row.lines += int(event.data.get("quantity", 1))
        row.save(update_fields=["lines"])

    @on("OrderPaid")
    def paid(self, event: Event, context: ProjectionContext) -> None:
        OrderSummary.objects.using(context.database).filter(order_id=event.actor_id).update(
            status="paid"
        )


def order_summary(database: str) -> type[OrderSummaryProjection]:
    """The example projection on another database (its own name, its own checkpoints)."""
    Meta = type(
        "Meta",
        (),
        {
            "source": "proj-shop",
            "models": [OrderSummary],
            "name": f"order-summary-{database}",
            "database": database,
        },
    )
    return type(f"OrderSummary_{database}", (OrderSummaryProjection,), {"Meta": Meta})


class LedgerBase(Projection):
    """Writes an Applied row for every event; refuses the events listed in POISON."""

    class Meta:
        abstract = True

    @on("Tick")
    def tick(self, event: Event, context: ProjectionContext) -> None:
        if (context.namespace, context.sequence) in POISON:
            raise ValueError(f"cannot handle {context.namespace}:{context.sequence}")
        # A slow handler, for a batch still running when its node is asked to stop.
        if delay := event.data.get("sleep"):
            time.sleep(float(delay))
        Applied.objects.using(context.database).create(
            projection=context.projection,
            namespace=context.namespace,
            sequence=context.sequence,
            actor_id=event.actor_id,
            event_type=event.event_type,
            data=dict(event.data),
            node=context.node or "",
        )

    # LineAdded arrives upcast from ItemAdded when the namespace's aggregate has the
    # upcaster: the row records the type the handler saw.
    @on("LineAdded")
    def line(self, event: Event, context: ProjectionContext) -> None:
        self.tick(event, context)


def ledger(
    source: str, name: str, *, base: type[LedgerBase] = LedgerBase, **meta: Any
) -> type[LedgerBase]:
    """A ``base`` (LedgerBase) subclass reading ``source``, called ``name``."""
    options: dict[str, Any] = {"source": source, "models": [Applied], "name": name}
    options.setdefault("on_error", {"retries": 2, "backoff": 0.05})
    options.update(meta)
    Meta = type("Meta", (), options)
    return type(f"Ledger_{name.replace('-', '_')}", (base,), {"Meta": Meta})
