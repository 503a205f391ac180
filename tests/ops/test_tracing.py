"""OpenTelemetry tracing (the ``otel`` extra): one trace from a save to its deliveries,
projection batch and WebSocket frame, and across processes for a routed command; and
nothing at all (no span, no header) when tracing is off or the extra is missing.

Spans are recorded with the SDK's in-memory exporter on a provider of the test's own
(``tracing.configure(tracer_provider=...)``), so the rest of the suite keeps the
process's default: the API without a configured provider, which records nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.checks import run_checks
from django.test import override_settings
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import StatusCode

from aether_django import tracing
from aether_django.bus import get_event_bus
from aether_django.conf import configure_tracing
from aether_django.errors import VersionConflictError
from aether_django.events import Event, encode_event, with_sequence
from aether_django.projections.runner import catch_up
from aether_django.sharding import asend_command
from aether_django.store import get_event_store
from aether_django.store.jetstream import JetStreamEventStore
from aether_django.testing.contract import ev
from aether_django.testing.processes import follow_json_lines, stop_process
from tests.consumers.test_real_server import session_cookie
from tests.projections.app.projections import ledger
from tests.projections.conftest import scratch_projections  # noqa: F401

from .traced import Tally

ROOT = Path(__file__).resolve().parents[2]


# --- fixtures and helpers ---------------------------------------------------------------


class Recorder(InMemorySpanExporter):
    """The finished spans, and a tracer for the test's own root span."""

    def __init__(self) -> None:
        super().__init__()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self))
        self.tracer = self.provider.get_tracer("tests")


@pytest.fixture
def spans() -> Iterator[Recorder]:
    """Tracing on, recording into an in-memory exporter; back to the settings after."""
    recorder = Recorder()
    assert tracing.configure(True, tracer_provider=recorder.provider)
    yield recorder
    configure_tracing()
    recorder.provider.shutdown()


def hex_ids(span: ReadableSpan) -> tuple[str, str, str | None]:
    """(trace id, span id, parent span id) of a finished span, as hex."""
    context = span.get_span_context()
    assert context is not None
    parent = f"{span.parent.span_id:016x}" if span.parent else None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}", parent


def traceparent_ids(headers: Any) -> tuple[str, str]:
    """(trace id, span id) of a W3C ``traceparent`` header."""
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    return trace_id, span_id


def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.05)


def named(exporter: InMemorySpanExporter, name: str, trace_id: str) -> list[ReadableSpan]:
    return [
        s for s in exporter.get_finished_spans() if s.name == name and hex_ids(s)[0] == trace_id
    ]


async def stored_headers(namespace: str, actor_id: str) -> dict[str, str]:
    """The NATS headers of the actor's last stored message, read with plain nats-py."""
    store = get_event_store(namespace)
    assert isinstance(store, JetStreamEventStore)
    nc = await nats.connect(os.environ["AETHER_NATS_URL"])
    try:
        msg = await nc.jetstream().get_last_msg(store.stream_name, store.subject_for(actor_id))
        return dict(msg.headers or {})
    finally:
        await nc.close()


# --- the codec ----------------------------------------------------------------------------


