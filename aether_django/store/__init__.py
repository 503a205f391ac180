"""Event stores. ``get_event_store(namespace)`` returns the configured store for a namespace.

The submodules (``base``, ``memory``, ``jetstream``) are primitives that know
nothing of Django settings. This package's ``get_event_store`` is the thin facade
that wires them to ``settings.AETHER`` and the process runtime, the way
``channels.layers.get_channel_layer()`` does for channel layers.
"""

from __future__ import annotations

import threading

from .base import EventStore, NamespaceInfo, StoreConfig
from .memory import InMemoryEventStore

__all__ = [
    "EventStore",
    "InMemoryEventStore",
    "NamespaceInfo",
    "StoreConfig",
    "alist_namespaces",
    "get_event_store",
    "list_namespaces",
    "reset_event_stores",
]

_stores: dict[str, EventStore] = {}
_lock = threading.Lock()


def get_event_store(namespace: str) -> EventStore:
    """The process's store for ``namespace`` (one instance per namespace, reused).

    Builds ``AETHER["STORE_CLASS"]`` (JetStream by default) with the namespace,
    the process runtime and the store settings.
    """
    store = _stores.get(namespace)
    if store is not None:
        return store
    from ..conf import aether_settings, store_config
    from ..runtime import get_runtime

    with _lock:
        store = _stores.get(namespace)
        if store is None:
            store_class = aether_settings.STORE_CLASS
            store = store_class(namespace, runtime=get_runtime(), config=store_config())
            _stores[namespace] = store
    return store


async def alist_namespaces() -> list[str]:
    """Every namespace the configured store holds events for, sorted."""
    from ..conf import aether_settings, store_config
    from ..runtime import get_runtime

    store_class = aether_settings.STORE_CLASS
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


def _on_settings_changed() -> None:
    from ..runtime import reset_runtime

    reset_event_stores()
    reset_runtime()


def _connect_reload_hook() -> None:
    from ..conf import on_reload

    on_reload(_on_settings_changed)


_connect_reload_hook()
