"""``settings.AETHER``, read lazily with defaults, the way DRF reads REST_FRAMEWORK.

Only this module reads ``settings.AETHER``. Values are looked up on first access
and cached; the cache is dropped on ``setting_changed`` so ``override_settings``
works. Unknown keys are reported by the system check ``aether_django.E001``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import os
import threading
import warnings
from importlib import import_module
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from . import tracing
from .backends import BACKENDS, Backend

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Config = TypeVar("_Config", bound="DataclassInstance")

__all__ = [
    "DEFAULTS",
    "DEPRECATED",
    "IMPORT_STRINGS",
    "aether_settings",
    "backend",
    "config_from_settings",
    "configure_tracing",
    "privacy_master_key",
    "privacy_old_master_key",
    "store_config",
]

DEFAULTS: dict[str, Any] = {
    # Where NATS is. The environment variable AETHER_NATS_URL wins over this.
    "NATS_URL": "nats://127.0.0.1:4222",
    # Extra keyword arguments for nats.connect (credentials, TLS, ...).
    "NATS_OPTIONS": {},
    # The store and bus, chosen together: "nats" (JetStream), "memory" (this
    # process only; the store publishes saves to the bus), or the dotted path of
    # an object with store_class and bus_class (aether_django.backends.Backend).
    "BACKEND": "nats",
    # Deprecated: the store class alone (None: the BACKEND's). Use BACKEND.
    "STORE_CLASS": None,
    # Seconds one store operation may take before StoreUnavailableError.
    "TIMEOUT": 5.0,
    # Largest encoded event or snapshot accepted, in bytes.
    "MAX_EVENT_BYTES": 1024 * 1024,
    # First tokens of every event subject: {prefix}.{namespace}.{actor}.
    "SUBJECT_PREFIX": "aether.events",
    # Stream settings for each namespace's "{namespace}_events" stream.
    "STORAGE": "file",
    "REPLICAS": 1,
    # Whether the nats-server(s) run with `jetstream { sync_interval: always }`
    # (every write on disk before it is acknowledged). A client cannot see the
    # server's configuration, so the project says; only the system check W301
    # reads it.
    "NATS_SYNC_ALWAYS": False,
    "MAX_AGE": 0,
    "MAX_BYTES": -1,
    "DUPLICATE_WINDOW": 120,
    "IMMUTABLE": True,
    # Actors whose head each store keeps in memory to save a read per write.
    "HEAD_CACHE_SIZE": 10_000,
    # Namespaces whose store objects a process keeps; the least recently used go.
    "STORE_CACHE_SIZE": 256,
    # Deprecated: the bus class alone (None: the BACKEND's). Use BACKEND.
    "BUS_CLASS": None,
    # Deliveries a subscription buffers before it overflows (and ends, saying
    # where to resume).
    "BUS_BUFFER_SIZE": 10_000,
    # A subscription's callback that raises gets its delivery again this many
    # times, after BUS_HANDLER_BACKOFF seconds doubling each time; then the
    # subscription stops at that event (SubscriptionHandlerError).
    "BUS_HANDLER_RETRIES": 3,
    "BUS_HANDLER_BACKOFF": 0.5,
    # Bytes of stored events a subscription buffers before it overflows the same way
    # (a single larger event still fits into an empty buffer).
    "BUS_BUFFER_BYTES": 64 * 1024 * 1024,
    # This process's name in the cluster; None means host name plus a random
    # suffix. The environment variable AETHER_NODE_ID wins over it.
    "NODE_ID": None,
    # Cluster: seconds between heartbeats, seconds of silence after which a node
    # is failed (also the leader lease's lifetime), shards actors are hashed to,
    # and the key-value bucket holding members, lease and shard map.
    "HEARTBEAT_INTERVAL": 1.0,
    "FAILURE_TIMEOUT": 3.0,
    "NUM_SHARDS": 1024,
    "CLUSTER_BUCKET": "aether_cluster",
    # Projections: whether cluster nodes (aether_node, Celery workers) run them, each
    # in the node owning the shard its name hashes to (docs/projections.md#placement).
    # False: only `manage.py aether_projections run` runs them.
    "PROJECTIONS_IN_NODES": True,
    # WebSockets (EventsConsumer): sockets one user may hold open in one process
    # (more are closed with 4429), and subscriptions over all of them.
    "WS_MAX_SOCKETS_PER_USER": 20,
    "WS_MAX_SUBSCRIPTIONS_PER_USER": 200,
    # Seconds between checks of each socket's grants, account and session: a revoked
    # grant, a logout or a deactivated user takes effect within this time.
    "WS_ACCESS_CHECK_INTERVAL": 10.0,
    # Bytes of stored events each WebSocket subscription buffers (a catching-up one
    # then waits; a live one is too slow and ends), and bytes of encoded event frames
    # the process keeps so that an event reaching many sockets is encoded once.
    "WS_BUFFER_BYTES": 16 * 1024 * 1024,
    "WS_FRAME_CACHE_BYTES": 16 * 1024 * 1024,
    # Bearer token that lets a scraper read metrics/ without a staff session;
    # empty: staff sessions only.
    "METRICS_TOKEN": "",
    # Projections readyz requires: [] (none), a list of projection names, or "__all__".
    # Not ready while one of them is paused or failed in any namespace, or, when
    # READYZ_PROJECTION_MAX_LAG is a number, more events than that behind a stream head.
    "READYZ_PROJECTIONS": [],
    "READYZ_PROJECTION_MAX_LAG": None,
    # Where run_command (and the API's command endpoints) run a command: "auto" (on the
    # shard's owner while the cluster has live nodes, here otherwise), "always" (on the
    # owner) or "never" (here, with Model.objects.update).
    "COMMAND_ROUTING": "auto",
    # The HTTP API. Serve the OpenAPI schema to anonymous callers too (it describes
    # every endpoint; by default only authenticated users may read it).
    "API_SCHEMA_PUBLIC": False,
    # Accept PUT snapshot/ (a snapshot is loaded as an aggregate's state, so writing
    # one is writing state without an event; off unless a project needs it).
    "API_SNAPSHOT_WRITES": False,
    # Largest step an append through the API may take above the actor's current
    # version, so that no request can push an actor to the top of the version range.
    "API_MAX_VERSION_GAP": 1_000_000,
    # Encoded bytes of events one page of events/ holds at most (at least one event).
    "API_PAGE_BYTES": 4 * 1024 * 1024,
    # The DRF pagination classes of actors/ and events/ (cursor pages; a project's
    # subclass changes page sizes or the cursor, see docs/api.md#pagination).
    "API_ACTOR_PAGINATION_CLASS": "aether_django.api.pagination.ActorCursorPagination",
    "API_EVENT_PAGINATION_CLASS": "aether_django.api.pagination.EventCursorPagination",
    # OpenTelemetry spans, with W3C trace context in NATS message headers
    # (docs/operations.md#tracing): None, on when the "otel" extra is installed; True,
    # on (system check E601 without the extra); False, off.
    "TRACING": None,
    # Crypto-shredding (docs/privacy.md): the master key wrapping every data subject's
    # data key, as base64 of 32 bytes (the environment variable
    # AETHER_PRIVACY_MASTER_KEY wins over it); the key-value bucket holding the
    # wrapped data keys; and how long a process may use a data key it read before it
    # asks the bucket again (the longest a forgotten subject stays readable there).
    "PRIVACY_MASTER_KEY": "",
    # While the master key is rotated: the previous one (base64 of 32 bytes), which
    # still opens the data keys not re-wrapped yet (docs/privacy.md#rotating-the-master-key).
    # The environment variable AETHER_PRIVACY_OLD_MASTER_KEY wins over it.
    "PRIVACY_OLD_MASTER_KEY": "",
    "PRIVACY_BUCKET": "aether_privacy_keys",
    "PRIVACY_KEY_CACHE_SECONDS": 5.0,
}

#: Settings that name a class by dotted path.
IMPORT_STRINGS = frozenset(
    {"STORE_CLASS", "BUS_CLASS", "API_ACTOR_PAGINATION_CLASS", "API_EVENT_PAGINATION_CLASS"}
)

#: Settings kept for old projects, with what replaces them (system check W003).
DEPRECATED = {"STORE_CLASS": "BACKEND", "BUS_CLASS": "BACKEND"}

#: Environment variables that win over the settings they name.
ENVIRONMENT = {
    "NATS_URL": "AETHER_NATS_URL",
    "NODE_ID": "AETHER_NODE_ID",
    "PRIVACY_MASTER_KEY": "AETHER_PRIVACY_MASTER_KEY",
    "PRIVACY_OLD_MASTER_KEY": "AETHER_PRIVACY_OLD_MASTER_KEY",
}


def import_from_string(path: str, setting_name: str) -> Any:
    """Import a dotted path, saying which setting named it when that fails."""
    module_path, _, attr = path.rpartition(".")
    try:
        return getattr(import_module(module_path), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ImportError(f"could not import {path!r} for AETHER[{setting_name!r}]: {exc}") from exc


class AetherSettings:
    """Attribute access to AETHER settings: ``aether_settings.TIMEOUT``."""

    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        self.defaults = defaults or DEFAULTS
        self._cached: set[str] = set()

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(settings, "AETHER", None) or {}
        return dict(value)

    def __getattr__(self, name: str) -> Any:
        if name not in self.defaults:
            raise AttributeError(f"invalid AETHER setting: {name!r}")
        env = ENVIRONMENT.get(name)
        if env and os.environ.get(env):
            value: Any = os.environ[env]
        else:
            value = self.user_settings.get(name, self.defaults[name])
        if name in IMPORT_STRINGS and isinstance(value, str):
            value = import_from_string(value, name)
        self._cached.add(name)
        setattr(self, name, value)
        return value

    def reload(self) -> None:
        for name in self._cached:
            delattr(self, name)
        self._cached.clear()


aether_settings = AetherSettings()


def config_from_settings(config_class: type[_Config], **setting_names: str) -> _Config:
    """The dataclass ``config_class`` with each field read from its ``AETHER`` setting.

    A field's setting is its name upper-cased, or the one ``setting_names`` gives for
    it. Each value goes through the field's annotated type (``str``, ``int``,
    ``float`` or ``bool``), so a setting filled from the environment as a string
    still gives a number.
    """
    types = get_type_hints(config_class)
    return config_class(
        **{
            f.name: types[f.name](
                getattr(aether_settings, setting_names.get(f.name, f.name.upper()))
            )
            for f in dataclasses.fields(config_class)
        }
    )


def privacy_master_key() -> bytes:
    """The master key of crypto-shredding (AETHER["PRIVACY_MASTER_KEY"] or the
    environment's AETHER_PRIVACY_MASTER_KEY), decoded: exactly 32 bytes.

    The only place that reads it. Raises ImproperlyConfigured, naming what is wrong
    but never the value, when it is missing or not base64 of 32 bytes.
    """
    text = aether_settings.PRIVACY_MASTER_KEY
    if not text:
        raise ImproperlyConfigured(
            "no master key for personal data: set AETHER['PRIVACY_MASTER_KEY'] or the "
            "environment variable AETHER_PRIVACY_MASTER_KEY to base64 of 32 random bytes"
        )
    return _key_bytes(text, "PRIVACY_MASTER_KEY")


def privacy_old_master_key() -> bytes | None:
    """The previous master key while it is rotated (PRIVACY_OLD_MASTER_KEY), or None."""
    text = aether_settings.PRIVACY_OLD_MASTER_KEY
    return _key_bytes(text, "PRIVACY_OLD_MASTER_KEY") if text else None


@functools.lru_cache(maxsize=8)
def _key_bytes(text: object, name: str) -> bytes:
    # Cached by the setting's text: every save of personal data checks the key, and a
    # changed setting is another text (a refusal raises, so nothing wrong is cached).
    try:
        key = base64.b64decode(str(text).strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ImproperlyConfigured(
            f"the master key for personal data ({name}) is not valid base64"
        ) from None
    if len(key) != 32:
        raise ImproperlyConfigured(
            f"the master key for personal data ({name}) decodes to {len(key)} "
            "bytes; it must be 32 (AES-256)"
        )
    return key


def store_config() -> Any:
    """The StoreConfig that the current settings describe."""
    from .store.base import StoreConfig

    return config_from_settings(StoreConfig)


_backend: Backend | None = None
_backend_lock = threading.Lock()


def backend() -> Backend:
    """The :class:`~aether_django.backends.Backend` the settings choose, with classes.

    ``AETHER["BACKEND"]`` gives the pair; the deprecated ``STORE_CLASS`` and
    ``BUS_CLASS``, when set, replace its parts (with a DeprecationWarning), and the
    pair then behaves as it did before BACKEND existed: the store publishes to
    the bus only when both parts come from the backend.
    """
    global _backend
    resolved = _backend
    if resolved is not None:
        return resolved
    s = aether_settings
    name = s.BACKEND
    if isinstance(name, str):
        chosen = BACKENDS.get(name) or Backend.of(import_from_string(name, "BACKEND"))
    else:
        chosen = Backend.of(name)
    store_class, bus_class = chosen.store_class, chosen.bus_class
    store_publishes = chosen.store_publishes
    for setting in ("STORE_CLASS", "BUS_CLASS"):
        if s.user_settings.get(setting) is not None:
            warnings.warn(
                f'AETHER["{setting}"] is deprecated: set AETHER["BACKEND"] ("nats", "memory", '
                "or the dotted path of a Backend) to choose the store and the bus together",
                DeprecationWarning,
                stacklevel=3,
            )
            store_publishes = False
    if s.STORE_CLASS is not None:
        store_class = s.STORE_CLASS
    if s.BUS_CLASS is not None:
        bus_class = s.BUS_CLASS
    if isinstance(store_class, str):
        store_class = import_from_string(store_class, "BACKEND")
    if isinstance(bus_class, str):
        bus_class = import_from_string(bus_class, "BACKEND")
    resolved = Backend(store_class, bus_class, store_publishes)
    with _backend_lock:
        _backend = resolved
    return resolved


def configure_tracing() -> bool:
    """Switch :mod:`aether_django.tracing` on or off as ``AETHER["TRACING"]`` says; return
    whether it is on.

    A value that cannot be honoured (not True, False or None; True without the
    ``otel`` extra) leaves tracing off, and the system check E601 says why.
    """
    try:
        value = aether_settings.TRACING
    except (TypeError, ValueError):
        return tracing.configure(False)  # AETHER is not a dict (system check E002)
    if value is not None and not isinstance(value, bool):
        return tracing.configure(False)
    try:
        return tracing.configure(value)
    except ImportError:
        return tracing.configure(False)


_reload_hooks: list[Any] = []


def on_reload(hook: Any) -> Any:
    """Register a function to call whenever AETHER settings change (once, however often
    it is registered)."""
    if hook not in _reload_hooks:
        _reload_hooks.append(hook)
    return hook


def _reload(*, setting: str, **_: Any) -> None:
    global _backend
    if setting == "AETHER":
        aether_settings.reload()
        with _backend_lock:
            _backend = None
        for hook in _reload_hooks:
            hook()


setting_changed.connect(_reload)