def test_the_trace_context_of_an_event_is_not_part_of_its_wire_format() -> None:
    plain = ev("a", 1)
    traced = Event(
        id=plain.id,
        event_type=plain.event_type,
        actor_id="a",
        version=1,
        timestamp=plain.timestamp,
        trace_context={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
    )
    assert encode_event(traced) == encode_event(plain)
    assert traced == plain  # like sequence, it does not make two events different
    assert with_sequence(traced, 5).trace_context == traced.trace_context


def test_a_span_links_each_trace_once_and_at_most_max_links(spans):
    contexts = []
    for _ in range(tracing.MAX_LINKS + 10):
        with spans.tracer.start_as_current_span("save"):
            carried: dict[str, str] = {}
            tracing.inject(carried)
        contexts.append(carried)
    # Each context twice, and events without one: none of those adds a link.
    with tracing.span("batch", links=[*contexts, *contexts, None, {}]):
        pass
    (batch,) = [s for s in spans.get_finished_spans() if s.name == "batch"]
    linked = [f"{k.context.span_id:016x}" for k in batch.links]
    assert linked == [traceparent_ids(c)[1] for c in contexts[: tracing.MAX_LINKS]]


# --- one process: save, delivery, projection batch, WebSocket frame ------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("scratch_projections")
async def test_a_save_its_delivery_projection_batch_and_websocket_frame_share_one_trace(
    spans, server
):
    import websockets

    namespace = Tally._meta.namespace
    assert namespace is not None
    projection = ledger(namespace, f"traced-{uuid.uuid4().hex[:8]}")
    actor = f"tally-{uuid.uuid4().hex[:8]}"
    # The projection starts at the stream's head, so that its next batch holds only the
    # event saved below.
    await Tally.objects.aupdate(f"warm-{actor}", lambda t: t.tick(), create=True)
    assert await sync_to_async(catch_up)(projection) == {namespace: "caught-up"}

    cookie = await session_cookie()
    bus_seen: list[Event] = []
    subscription = await get_event_bus().asubscribe(namespace, start="new")
    async with websockets.connect(
        f"ws://{server}/ws/aether/", additional_headers={"Cookie": cookie}
    ) as ws:
        await ws.send(json.dumps({"action": "subscribe", "id": "s", "namespace": namespace}))
        assert json.loads(await ws.recv())["type"] == "subscribed"

        with spans.tracer.start_as_current_span("request") as root:
            saved = await Tally.objects.aupdate(actor, lambda t: t.tick(by="ann"), create=True)
        assert saved.version == 1
        trace_id = f"{root.get_span_context().trace_id:032x}"

        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert frame["event"]["actor_id"] == actor
        while True:
            delivery = await asyncio.wait_for(subscription.__anext__(), 10)
            if delivery.event.actor_id == actor:
                bus_seen.append(delivery.event)
                break
        await subscription.aclose()
    assert await sync_to_async(catch_up)(projection) == {namespace: "caught-up"}

    # The save: request -> aether save -> aether publish, one trace.
    (save,) = named(spans, "aether save", trace_id)
    (publish,) = named(spans, f"aether publish {namespace}", trace_id)
    root_id = f"{root.get_span_context().span_id:016x}"
    assert hex_ids(save)[2] == root_id
    assert hex_ids(publish)[2] == hex_ids(save)[1]
    assert publish.kind == trace.SpanKind.PRODUCER
    assert save.attributes is not None and publish.attributes is not None
    assert save.attributes["aether.actor_id"] == actor
    assert save.attributes["aether.events"] == 1
    assert save.attributes["aether.version.last"] == 1
    assert publish.attributes["aether.namespace"] == namespace
    (load,) = named(spans, "aether load", trace_id)
    assert hex_ids(load)[2] == root_id and load.attributes["aether.version"] == 0  # type: ignore[index]

    # The stored message carries the publish span's context, and so does the event read
    # back (from the store and from the bus).
    publish_ids = hex_ids(publish)[:2]
    assert traceparent_ids(await stored_headers(namespace, actor)) == publish_ids
    (stored,) = await Tally.get_store().aget_events(actor)
    assert traceparent_ids(stored.trace_context) == publish_ids
    assert traceparent_ids(bus_seen[0].trace_context) == publish_ids

    # Delivery, projection batch and WebSocket frame: children of the publish span.
    async def finished(name: str) -> list[ReadableSpan]:
        # Spans end on other threads (the runtime's loop, the ASGI server's): wait off
        # this loop.
        return await asyncio.to_thread(wait_for, lambda: named(spans, name, trace_id))

    deliveries = await finished(f"aether deliver {namespace}")
    (batch,) = await finished(f"aether project {projection._meta.name}")
    (frame_span,) = await finished("aether ws send")
    for child in [*deliveries, batch, frame_span]:
        assert hex_ids(child)[2] == publish_ids[1], child.name
    assert {d.kind for d in deliveries} == {trace.SpanKind.CONSUMER}
    assert batch.attributes is not None and frame_span.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 1
    linked = [(f"{k.context.trace_id:032x}", f"{k.context.span_id:016x}") for k in batch.links]
    assert linked == [publish_ids]
    assert frame_span.attributes["aether.actor_id"] == actor


# --- two processes: a routed command ----------------------------------------------------


class TracedNode:
    """``aether_node`` in a child process, writing its spans as JSON lines to a file."""

    def __init__(self, tmp_path: Path, bucket: str) -> None:
        self.spans_file = tmp_path / "node-spans.jsonl"
        self.spans_file.touch()
        self.changes: list[dict[str, Any]] = []
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.ops.tracing_node",
                "--node-id",
                "node-traced",
                "--import",
                "tests.ops.traced",
                "--json",
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "DJANGO_SETTINGS_MODULE": "tests.settings",
                "AETHER_TEST_CLUSTER_BUCKET": bucket,
                "AETHER_TEST_SPANS": str(self.spans_file),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        follow_json_lines(self.process, self.changes.append)

    def spans(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.spans_file.read_text().splitlines() if line]

    def stop(self) -> None:
        stop_process(self.process)


async def test_a_routed_command_is_one_trace_across_two_processes(spans, tmp_path, monkeypatch):
    bucket = f"trace_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AETHER_TEST_CLUSTER_BUCKET", bucket)
    node = TracedNode(tmp_path, bucket)
    try:
        # The node alone leads and owns every shard.
        await asyncio.to_thread(
            wait_for,
            lambda: any(c.get("shards") == settings.AETHER["NUM_SHARDS"] for c in node.changes),
            60,
        )
        actor = f"tally-{uuid.uuid4().hex[:8]}"
        with spans.tracer.start_as_current_span("request") as root:
            answer = await asend_command("test-traced", actor, "tick", by="bob")
        assert answer["node"] == "node-traced" and answer["version"] == 1
        trace_id = f"{root.get_span_context().trace_id:032x}"

        # Here: the CLIENT span, a child of the request.
        (client,) = named(spans, "aether route test-traced", trace_id)
        assert client.kind == trace.SpanKind.CLIENT
        client_trace, client_id, client_parent = hex_ids(client)
        assert client_parent == f"{root.get_span_context().span_id:016x}"

        # There: the SERVER span, whose parent is the client span, in the same trace; the
        # node's load, save and publish below it.
        def node_trace() -> list[dict[str, Any]]:
            found = [s for s in node.spans() if s["trace_id"] == trace_id]
            return found if {s["name"] for s in found} >= {"aether route test-traced",
                                                           "aether save"} else []  # fmt: skip

        remote = await asyncio.to_thread(wait_for, node_trace)
        (server_span,) = [s for s in remote if s["kind"] == "SERVER"]
        assert server_span["name"] == "aether route test-traced"
        assert server_span["parent_id"] == client_id
        assert server_span["attributes"]["aether.actor_id"] == actor
        assert server_span["attributes"]["aether.node"] == "node-traced"
        by_name = {s["name"]: s for s in remote}
        assert by_name["aether load"]["parent_id"] == server_span["span_id"]
        assert by_name["aether save"]["parent_id"] == server_span["span_id"]
        publish = by_name["aether publish test-traced"]
        assert publish["parent_id"] == by_name["aether save"]["span_id"]
        # The event the node stored carries the node's publish span: read here, in the
        # trace that started in this process.
        headers = await stored_headers("test-traced", actor)
        assert traceparent_ids(headers) == (trace_id, publish["span_id"])
        assert client_trace == trace_id
    finally:
        await asyncio.to_thread(node.stop)


