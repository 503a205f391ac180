"""An aggregate's commands over HTTP: one registration, a serializer per command, idempotency keys.

A project exposes an aggregate's commands with one declaration, typically in an app's
``api.py`` or the project's ``urls.py``::

    from aether_django.api import commands

    commands.register(Order)  # every command of Order (Meta.commands / @command)
    commands.register(
        Order,
        commands=["place", "add_line", "pay"],
        creating=["place"],  # may start an actor that has no events yet
        serializers={"place": PlaceSerializer},  # else derived from the signature
    )

Registered commands are served by the API (``aether_django.api.urls``):

* ``POST aggregates/{namespace}/{actor_id}/commands/{command}/`` with the keyword
  arguments as a JSON object runs the command (on the shard's owner when the cluster
  runs: :func:`aether_django.sharding.run_command`) and answers the actor's version,
  state and the command's stored events;
* ``GET aggregates/{namespace}/{actor_id}/`` answers the actor's version and state.

An ``Idempotency-Key`` header becomes the command id: the same key with the same body
answers the first response again without running the command; with another body, 422
``idempotency_key_reused``. See docs/api.md#commands.

:class:`CommandRouter` is the registry (``router`` is the one the API serves); like a
DRF router, its ``urls`` may also be included elsewhere.
"""

from __future__ import annotations

import dataclasses
import decimal
import hashlib
import inspect
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.urls import URLPattern, path, re_path, register_converter
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from ..aggregates import (
    Aggregate,
    AggregateDoesNotExist,
    DomainError,
    UpdateRetriesExhausted,
    get_aggregate_class,
)
from ..sharding import CommandError, CommandResult, ShardUnavailableError, run_command
from . import serializers as s
from .exceptions import (
    CommandConflict,
    CommandFailed,
    CommandRefused,
    IdempotencyKeyReused,
    ShardUnavailable,
)
from .openapi import OpenApiParameter, OpenApiResponse, extend_schema
from .views import _NS_ERRORS, _WRITE_ERRORS, NamespaceView, load_state

__all__ = [
    "FINGERPRINT_KEY",
    "IDEMPOTENCY_KEY_HEADER",
    "AggregateStateView",
    "CommandRouter",
    "CommandView",
    "Registration",
    "argument_serializer",
    "register",
    "router",
    "unregister",
]

#: The request header whose value becomes the command id.
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
#: Longest idempotency key accepted (a command id is stored in every event it records).
MAX_IDEMPOTENCY_KEY_LENGTH = 255
#: Metadata key of the fingerprint (command and arguments) of a keyed command's events.
FINGERPRINT_KEY = "idempotencyFingerprint"


# --- serializers from signatures -----------------------------------------------------------


def _field_for(annotation: Any, **options: Any) -> serializers.Field[Any, Any, Any, Any]:
    """The DRF field for a type hint (with ``options``: required, allow_null, default);
    JSONField for anything it does not know.

    Options go to the constructor: DRF copies declared fields by calling it again with
    the same arguments, so attributes set afterwards would be lost.
    """
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in arguments if a is not type(None)]
        options["allow_null"] = True
        if len(rest) == 1:
            return _field_for(rest[0], **options)
        return serializers.JSONField(**options)
    if origin is typing.Literal and all(isinstance(a, str | int) for a in arguments):
        return serializers.ChoiceField(choices=list(arguments), **options)
    if annotation is bool:  # before int: bool is an int to Python, not to a client
        return serializers.BooleanField(**options)
    if annotation is int:
        return serializers.IntegerField(**options)
    if annotation is float:
        return serializers.FloatField(**options)
    if annotation is decimal.Decimal:
        return serializers.DecimalField(max_digits=None, decimal_places=None, **options)
    if annotation is str:
        # The value as sent: the command decides whether blank or padded is valid.
        return serializers.CharField(allow_blank=True, trim_whitespace=False, **options)
    if annotation in (list, tuple) or origin in (list, tuple, typing.Sequence):
        child = _field_for(arguments[0]) if arguments else serializers.JSONField()
        return serializers.ListField(child=child, **options)
    if annotation is dict or origin in (dict, typing.Mapping, Mapping):
        if len(arguments) == 2 and arguments[0] is str:
            return serializers.DictField(child=_field_for(arguments[1]), **options)
        return serializers.DictField(child=serializers.JSONField(), **options)
    return serializers.JSONField(**options)


def _nullable(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(hint)
    )


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", text))


