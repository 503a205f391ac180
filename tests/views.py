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