# --- the store's spans and headers ---------------------------------------------------------


async def test_every_message_of_an_atomic_batch_carries_the_saves_context(spans):
    namespace = f"trc-{uuid.uuid4().hex[:8]}"
    store = get_event_store(namespace)
    assert isinstance(store, JetStreamEventStore)
    stored = await store.asave_events([ev("a", 1), ev("a", 2), ev("a", 3)])
    (publish,) = [s for s in spans.get_finished_spans() if s.name.startswith("aether publish")]
    trace_id, span_id, _ = hex_ids(publish)
    assert publish.attributes is not None
    assert publish.attributes["messaging.batch.message_count"] == 3
    assert publish.attributes["aether.sequence.last"] == stored[-1].sequence
    nc = await nats.connect(os.environ["AETHER_NATS_URL"])
    try:
        js = nc.jetstream()
        for event in stored:
            msg = await js.get_msg(store.stream_name, event.sequence)
            assert traceparent_ids(msg.headers) == (trace_id, span_id)
    finally:
        await nc.close()
    # What the save returns and what a read gives back carry the same context.
    assert all(traceparent_ids(e.trace_context) == (trace_id, span_id) for e in stored)
    read = await store.aget_stream_events(0, limit=10)
    assert [traceparent_ids(e.trace_context) for e in read] == [(trace_id, span_id)] * 3