def argument_serializer(model: type[Aggregate], command: str) -> type[serializers.Serializer[Any]]:
    """A serializer for ``command``'s keyword arguments, from its signature and hints.

    ``str``, ``int``, ``float``, ``bool``, ``Decimal``, ``list[...]``, ``dict[str, ...]``
    and ``Literal[...]`` get their DRF field; ``X | None`` allows null; a parameter with
    a default is optional (left out, the default applies), and so is one that may be
    None (left out, it is None); anything else (no hint, a class of the project's) is a
    ``JSONField``, passed on as it was sent. Raises ImproperlyConfigured for a
    positional-only parameter, which no keyword can fill.
    """
    method = getattr(model, command)
    signature = inspect.signature(method)
    try:
        hints = typing.get_type_hints(method)
    except Exception:  # a hint that names what the module cannot resolve
        hints = {}
    fields: dict[str, Any] = {}
    for index, (name, parameter) in enumerate(signature.parameters.items()):
        if index == 0 and name == "self":
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue  # not offered: every argument of a request is named and checked
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise ImproperlyConfigured(
                f"{model.__name__}.{command}: parameter {name!r} is positional-only, so no "
                "request can fill it; make it a keyword parameter or give a serializer"
            )
        hint = hints.get(name, Any)
        if parameter.default is not parameter.empty:
            fields[name] = _field_for(hint, required=False)
        elif _nullable(hint):
            fields[name] = _field_for(hint, default=None)  # left out: None
        else:
            fields[name] = _field_for(hint)
    name = f"{_camel(model._meta.namespace or model.__name__)}{_camel(command)}Arguments"
    doc = inspect.getdoc(method) or f"The arguments of {model.__name__}.{command}."
    return type(name, (serializers.Serializer,), {**fields, "__doc__": doc})


class ActorIdConverter:
    """An actor id in a path: any characters, "/" and line breaks included (the view
    checks it and answers 400 for an invalid one, rather than no route matching)."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ActorIdConverter, "aether_actor_id")


# --- the registry --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Registration:
    """One aggregate's commands as the API serves them."""

    model: type[Aggregate]
    #: Command name -> the serializer of its arguments.
    serializers: Mapping[str, type[serializers.Serializer[Any]]]
    #: Commands that may start an actor with no events (``update(..., create=True)``).
    creating: frozenset[str]

    @property
    def namespace(self) -> str:
        return str(self.model._meta.namespace)

    @property
    def commands(self) -> list[str]:
        return sorted(self.serializers)


class CommandRouter:
    """Which aggregates' commands the API serves, and their URLs (like a DRF router)."""

    def __init__(self) -> None:
        self._registry: dict[str, Registration] = {}

    def register(
        self,
        model: type[Aggregate],
        *,
        commands: Iterable[str] | None = None,
        creating: Iterable[str] = (),
        serializers: Mapping[str, type[serializers.Serializer[Any]]] | None = None,
    ) -> Registration:
        """Serve ``commands`` of ``model`` (all its declared commands by default).

        ``creating`` names the commands that may start a new actor; any other command
        on an actor with no events answers 404. ``serializers`` gives a serializer of
        the arguments for some commands; the others get :func:`argument_serializer`.
        Registering the same class again replaces its registration; another class of
        the same namespace raises ImproperlyConfigured, as does a name that is not one
        of the class's commands.
        """
        namespace = model._meta.namespace
        if namespace is None or model._meta.abstract:
            raise ImproperlyConfigured(f"{model.__name__} has no Meta.namespace to serve")
        names = sorted(model._meta.commands) if commands is None else list(commands)
        explicit = dict(serializers or {})
        creating = frozenset(creating)
        for label, listed in (
            ("commands", names),
            ("creating", creating),
            ("serializers", explicit),
        ):
            unknown = sorted(set(listed) - set(model._meta.commands))
            if unknown:
                raise ImproperlyConfigured(
                    f"register({model.__name__}, {label}=...): {', '.join(map(repr, unknown))} "
                    f"not among its commands ({', '.join(sorted(model._meta.commands))}); "
                    "mark a method with @command or list it in Meta.commands"
                )
        for label, listed in (("creating", creating), ("serializers", explicit)):
            missing = sorted(set(listed) - set(names))
            if missing:
                raise ImproperlyConfigured(
                    f"register({model.__name__}, {label}=...): {', '.join(map(repr, missing))} "
                    "not among the commands registered"
                )
        current = self._registry.get(namespace)
        if current is not None and current.model._meta.label != model._meta.label:
            raise ImproperlyConfigured(
                f"namespace {namespace!r} is served already for {current.model._meta.label}"
            )
        registration = Registration(
            model=model,
            serializers={n: explicit.get(n) or argument_serializer(model, n) for n in names},
            creating=creating,
        )
        self._registry[namespace] = registration
        return registration

    def unregister(self, model: type[Aggregate]) -> None:
        """Stop serving ``model``'s commands (nothing happens if they were not served)."""
        current = self._registry.get(str(model._meta.namespace))
        if current is not None and current.model is model:
            del self._registry[current.namespace]

    def get(self, namespace: str) -> Registration | None:
        """The registration serving ``namespace``, if any."""
        return self._registry.get(namespace)

    @property
    def registry(self) -> dict[str, Registration]:
        return dict(self._registry)

    @property
    def urls(self) -> list[URLPattern]:
        """The URL patterns, relative to where they are included (``aggregates/`` in the
        API): one per registered command (each with its own request body in the OpenAPI
        schema), then the general ones, which also serve commands registered after the
        URLs were first read (those are missing from the schema only)."""
        patterns: list[URLPattern] = []
        for registration in sorted(self._registry.values(), key=lambda r: r.namespace):
            for name in registration.commands:
                view = _command_view(registration, name)
                patterns.append(
                    path(
                        f"{registration.namespace}/<aether_actor_id:actor_id>/commands/{name}/",
                        view.as_view(router=self),
                        {"namespace": registration.namespace, "command": name},
                        name=f"command-{registration.namespace}-{name}",
                    )
                )
        patterns += [
            re_path(
                r"^(?P<namespace>[^/]+)/(?P<actor_id>[\s\S]+)/commands/(?P<command>[^/]+)/$",
                CommandView.as_view(router=self),
                name="aggregate-command",
            ),
            re_path(
                r"^(?P<namespace>[^/]+)/(?P<actor_id>[\s\S]+)/$",
                AggregateStateView.as_view(router=self),
                name="aggregate",
            ),
        ]
        return patterns


