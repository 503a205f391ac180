"""A cluster node (``manage.py aether_node``) that records its spans, for the tracing tests.

It sets up the OpenTelemetry SDK as a project would (a global ``TracerProvider``) with an
exporter that writes every finished span as one JSON line to the file named by
``AETHER_TEST_SPANS``, then runs the node with the arguments it was given.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import django
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


def describe(span: ReadableSpan) -> dict[str, Any]:
    """What the tests compare: names, kinds, ids and links, as hex strings."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "attributes": dict(span.attributes or {}),
    }


class JsonLines(SpanExporter):
    """Appends each finished span to a file as a JSON line."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            self.file.write(json.dumps(describe(span)) + "\n")
        return SpanExportResult.SUCCESS


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLines(os.environ["AETHER_TEST_SPANS"])))
    trace.set_tracer_provider(provider)
    django.setup()
    from django.core.management import call_command

    call_command("aether_node", *sys.argv[1:])


if __name__ == "__main__":
    main()
