"""OpenTelemetry spans, and W3C trace context in NATS message headers, at no cost when off.

Tracing needs the optional ``otel`` extra (``opentelemetry-api``). The rest of the
package calls this module only behind one check of :data:`enabled`::

    if tracing.enabled:
        tracing.inject(headers)

so without the extra (or with ``AETHER["TRACING"] = False``) a save, a delivery or a
frame costs that one module attribute read and nothing else. When the extra is
installed but the process has configured no ``TracerProvider`` (the API's default is a
proxy that records nothing), :func:`span` hands out a shared no-op span and
:func:`inject` adds no header, after one look at the provider: no span object, no
context switch, no header.

The trace context travels as the headers of the global propagator (W3C
``traceparent`` and ``tracestate``, and ``baggage`` when there is some): on every
stored event's NATS message (so a stored event carries the context of the save that
wrote it, and its deliveries, projection batches and WebSocket frames join that trace)
and on a routed command's request. An event read back carries them as
``Event.trace_context`` (not part of the JSON body).

Pure: imports neither Django nor nats; conf.py decides whether tracing is on
(``AETHER["TRACING"]``) and calls :func:`configure`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from time import monotonic
from types import TracebackType
from typing import Any

from .extras import missing_extra

try:
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:  # the otel extra is not installed (or its import is blocked)
    _propagate = None  # type: ignore[assignment]
    _trace = None  # type: ignore[assignment]

__all__ = [
    "CLIENT",
    "CONSUMER",
    "INTERNAL",
    "NOOP",
    "PRODUCER",
    "SERVER",
    "available",
    "carried",
    "configure",
    "describe",
    "enabled",
    "extract",
    "inject",
    "recording",
    "span",
    "start_span",
]

#: Span kinds, named as OpenTelemetry names them (callers need not import it).
INTERNAL = "INTERNAL"
CLIENT = "CLIENT"
SERVER = "SERVER"
PRODUCER = "PRODUCER"
CONSUMER = "CONSUMER"

#: Instrumentation scope of every span made here.
SCOPE = "aether_django"
#: Links one span gets at most (the SDK's default limit): a projection batch of
#: thousands of events links the first traces it holds, without extracting the rest.
MAX_LINKS = 128

#: Whether tracing is on: the one check every call site makes first.
enabled = False

#: Seconds between two looks at the global tracer provider while it is the API's
#: non-recording default: a provider set later (rather than at start-up, before the
#: first save) is used within this time, or at once after :func:`configure`.
LOOK_INTERVAL = 1.0

# The tracer of the provider given to configure(), or of the global provider once one
# that records is set (None until then); and when to look at the global one again.
_tracer: Any = None
_next_look = 0.0
# The header names the global propagator reads and writes ("traceparent", ...).
_fields: frozenset[str] = frozenset()


def available() -> bool:
    """Whether the ``otel`` extra (``opentelemetry-api``) can be imported."""
    return _trace is not None


class _NoopSpan:
    """What :func:`span` and :func:`start_span` give when nothing records: does nothing,
    as a context manager (sync and async) and as a span."""

    __slots__ = ()

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    async def __aenter__(self) -> _NoopSpan:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def update_name(self, name: str) -> None:
        return None

    def end(self) -> None:
        return None

    def is_recording(self) -> bool:
        return False


#: The shared no-op span (also a context manager): ``with tracing.span(...) if
#: tracing.enabled else tracing.NOOP``.
NOOP = _NoopSpan()


def configure(on: bool | None = None, *, tracer_provider: Any = None) -> bool:
    """Switch tracing on or off; return whether it is on.

    ``on``: True (MissingExtraError without the ``otel`` extra), False, or None for
    "on when the extra is installed" (the default at import). ``tracer_provider``:
    record with this provider instead of the global one (``trace.get_tracer_provider()``,
    which a project sets up once, or ``opentelemetry-instrument`` does). In a Django
    process a change of ``settings.AETHER`` configures tracing again from the settings
    (:func:`aether_django.conf.configure_tracing`), back to the global provider.
    """
    global enabled, _tracer, _fields, _next_look
    if on is None:
        on = available()
    elif on and not available():
        raise missing_extra(__name__, "opentelemetry-api", "otel")
    _tracer = None
    _next_look = 0.0
    if on:
        _fields = frozenset(_propagate.get_global_textmap().fields)
        if tracer_provider is not None:
            _tracer = tracer_provider.get_tracer(SCOPE)
    enabled = bool(on)
    return enabled


def _recording_tracer() -> Any:
    """The tracer, or None while the global provider is the API's non-recording proxy."""
    global _next_look
    tracer = _tracer
    if tracer is not None:
        return tracer
    now = monotonic()
    if now < _next_look:
        return None
    provider = _trace.get_tracer_provider()
    if isinstance(provider, _trace.ProxyTracerProvider):
        # No SDK configured (yet): nothing would be recorded. Asking again costs about
        # a microsecond (the API reads the environment), so not on every call.
        _next_look = now + LOOK_INTERVAL
        return None
    return _remember(provider)


