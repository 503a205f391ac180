"""System checks for ``settings.AETHER``, the declared aggregate classes, the API's schema
and the WebSocket routes' origin check."""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any, cast

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import FieldDoesNotExist
from django.utils.module_loading import import_string

from .conf import DEFAULTS, DEPRECATED, aether_settings, backend
from .extras import has_module


@register("aether_django")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E001: unknown AETHER keys (usually typos); E002: AETHER that is not a dict."""
    value = getattr(settings, "AETHER", {})
    if not isinstance(value, dict):
        return [
            Error(
                "settings.AETHER must be a dict.",
                id="aether_django.E002",
            )
        ]
    return [
        Error(
            f"Unknown setting AETHER[{key!r}].",
            hint="Known settings: " + ", ".join(sorted(DEFAULTS)),
            id="aether_django.E001",
        )
        for key in sorted(set(value) - set(DEFAULTS))
    ]


@register("aether_django")
def check_backend(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E003: a BACKEND (or deprecated class setting) that cannot be loaded;
    W003: the deprecated STORE_CLASS / BUS_CLASS settings are set."""
    if not isinstance(getattr(settings, "AETHER", {}), dict):
        return []  # E002
    user = aether_settings.user_settings
    messages: list[CheckMessage] = [
        Warning(
            f"AETHER[{old!r}] is deprecated.",
            hint=(
                f'Set AETHER[{new!r}] instead: "nats" (JetStream store and bus), "memory" '
                "(both in this process, for tests), or the dotted path of a Backend."
            ),
            id="aether_django.W003",
        )
        for old, new in DEPRECATED.items()
        if user.get(old) is not None
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # W003 says it already
        try:
            backend()
        except (ImportError, TypeError) as exc:
            messages.append(
                Error(
                    f"AETHER['BACKEND'] cannot be used: {exc}",
                    hint='Use "nats", "memory", or the dotted path of an object with '
                    "store_class and bus_class (aether_django.backends.Backend).",
                    id="aether_django.E003",
                )
            )
    return messages


@register("aether_django")
def check_tracing(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E601: an AETHER["TRACING"] that cannot be honoured (tracing is then off)."""
    if not isinstance(getattr(settings, "AETHER", {}), dict):
        return []  # E002
    value = aether_settings.user_settings.get("TRACING")
    if value is not None and not isinstance(value, bool):
        problem = f"must be True, False or None, not {value!r}"
    elif value is True and not has_module("opentelemetry"):
        problem = "is True but opentelemetry-api is not installed"
    else:
        return []
    return [
        Error(
            f"AETHER['TRACING'] {problem}; tracing is off.",
            hint="pip install 'aether-django[otel]' to trace, or set AETHER['TRACING'] to "
            "False (None: on when the extra is installed).",
            id="aether_django.E601",
        )
    ]


@register("aether_django")
def check_command_routing(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E004: a COMMAND_ROUTING that is not one of its values (a command would fail)."""
    value = getattr(settings, "AETHER", {})
    if not isinstance(value, dict) or "COMMAND_ROUTING" not in value:
        return []
    if value["COMMAND_ROUTING"] in ("auto", "always", "never"):
        return []
    return [
        Error(
            f"AETHER['COMMAND_ROUTING'] is {value['COMMAND_ROUTING']!r}.",
            hint='Use "auto" (route while the cluster has live nodes), "always" or "never".',
            id="aether_django.E004",
        )
    ]


@register("aether_django")
def check_durability(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W301/W302: in production (DEBUG off), what one replica's acknowledged save survives.

    With one replica an acknowledgement means one server has the event. On file
    storage that server syncs to disk every ``sync_interval`` (2 minutes by
    default), so an OS crash or power loss within that window loses acknowledged
    events, unless it syncs every write. The server's configuration is not
    visible to a client (JetStream's account information carries limits only, and
    the monitoring port is not the application's to reach, least of all while
    checks run, perhaps with no server up), so ``AETHER["NATS_SYNC_ALWAYS"]``
    declares it.
    """
    if settings.DEBUG or not isinstance(getattr(settings, "AETHER", {}), dict):
        return []
    try:
        replicas = int(aether_settings.REPLICAS)
    except (TypeError, ValueError):
        return []
    if replicas > 1:
        return []
    if aether_settings.STORAGE == "memory":
        return [
            Warning(
                "AETHER['STORAGE'] is 'memory' with one replica: an acknowledged save is "
                "lost when the nats-server stops, crashes or restarts.",
                hint="Use 'file' storage in production, or AETHER['REPLICAS'] = 3 on a "
                "three-server cluster. See docs/deployment.md.",
                id="aether_django.W302",
            )
        ]
    if aether_settings.NATS_SYNC_ALWAYS:
        return []
    return [
        Warning(
            "AETHER['REPLICAS'] is 1 on a nats-server that does not sync every write: "
            "an acknowledged save survives a crash of nats-server, but not an OS crash "
            "or power loss within the server's sync_interval (2 minutes by default).",
            hint="Run nats-server with `jetstream { sync_interval: always }` and set "
            "AETHER['NATS_SYNC_ALWAYS'] = True, or run three servers with "
            "AETHER['REPLICAS'] = 3. See docs/deployment.md.",
            id="aether_django.W301",
        )
    ]


@register("aether_django")
def check_aggregates(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E101-E106, W102: aggregate declarations that cannot work as written."""
    from .aggregates import all_aggregates, recorded_event_types

    messages: list[CheckMessage] = []
    by_namespace: dict[str, list[str]] = defaultdict(list)
    for model in all_aggregates():
        meta = model._meta
        if meta.namespace is None:
            messages.append(
                Error(
                    f"Aggregate {meta.label} has no Meta.namespace.",
                    hint="Set Meta.namespace, or Meta.abstract = True for a base class.",
                    obj=model,
                    id="aether_django.E101",
                )
            )
        else:
            by_namespace[meta.namespace].append(meta.label)
        for event_type in model._duplicate_handlers:
            messages.append(
                Error(
                    f"Aggregate {meta.label} has two handlers for {event_type!r}.",
                    obj=model,
                    id="aether_django.E103",
                )
            )
        for problem in meta.problems:
            messages.append(
                Error(f"Aggregate {meta.label}: {problem}.", obj=model, id="aether_django.E104")
            )
        for problem in meta.command_problems:
            messages.append(
                Error(
                    f"Aggregate {meta.label}: {problem}.",
                    hint="Declare as commands (@command or Meta.commands) only public "
                    "methods of your own that check the aggregate's rules and record events.",
                    obj=model,
                    id="aether_django.E106",
                )
            )
        messages += _check_personal_data(model)
        recorded = recorded_event_types(model)
        if recorded is not None:
            upcast_from = {event_type for event_type, _ in model._upcasters}
            for event_type in sorted(set(model._handlers) - recorded - upcast_from):
                messages.append(
                    Warning(
                        f"Aggregate {meta.label} handles {event_type!r} but no command records it.",
                        hint="Remove the handler, or silence aether_django.W102 if the "
                        "event is recorded with a computed type.",
                        obj=model,
                        id="aether_django.W102",
                    )
                )
    for namespace, labels in sorted(by_namespace.items()):
        if len(labels) > 1:
            messages.append(
                Error(
                    f"Namespace {namespace!r} has several aggregate classes: "
                    + ", ".join(sorted(labels))
                    + ".",
                    hint="Give each aggregate class its own namespace.",
                    id="aether_django.E105",
                )
            )
    return messages


def _check_personal_data(model: Any) -> list[CheckMessage]:
    """E701-E702: Meta.personal_data that names nothing, or cannot be protected."""
    from django.core.exceptions import ImproperlyConfigured

    from .conf import privacy_master_key, privacy_old_master_key

    meta = model._meta
    if not meta.personal_data:
        return []
    messages: list[CheckMessage] = []
    for event_type in sorted(set(meta.personal_data) - set(model._handlers)):
        messages.append(
            Error(
                f"Aggregate {meta.label}: Meta.personal_data names {event_type!r}, "
                "an event type it has no handler for.",
                hint="Name the event types whose data fields are personal.",
                obj=model,
                id="aether_django.E701",
            )
        )
    if not isinstance(getattr(settings, "AETHER", None) or {}, dict):
        return messages  # E002 says so; no key can be read from it
    try:
        privacy_master_key()
        privacy_old_master_key()  # set only while rotating; must be valid then
    except ImproperlyConfigured as exc:
        messages.append(
            Error(
                f"Aggregate {meta.label} declares personal data, and {exc}.",
                hint='Generate one with: python -c "import base64, os; '
                'print(base64.b64encode(os.urandom(32)).decode())"; keep it secret and '
                "backed up apart from the streams (docs/privacy.md#key-management).",
                obj=model,
                id="aether_django.E702",
            )
        )
    return messages


@register("aether_django")
def check_projections(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E501-E503, E505, W501: projection declarations that cannot work as written."""
    from django.db import connections, router

    from .aggregates import all_aggregates, recorded_event_types
    from .projections import all_projections

    messages: list[CheckMessage] = []
    by_name: dict[str, list[str]] = defaultdict(list)
    for projection in all_projections():
        meta = projection._meta
        by_name[meta.name].append(meta.label)
        for problem in meta.problems:
            messages.append(
                Error(
                    f"Projection {meta.label}: {problem}.",
                    hint="A projection declared wrongly is never run.",
                    obj=projection,
                    id="aether_django.E501",
                )
            )
        if meta.database not in connections.settings:
            messages.append(
                Error(
                    f"Projection {meta.label}: Meta.database {meta.database!r} is not in "
                    "DATABASES.",
                    obj=projection,
                    id="aether_django.E503",
                )
            )
        else:
            for model in meta.models:
                written = router.db_for_write(model)
                if written != meta.database:
                    messages.append(
                        Error(
                            f"Projection {meta.label}: {model._meta.label} is written to "
                            f"{written!r}, not to the projection's database {meta.database!r}.",
                            hint="The handlers' writes and the checkpoint commit in one "
                            "transaction only on one database: route the model there or "
                            "set Meta.database.",
                            obj=projection,
                            id="aether_django.E503",
                        )
                    )
        for model, field in meta.subject_fields.items():
            try:
                model._meta.get_field(field)
            except FieldDoesNotExist:
                messages.append(
                    Error(
                        f"Projection {meta.label}: Meta.subject_fields names "
                        f"{model._meta.label}.{field}, which is not a field.",
                        hint="forget() deletes a data subject's rows by that field: name "
                        "the field holding the subject id.",
                        obj=projection,
                        id="aether_django.E505",
                    )
                )
        # Event types the aggregates of the covered namespaces record (and upcast from).
        recorded: set[str] = set()
        known = False
        for aggregate in all_aggregates():
            namespace = aggregate._meta.namespace
            if namespace is None or not meta.covers(namespace):
                continue
            types = recorded_event_types(aggregate)
            if types is None:
                known = False
                break
            known = True
            recorded |= types | {event_type for event_type, _ in aggregate._upcasters}
        if known:
            for event_type in sorted(set(projection._handlers) - recorded):
                messages.append(
                    Warning(
                        f"Projection {meta.label} handles {event_type!r} but no aggregate of "
                        f"{meta.source!r} records it.",
                        hint="Check the event type's spelling, or silence aether_django.W501 "
                        "if the events are written without an aggregate.",
                        obj=projection,
                        id="aether_django.W501",
                    )
                )
    for name, labels in sorted(by_name.items()):
        if len(labels) > 1:
            messages.append(
                Error(
                    f"Several projections are called {name!r}: " + ", ".join(sorted(labels)) + ".",
                    hint="Give each projection its own Meta.name: the name keys its checkpoints.",
                    id="aether_django.E502",
                )
            )
    messages.extend(_check_readyz_projections())
    return messages


def _check_readyz_projections() -> list[CheckMessage]:
    """E504: READYZ_PROJECTIONS or READYZ_PROJECTION_MAX_LAG that readyz cannot follow."""
    if not isinstance(getattr(settings, "AETHER", {}), dict):
        return []  # E002
    from .errors import ProjectionError
    from .projections import operations

    problems: list[str] = []
    try:
        operations.named(aether_settings.READYZ_PROJECTIONS, "READYZ_PROJECTIONS")
    except ProjectionError as exc:
        problems.append(str(exc))
    lag = aether_settings.READYZ_PROJECTION_MAX_LAG
    if lag is not None and (isinstance(lag, bool) or not isinstance(lag, int) or lag < 0):
        problems.append(f"READYZ_PROJECTION_MAX_LAG must be None or an integer >= 0, not {lag!r}")
    return [
        Error(
            f"AETHER: {problem}.",
            hint="readyz answers 503 while this setting is wrong.",
            id="aether_django.E504",
        )
        for problem in problems
    ]


@register("aether_django", Tags.database)
def check_projection_databases(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """W502: a projection's database is an SQLite file not in WAL mode.

    A database check (``manage.py check --database ALIAS``, ``migrate``): it asks the
    file itself, since WAL mode is a property of the file and stays once set.
    """
    from django.db import DatabaseError, connections

    from .projections import all_projections

    messages: list[CheckMessage] = []
    aliases = {p._meta.database for p in all_projections()} & set(databases or ())
    for alias in sorted(aliases):
        connection = connections[alias]
        if connection.vendor != "sqlite" or cast(Any, connection).is_in_memory_db():
            continue
        try:
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA journal_mode")
                mode = str(cursor.fetchone()[0]).lower()
        except DatabaseError:
            continue  # a database that cannot be read has checks of its own to fail
        if mode != "wal":
            messages.append(
                Warning(
                    f"The projections' database {alias!r} is SQLite in journal mode "
                    f"{mode!r}, not WAL: readers wait for the runner's batches and the "
                    "runner for them.",
                    hint=f'Set DATABASES[{alias!r}]["OPTIONS"]["init_command"] = '
                    '"PRAGMA journal_mode=WAL" (see docs/projections.md, SQLite and '
                    "PostgreSQL).",
                    id="aether_django.W502",
                )
            )
    return messages


@register("aether_django")
def check_api_schema(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W201: the API's OpenAPI schema needs drf-spectacular's AutoSchema as DRF's default."""
    from django.apps import apps

    if not apps.is_installed("rest_framework") or not has_module("drf_spectacular"):
        # Without drf-spectacular (the [api-schema] extra) the endpoint is not mounted.
        return []
    configured = (getattr(settings, "REST_FRAMEWORK", None) or {}).get("DEFAULT_SCHEMA_CLASS")
    if configured == "drf_spectacular.openapi.AutoSchema":
        return []
    return [
        Warning(
            "The aether_django API's schema endpoint needs drf-spectacular.",
            hint='Set REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = '
            '"drf_spectacular.openapi.AutoSchema".',
            id="aether_django.W201",
        )
    ]


@register("aether_django", Tags.security)
def check_websocket_origin(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W401: settings.ASGI_APPLICATION serves aether's WebSocket consumer with no origin
    validator in front of it.

    Browsers send a site's cookies with a WebSocket opened by any other site, and
    WebSockets have no CSRF check: without Channels' ``OriginValidator`` (or
    ``AllowedHostsOriginValidator``) a page elsewhere can open a socket with the
    user's session and read every namespace the user may read (cross-site WebSocket
    hijacking). The check imports the application and follows its routers and
    middleware (``application``, ``inner``, ``app``, URLRouter routes); an application
    it cannot see into gets no warning.
    """
    path = getattr(settings, "ASGI_APPLICATION", None)
    if not isinstance(path, str) or not path:
        return []
    try:
        from channels.routing import ProtocolTypeRouter
        from channels.security.websocket import OriginValidator

        from .consumers import EventsConsumer
    except ImportError:  # no Channels: no WebSocket routes of aether's
        return []
    try:
        application = import_string(path)
    except ImportError:
        return []  # Channels reports a wrong ASGI_APPLICATION when it serves
    if not isinstance(application, ProtocolTypeRouter):
        return []
    websocket = application.application_mapping.get("websocket")
    if websocket is None:
        return []
    if not _unguarded(websocket, OriginValidator, EventsConsumer, set()):
        return []
    return [
        Warning(
            f"{path} routes WebSockets to aether_django's EventsConsumer with no origin "
            "validator: a page on any other site can open a socket with a logged-in "
            "user's session cookie and read their namespaces (cross-site WebSocket "
            "hijacking).",
            hint="Wrap the WebSocket routes in channels.security.websocket."
            "AllowedHostsOriginValidator (or OriginValidator), as aether_django.routing's "
            "docstring shows. See docs/security.md.",
            id="aether_django.W401",
        )
    ]


#: The attributes through which ASGI middleware reaches the application it wraps.
_INNER_ATTRIBUTES = ("application", "inner", "app")


def _unguarded(app: Any, validator: type, consumer: type, seen: set[int]) -> bool:
    """Whether ``app`` reaches a ``consumer`` with no ``validator`` on the way."""
    if id(app) in seen:
        return False
    seen.add(id(app))
    if isinstance(app, validator):
        return False
    consumer_class = getattr(app, "consumer_class", None)
    if isinstance(consumer_class, type) and issubclass(consumer_class, consumer):
        return True
    routes = getattr(app, "routes", None)
    if isinstance(routes, list | tuple):
        for route in routes:
            callback = getattr(route, "callback", None)
            if callback is not None and _unguarded(callback, validator, consumer, seen):
                return True
    return any(
        _unguarded(inner, validator, consumer, seen)
        for attribute in _INNER_ATTRIBUTES
        if (inner := getattr(app, attribute, None)) is not None and callable(inner)
    )
