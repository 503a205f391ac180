"""Views that append an event from sync and from async code."""

from django.http import HttpRequest, JsonResponse

from aether_django.events import Event
from aether_django.store import get_event_store


def sync_append(request: HttpRequest, namespace: str, actor_id: str) -> JsonResponse:
    store = get_event_store(namespace)
    version = store.get_latest_version(actor_id) + 1
    stored = store.save_event(Event(event_type="Touched", actor_id=actor_id, version=version))
    return JsonResponse({"version": stored.version, "sequence": stored.sequence})


async def async_append(request: HttpRequest, namespace: str, actor_id: str) -> JsonResponse:
    store = get_event_store(namespace)
    version = await store.aget_latest_version(actor_id) + 1
    stored = await store.asave_event(
        Event(event_type="Touched", actor_id=actor_id, version=version)
    )
    return JsonResponse({"version": stored.version, "sequence": stored.sequence})


def order_place(request: HttpRequest, actor_id: str) -> JsonResponse:
    """A sync view running an aggregate command (the test domain's Order)."""
    from .aggregates.domain import Order

    order = Order.objects.update(actor_id, lambda o: o.place(request.GET["customer"]), create=True)
    return JsonResponse({"status": order.status, "version": order.version})


async def order_add_line(request: HttpRequest, actor_id: str) -> JsonResponse:
    """An async view running an aggregate command."""
    from .aggregates.domain import Order

    order = await Order.objects.aupdate(actor_id, lambda o: o.add_line(request.GET["sku"], 1, 10))
    return JsonResponse({"total": order.total_cents, "version": order.version})