async def test_a_refused_save_is_an_error_on_its_span_and_a_missing_actor_is_not(spans):
    actor = f"tally-{uuid.uuid4().hex[:8]}"
    with pytest.raises(Tally.DoesNotExist):
        await Tally.objects.aget(actor)
    await Tally.get_store().asave_event(ev(actor, 1, "Tick"))
    with pytest.raises(VersionConflictError):
        await Tally.get_store().asave_event(ev(actor, 1, "Tick"))  # version 1 is taken
    finished = spans.get_finished_spans()
    (load,) = [s for s in finished if s.name == "aether load"]
    assert load.status.status_code == StatusCode.UNSET
    assert load.attributes is not None and load.attributes["aether.version"] == 0
    ok, refused = [s for s in finished if s.name == "aether publish test-traced"]
    assert ok.status.status_code == StatusCode.UNSET
    assert refused.status.status_code == StatusCode.ERROR
    assert [e.attributes["exception.type"] for e in refused.events] == [
        "aether_django.errors.VersionConflictError"
    ]


async def test_a_delivery_of_an_event_stored_without_trace_headers_starts_a_trace(spans):
    namespace = f"trc-{uuid.uuid4().hex[:8]}"
    store = get_event_store(namespace)
    assert isinstance(store, JetStreamEventStore)
    await store.asave_event(ev("warm", 1))  # the stream exists before the subscription
    subscription = await get_event_bus().asubscribe(namespace, start="new")
    try:
        # Stored by a process that does not trace (plain nats-py, no trace headers).
        event = ev("a", 1)
        nc = await nats.connect(os.environ["AETHER_NATS_URL"])
        try:
            await nc.jetstream().publish(
                store.subject_for("a"),
                encode_event(event),
                headers={"Nats-Msg-Id": event.id, "Aether-Version": "1"},
            )
        finally:
            await nc.close()
        delivery = await asyncio.wait_for(subscription.__anext__(), 10)
        assert delivery.event.trace_context is None
    finally:
        await subscription.aclose()

    def delivered() -> list[ReadableSpan]:
        return [s for s in spans.get_finished_spans() if s.name == f"aether deliver {namespace}"]

    (span,) = await asyncio.to_thread(wait_for, delivered)
    assert span.parent is None  # the root of a trace of its own
    assert span.attributes is not None
    assert span.attributes["messaging.message.id"] == delivery.event.id


async def test_the_memory_backend_traces_a_save_and_its_local_delivery(spans):
    with override_settings(AETHER={**settings.AETHER, "BACKEND": "memory"}):
        # The settings changed: tracing follows them, so record again.
        tracing.configure(True, tracer_provider=spans.provider)
        namespace = f"trc-{uuid.uuid4().hex[:8]}"
        subscription = await get_event_bus().asubscribe(namespace)
        try:
            with spans.tracer.start_as_current_span("request") as root:
                (stored,) = await get_event_store(namespace).asave_events([ev("a", 1)])
            delivery = await asyncio.wait_for(subscription.__anext__(), 10)
        finally:
            await subscription.aclose()
    trace_id = f"{root.get_span_context().trace_id:032x}"
    (publish,) = named(spans, f"aether publish {namespace}", trace_id)
    (deliver,) = named(spans, f"aether deliver {namespace}", trace_id)
    assert hex_ids(deliver)[2] == hex_ids(publish)[1]
    assert traceparent_ids(stored.trace_context) == hex_ids(publish)[:2]
    assert delivery.event.trace_context == stored.trace_context


async def test_an_unsampled_save_is_dropped_with_its_deliveries_but_keeps_its_context():
    # The default sampler follows the parent: what a dropped save causes is dropped too.
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(True, tracer_provider=provider)
    try:
        namespace = f"trc-{uuid.uuid4().hex[:8]}"
        store = get_event_store(namespace)
        await store.asave_event(ev("warm", 1))
        subscription = await get_event_bus().asubscribe(namespace, start="new")
        try:
            await store.asave_event(ev("a", 1))
            delivery = await asyncio.wait_for(subscription.__anext__(), 10)
        finally:
            await subscription.aclose()
        headers = await stored_headers(namespace, "a")
        # Not sampled (flag 01 unset), and still carried.
        assert not int(headers["traceparent"].rsplit("-", 1)[1], 16) & 1
        assert delivery.event.trace_context == {"traceparent": headers["traceparent"]}
        await asyncio.sleep(0.2)  # a delivery span would have ended by now
        assert exporter.get_finished_spans() == ()
    finally:
        configure_tracing()
        provider.shutdown()


# --- off: by the setting, without a provider, without the extra -----------------------------


