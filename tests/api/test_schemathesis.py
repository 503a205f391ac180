"""Schemathesis against the API's own OpenAPI schema: no 5xx, no response that breaks it.

The schema is the live one (``GET /api/aether/schema/`` of tests.urls). The test
takes a copy and narrows only what would otherwise make the run slow or spill into
other tests' data:

* ``namespace`` path parameters come from a few names of this run (one with a dot,
  one whose stream name collides with it, one with a trailing newline): positive
  cases use them, negative cases use anything else, so invalid names are still
  sent;
* ``actor_id`` is either a few seeded actors or any string of up to 300 characters,
  so reads hit actors with events and a snapshot as well as arbitrary ids;
* the batch form of the append body (``expected_version`` + ``events``), which the
  view accepts but the published schema does not show, is added beside the
  one-event form, so batches are sent too.

Every operation gets ``MAX_EXAMPLES`` positive and as many negative cases
(derandomized: the same cases every run), sent through the WSGI application as the
superuser ``fuzzer`` with HTTP basic auth. Set ``AETHER_SCHEMATHESIS_EXAMPLES`` to
send more, and ``AETHER_SCHEMATHESIS_RANDOM=1`` for new random cases each run.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import uuid
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from aether_django.events import ActorSnapshot, Event
from aether_django.store import get_event_store

API = "/api/aether"
MAX_EXAMPLES = int(os.environ.get("AETHER_SCHEMATHESIS_EXAMPLES", "25"))
RANDOM = os.environ.get("AETHER_SCHEMATHESIS_RANDOM") == "1"
USER, PASSWORD = "fuzzer", "fuzz-pw"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]

RUN = uuid.uuid4().hex[:8]
NS = f"fuzz-{RUN}"
#: The namespaces positive cases use: this run's, a dotted one, the one whose stream
#: name collides with the dotted one ("." becomes "__"), and one with a trailing
#: newline (a "$"-anchored pattern lets that through).
NAMESPACES = [NS, f"{NS}.b", f"{NS}__b", f"{NS}\n"]
ACTORS = [f"actor-{RUN}", f"tenant/{RUN} order"]


def _published_schema() -> dict[str, Any]:
    response = Client().get(f"{API}/schema/", {"format": "json"})
    assert response.status_code == 200, response.status_code
    return json.loads(response.content)


def fuzz_schema(raw: dict[str, Any]) -> dict[str, Any]:
    """The published schema, narrowed as the module docstring says."""
    raw = copy.deepcopy(raw)
    for operations in raw["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] != "path":
                    continue
                if parameter["name"] == "namespace":
                    parameter["schema"] = {"type": "string", "enum": NAMESPACES}
                elif parameter["name"] == "actor_id":
                    parameter["schema"] = {
                        "anyOf": [
                            {"type": "string", "enum": ACTORS},
                            {"type": "string", "minLength": 1, "maxLength": 300},
                        ]
                    }
    components = raw["components"]["schemas"]
    one = components["AppendOne"]
    new_event = copy.deepcopy(one)
    new_event["properties"].pop("version")
    new_event["required"] = ["event_type"]
    components["NewEvent"] = new_event
    components["AppendBatch"] = {
        "type": "object",
        "properties": {
            "expected_version": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1000},
            "events": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/NewEvent"},
                "minItems": 1,
                "maxItems": 500,
            },
        },
        "required": ["expected_version", "events"],
    }
    events = raw["paths"][f"{API}/namespaces/{{namespace}}/actors/{{actor_id}}/events/"]
    for content in events["post"]["requestBody"]["content"].values():
        content["schema"] = {
            "anyOf": [
                {"$ref": "#/components/schemas/AppendOne"},
                {"$ref": "#/components/schemas/AppendBatch"},
            ]
        }
    return raw


def load_schema() -> Any:
    config = schemathesis.Config.from_dict({"generation": {"max-examples": MAX_EXAMPLES}})
    schema = schemathesis.openapi.from_dict(fuzz_schema(_published_schema()), config=config)
    schema.app = get_wsgi_application()
    return schema


SCHEMA = load_schema()
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}


@pytest.fixture(scope="module")
def seeded() -> None:
    """Events and a snapshot for the seeded actors, so reads have something to return."""
    store = get_event_store(NS)
    for actor in ACTORS:
        store.save_events(
            [
                Event(event_type="Seeded", actor_id=actor, version=v, data={"n": v})
                for v in (1, 2, 3)
            ]
        )
        store.save_snapshot(ActorSnapshot(actor_id=actor, version=2, state={"n": 2}))


@pytest.fixture
def fuzzer(db, seeded):
    User.objects.create_superuser(USER, password=PASSWORD)
    # As Django's test client does: keep the test's connection (and its transaction,
    # which holds the user) across the requests.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.mark.parametrize("label", list(OPERATIONS))
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_server_error_and_no_response_breaking_the_schema(fuzzer, label, mode):
    operation = OPERATIONS[label]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case):
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    fuzz()
