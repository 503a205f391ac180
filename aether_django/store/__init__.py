"""Event stores. ``get_event_store(namespace)`` returns the configured store for a namespace.

The submodules (``base``, ``memory``, ``jetstream``) are primitives that know
nothing of Django settings. This package's ``get_event_store`` is the thin facade
that wires them to ``settings.AETHER`` and the process runtime, the way
``channels.layers.get_channel_layer()`` does for channel layers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from .base import EventStore, NamespaceInfo, StoreConfig
from .memory import InMemoryEventStore

__all__ = [
    "EventStore",
    "InMemoryEventStore",
    "NamespaceInfo",
    "StoreConfig",
    "alist_namespaces",
    "get_event_store",
    "get_existing_event_store",
    "list_namespaces",
    "reset_event_stores",
]

#: The stores built so far, least recently used first; at most STORE_CACHE_SIZE.
_stores: OrderedDict[str, EventStore] = OrderedDict()
_lock = threading.Lock()


def _build(namespace: str) -> EventStore:
    from ..conf import backend, store_config
    from ..runtime import get_runtime

    chosen = backend()
    # The store's constructor is no part of the EventStore interface (a store of
    # another backend may take other options), so it is called untyped.
    store_class: Any = chosen.store_class
    options: dict[str, Any] = {"runtime": get_runtime(), "config": store_config()}
    if chosen.store_publishes:
        options["publish"] = chosen.publish_saved
    store: EventStore = store_class(namespace, **options)
    return store


def _cached(namespace: str) -> EventStore | None:
    with _lock:
        store = _stores.get(namespace)
        if store is not None:
            _stores.move_to_end(namespace)
        return store


def _keep(namespace: str, store: EventStore) -> EventStore:
    """Cache ``store`` (or the one another thread cached first) and drop the least
    recently used beyond STORE_CACHE_SIZE. A dropped store only loses its caches (the
    head hints, the checked stream): the next call builds a new one."""
    from ..conf import aether_settings

    with _lock:
        kept = _stores.setdefault(namespace, store)
        _stores.move_to_end(namespace)
        while len(_stores) > max(1, int(aether_settings.STORE_CACHE_SIZE)):
            _stores.popitem(last=False)
    return kept


def get_event_store(namespace: str) -> EventStore:
    """The process's store for ``namespace`` (reused while it stays in the cache).

    Builds the store class of ``AETHER["BACKEND"]`` (JetStream by default) with the namespace,
    the process runtime and the store settings, and keeps at most
    ``AETHER["STORE_CACHE_SIZE"]`` of them, the most recently used.
    """
    store = _cached(namespace)
    if store is not None:
        return store
    return _keep(namespace, _build(namespace))


def get_existing_event_store(namespace: str) -> EventStore:
    """A store for reading ``namespace`` that keeps nothing for a namespace that does
    not exist.

    The cached store when there is one; otherwise a new one, cached only when the
    namespace exists (has a stream). Reads of names that exist nowhere, which anyone
    with a wildcard grant can make up without end, so fill no cache. Such a store
    reads as empty, like any store of a namespace without events.
    """
    store = _cached(namespace)
    if store is not None:
        return store
    store = _build(namespace)
    return _keep(namespace, store) if store.exists() else store


async def alist_namespaces() -> list[str]:
    """Every namespace the configured store holds events for, sorted."""
    from ..conf import backend, store_config
    from ..runtime import get_runtime

    store_class = backend().store_class
    assert not isinstance(store_class, str)  # conf.backend() imported it
    namespaces: list[str] = await store_class.alist_namespaces(
        runtime=get_runtime(), config=store_config()
    )
    return namespaces


def list_namespaces() -> list[str]:
    """Sync twin of :func:`alist_namespaces`."""
    from ..runtime import get_runtime

    return get_runtime().run(alist_namespaces())


def reset_event_stores() -> None:
    """Forget every store built so far (settings changed, or a test wants a clean slate)."""
    with _lock:
        _stores.clear()