async def test_with_tracing_set_off_nothing_is_recorded_and_no_header_is_added(spans):
    with override_settings(AETHER={**settings.AETHER, "TRACING": False}):
        assert tracing.enabled is False
        actor = f"tally-{uuid.uuid4().hex[:8]}"
        obj = await Tally.objects.aupdate(actor, lambda t: t.tick(), create=True)
        assert obj.version == 1
        headers = await stored_headers("test-traced", actor)
        assert "traceparent" not in headers and "tracestate" not in headers
        (stored,) = await Tally.get_store().aget_events(actor)
        assert stored.trace_context is None
    assert spans.get_finished_spans() == ()


async def test_installed_but_without_a_tracer_provider_no_header_is_added():
    # This process never sets a global provider (the tests use their own).
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert tracing.configure(True)
    try:
        assert tracing.span("x") is tracing.NOOP
        actor = f"tally-{uuid.uuid4().hex[:8]}"
        await Tally.objects.aupdate(actor, lambda t: t.tick(), create=True)
        headers = await stored_headers("test-traced", actor)
        assert "traceparent" not in headers
    finally:
        configure_tracing()


def test_a_global_provider_set_later_is_used_within_the_look_interval():
    # In a child: a process sets its global provider only once.
    code = """
import time
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from aether_django import tracing

assert tracing.enabled and not tracing.recording()  # the API's default records nothing
trace.set_tracer_provider(TracerProvider())
time.sleep(tracing.LOOK_INTERVAL + 0.1)
assert tracing.recording()  # found without being told
tracing.configure(False)
assert tracing.configure(True) and tracing.recording()  # and at once after configure()
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("value", ["yes", 1])
def test_a_tracing_setting_that_is_not_a_bool_is_reported_and_leaves_tracing_off(value):
    with override_settings(AETHER={**settings.AETHER, "TRACING": value}):
        assert tracing.enabled is False
        errors = [m for m in run_checks() if m.id == "aether_django.E601"]
        assert len(errors) == 1 and "must be True, False or None" in errors[0].msg
    assert tracing.enabled is tracing.available()


#: A child interpreter in which opentelemetry cannot be imported, as if not installed.
_BLOCKED = """
import importlib.abc, json, os, sys, asyncio

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None

sys.meta_path.insert(0, Refuse())
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
import django
from django.conf import settings
if os.environ.get("TRACING") == "on":
    django.conf.settings.AETHER  # loads the settings module
    settings.AETHER["TRACING"] = True
django.setup()

from django.core.checks import run_checks
from aether_django import tracing
from aether_django.extras import MissingExtraError
from aether_django.bus import get_event_bus
from aether_django.store import get_event_store
from aether_django.store.jetstream import JetStreamEventStore
from tests.ops.traced import Tally

async def main():
    actor = sys.argv[1]
    sub = await get_event_bus().asubscribe("test-traced", start="new")
    obj = await Tally.objects.aupdate(actor, lambda t: t.tick(), create=True)
    delivery = await asyncio.wait_for(sub.__anext__(), 10)
    await sub.aclose()
    (stored,) = await Tally.get_store().aget_events(actor)
    try:
        tracing.configure(True)
        refused = ""
    except MissingExtraError as exc:
        refused = str(exc)
    return {
        "enabled": tracing.enabled,
        "available": tracing.available(),
        "version": obj.version,
        "delivered": delivery.event.actor_id == actor,
        "trace_context": stored.trace_context,
        "refused": refused,
        "loaded": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
        "checks": [m.id for m in run_checks() if m.id == "aether_django.E601"],
    }

print(json.dumps(asyncio.run(main())))
"""


@pytest.mark.parametrize("setting", ["default", "on"])
async def test_without_the_extra_everything_works_and_no_header_is_added(setting):
    actor = f"tally-{uuid.uuid4().hex[:8]}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _BLOCKED,
        actor,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TRACING": setting},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    answer = json.loads(out.decode().strip().splitlines()[-1])
    assert answer == {
        "enabled": False,
        "available": False,
        "version": 1,
        "delivered": True,
        "trace_context": None,
        "refused": "aether_django.tracing needs opentelemetry-api: "
        "pip install 'aether-django[otel]'",
        "loaded": [],
        # AETHER["TRACING"] = True cannot be honoured: said by the system check.
        "checks": ["aether_django.E601"] if setting == "on" else [],
    }
    headers = await stored_headers("test-traced", actor)
    assert not {"traceparent", "tracestate", "baggage"} & set(headers)