def recording() -> bool:
    """Whether spans are recorded now: a provider that records is configured (call it
    only when :data:`enabled`; a call site checks it before building a span's
    attributes)."""
    return _recording_tracer() is not None


def _remember(provider: Any) -> Any:
    # A global provider, once set, is never replaced (the API refuses): keep its tracer.
    global _tracer
    _tracer = provider.get_tracer(SCOPE)
    return _tracer


def _context(headers: Mapping[str, str] | None) -> Any:
    return _propagate.extract(headers) if headers is not None else None


def _links(contexts: Iterable[Mapping[str, str] | None]) -> list[Any]:
    links = []
    seen = set()
    for headers in contexts:
        if not headers:
            continue
        context = _trace.get_current_span(_propagate.extract(headers)).get_span_context()
        if context.is_valid and (context.trace_id, context.span_id) not in seen:
            seen.add((context.trace_id, context.span_id))
            links.append(_trace.Link(context))
            if len(links) == MAX_LINKS:
                break
    return links


def start_span(
    name: str,
    *,
    kind: str = INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: Mapping[str, str] | None = None,
    links: Iterable[Mapping[str, str] | None] = (),
) -> Any:
    """A started span that is *not* made current; the caller ends it (``.end()``).

    ``parent``: the trace headers of a message (its span becomes the parent; a
    message without them starts a new trace); None: the current span is the parent.
    ``links``: trace headers of messages this span is about (a batch's events).
    """
    tracer = _recording_tracer()
    if tracer is None:
        return NOOP
    return tracer.start_span(
        name,
        context=_context(parent),
        kind=_trace.SpanKind[kind],
        attributes=attributes,
        links=_links(links) if links else None,
    )


class _Current:
    """A span made current for a block (``with`` or ``async with``), ended after it.

    An exception leaving the block is recorded on the span and sets its status.
    """

    __slots__ = ("_span", "_use")

    def __init__(self, span: Any) -> None:
        self._span = span
        self._use: Any = None

    def __enter__(self) -> Any:
        self._use = _trace.use_span(self._span, end_on_exit=True)
        return self._use.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._use.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> Any:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def span(
    name: str,
    *,
    kind: str = INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: Mapping[str, str] | None = None,
    links: Iterable[Mapping[str, str] | None] = (),
) -> Any:
    """A context manager (``with`` or ``async with``) running its block in a new span.

    The arguments are :func:`start_span`'s. Yields the span (``set_attribute``,
    ``update_name``); :data:`NOOP` when nothing records. Call it only when
    :data:`enabled`.
    """
    started = start_span(name, kind=kind, attributes=attributes, parent=parent, links=links)
    if started is NOOP:
        return NOOP
    return _Current(started)


def describe(name: str | None = None, attributes: Mapping[str, Any] | None = None) -> None:
    """Rename the current span and add attributes to it (what a server learns once it has
    read its request)."""
    current = _trace.get_current_span()
    if not current.is_recording():
        return
    if name is not None:
        current.update_name(name)
    if attributes:
        current.set_attributes(attributes)


def inject(headers: dict[str, str]) -> None:
    """Add the current span's trace headers to ``headers`` (none when nothing records)."""
    if _recording_tracer() is not None:
        _propagate.inject(headers)


def extract(headers: Mapping[str, str] | None) -> Any:
    """The OpenTelemetry ``Context`` that a message's headers carry."""
    return _propagate.extract(headers or {})


def carried(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """The trace headers among a message's ``headers`` (None when it has none): what a
    stored event keeps as ``Event.trace_context``."""
    if not headers:
        return None
    found = {name: headers[name] for name in _fields if name in headers}
    return found or None


# On when the extra is installed, until conf.py (AETHER["TRACING"]) says otherwise.
configure()