class _LazyURLConf:
    """A URLconf whose patterns are the router's when Django first reads them (after the
    project's URLconf, with the registrations in it, was imported)."""

    app_name = None

    def __init__(self, router: CommandRouter) -> None:
        self.router = router

    @property
    def urlpatterns(self) -> list[URLPattern]:
        return self.router.urls


#: The registry the API serves (``aether_django.api.urls`` includes its URLs).
router = CommandRouter()
#: ``router.register`` and ``router.unregister``.
register = router.register
unregister = router.unregister


def lazy_urls(of: CommandRouter | None = None) -> _LazyURLConf:
    """``include()`` this to serve a router's URLs as registered when they are first read."""
    return _LazyURLConf(of or router)


# --- idempotency ---------------------------------------------------------------------------------


def idempotency_key(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, checked (400 for an unusable one), or None."""
    key = request.META.get("HTTP_IDEMPOTENCY_KEY")
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable():
        raise ValidationError(
            {
                IDEMPOTENCY_KEY_HEADER: [
                    f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters"
                ]
            }
        )
    return str(key)


def fingerprint(command: str, body: Mapping[str, Any]) -> str:
    """What makes two requests with one key the same: the command and the body, as
    canonical JSON (keys sorted), hashed."""
    canonical = json.dumps(
        {"command": command, "arguments": body},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- the views -----------------------------------------------------------------------------------


def _registration(router: CommandRouter, namespace: str) -> Registration:
    registration = router.get(namespace)
    if registration is None or get_aggregate_class(namespace) is not registration.model:
        raise NotFound(f"no aggregate's commands are served for namespace {namespace!r}")
    return registration


_ACTOR_ID = OpenApiParameter("actor_id", str, location="path", description="the actor's id")
_KEY = OpenApiParameter(
    IDEMPOTENCY_KEY_HEADER,
    str,
    location="header",
    required=False,
    description=(
        "becomes the command id: the same key and body answer the first response again "
        "without running the command; another body answers 422 idempotency_key_reused"
    ),
)
_REQUEST_ID = OpenApiParameter(
    "X-Request-ID",
    str,
    location="header",
    required=False,
    description="the correlation id of the events the request stores (echoed back)",
)
_COMMAND_ERRORS = {
    **_WRITE_ERRORS,
    404: OpenApiResponse(
        response=s.ErrorSerializer,
        description="no such namespace (or no grant), aggregate, command or actor",
    ),
    409: OpenApiResponse(
        response=s.ErrorSerializer,
        description="conflict: every attempt met another writer of the actor; try again",
    ),
    422: OpenApiResponse(
        response=s.ErrorSerializer,
        description=(
            "domain_error: the aggregate refused the command (nothing was stored); "
            "idempotency_key_reused: the key was used with another body; or a stored event "
            "that cannot be decoded or applied"
        ),
    ),
}


class AggregateStateView(NamespaceView):
    """``GET aggregates/{namespace}/{actor_id}/``: a served aggregate's version and state."""

    router: CommandRouter = router

    @extend_schema(responses={200: s.AggregateStateSerializer, **_NS_ERRORS})
    def get(self, request: Request, namespace: str, actor_id: str) -> Response:
        """The actor's version and state, for an aggregate whose commands are served."""
        namespace = self.namespace(request, namespace)
        _registration(self.router, namespace)
        found = load_state(namespace, self.actor(actor_id))
        return Response(
            {"actor_id": found.actor_id, "version": found.version, "state": found.state}
        )


class CommandView(NamespaceView):
    """``POST aggregates/{namespace}/{actor_id}/commands/{command}/``: run a command."""

    router: CommandRouter = router

    @extend_schema(exclude=True)  # each command is described by its own route
    def post(self, request: Request, namespace: str, actor_id: str, command: str) -> Response:
        """Run the command with the body's keyword arguments."""
        # The permission class checked the name and the grant already (a namespace the
        # caller may not see answers 404 before this); what is served is checked next,
        # then what an append would need besides (can_create for a new namespace).
        registration = _registration(self.router, namespace)
        self.store(request, namespace, write=True)
        serializer_class = registration.serializers.get(command)
        if serializer_class is None:
            raise NotFound(
                f"{command!r} is not a command served for {namespace!r} "
                f"(served: {', '.join(registration.commands)})"
            )
        actor_id = self.actor(actor_id)
        key = idempotency_key(request)
        body = request.data
        if not isinstance(body, dict):
            raise ValidationError({"non_field_errors": ["expected a JSON object of arguments"]})
        serializer = serializer_class(data=body)
        valid = serializer.is_valid()
        # A key the command does not take is an error, not ignored: it is most likely a
        # misspelt optional argument, which would otherwise silently take its default.
        unknown = {
            n: ["not an argument of this command"] for n in body if n not in serializer.fields
        }
        if unknown or not valid:
            raise ValidationError({**serializer.errors, **unknown})
        arguments = dict(serializer.validated_data)
        marked = fingerprint(command, body)
        try:
            result = run_command(
                namespace,
                actor_id,
                command,
                arguments,
                command_id=key,
                metadata={FINGERPRINT_KEY: marked} if key else None,
                create=command in registration.creating,
            )
        except DomainError as exc:
            raise CommandRefused(str(exc)) from None
        except AggregateDoesNotExist:
            raise NotFound("no such actor") from None
        except UpdateRetriesExhausted as exc:
            raise CommandConflict(str(exc)) from None
        except ShardUnavailableError as exc:
            raise ShardUnavailable(str(exc)) from None
        except CommandError as exc:
            raise CommandFailed(str(exc)) from None
        if key is not None and (result.replayed or result.events):
            self._check_same(result, marked)
        response = Response(result.as_dict(), status=status.HTTP_200_OK)
        if result.replayed:
            response["Idempotent-Replayed"] = "true"
        return response

    def _check_same(self, result: CommandResult, marked: str) -> None:
        """A key must have been used with this very command and body.

        Checked on a repeat, and on fresh results too (where it holds, the events
        carrying this request's fingerprint): an owner of an earlier release does not
        say that it found the command id applied.
        """
        recorded = {e.metadata.get(FINGERPRINT_KEY) for e in result.events}
        if recorded != {marked}:
            raise IdempotencyKeyReused()


def _command_view(registration: Registration, command: str) -> type[CommandView]:
    """A CommandView for one command, described in the schema with its own arguments."""
    arguments = registration.serializers[command]
    creating = command in registration.creating
    model = registration.model

    @extend_schema(
        operation_id=f"aggregates_{registration.namespace}_{command}",
        summary=f"{model.__name__}.{command}",
        description=(
            (inspect.getdoc(getattr(model, command)) or "")
            + "\n\nRuns the command (on the shard's owner when the cluster runs) and "
            "answers the actor's version and state and the command's stored events."
            + (" May start an actor that has no events yet." if creating else "")
        ).strip(),
        parameters=[_ACTOR_ID, _KEY, _REQUEST_ID],
        request=arguments,
        responses={200: s.CommandResultSerializer, **_COMMAND_ERRORS},
        tags=[f"aggregates/{registration.namespace}"],
    )
    def post(
        self: CommandView, request: Request, namespace: str, actor_id: str, command: str
    ) -> Response:
        return CommandView.post(self, request, namespace, actor_id, command)

    name = f"{_camel(registration.namespace)}{_camel(command)}CommandView"
    return type(name, (CommandView,), {"post": post, "__doc__": CommandView.__doc__})
