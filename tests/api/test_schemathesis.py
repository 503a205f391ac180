"""Schemathesis against the API's own OpenAPI schema: no 5xx, no response that breaks it.

The schema is the live one (``GET /api/aether/schema/`` of tests.urls, from
drf-spectacular). The test takes a copy and narrows what positive cases send, so
that they reach the stored data instead of bouncing off validation, and keep to
this run's namespaces; negative cases send everything else:

* ``namespace`` comes from a few names of this run: a plain one, a dotted one, one
  whose stream name collides with the dotted one ("." becomes "__"), and one with
  a trailing newline;
* ``actor_id`` is one of a few seeded actors (with events and a snapshot) or any
  printable ASCII string of up to 255 characters;
* client event ids come from three, so that retries and reused ids happen;
* event ``data`` and snapshot ``state`` are JSON objects, and ``limit``,
  ``from_version`` and ``at_version`` keep to the bounds the views check (the
  published schema says "any value" and "integer");
* the batch form of the append body (``expected_version`` + ``events``), which the
  view accepts but the published schema does not show, is added beside the
  one-event form, so batches are sent too.

Every operation gets ``MAX_EXAMPLES`` positive and as many negative cases
(derandomized: the same cases every run), sent through the WSGI application as the
superuser ``fuzzer`` with HTTP basic auth, and checked for server errors, response
bodies against the schema, undocumented status codes and content types. Set
``AETHER_SCHEMATHESIS_EXAMPLES`` to send more, and ``AETHER_SCHEMATHESIS_RANDOM=1``
for new random cases each run.

The test parametrizes itself over the operations instead of using
``schema.parametrize()``: under pytest 9.2, schemathesis 4.32's pytest plugin gives
every generated item the same node id, and its lazy loader (``from_fixture``) fails.

The regressions at the end are the 5xx that this fuzzing, and probing around what
it found, turned up.
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
ACTORS = [f"actor-{RUN}", f"tenant/{RUN} order", f"ünï-{RUN}.✓"]
EVENT_IDS = ["e-1", "e-2", "e-3"]
SCHEMA_OPERATION = f"GET {API}/schema/"
#: Parameter schemas replacing the published ones: the names above, and the bounds the
#: views check (the published schema gives the limit's only in its description).
PARAMETERS: dict[tuple[str, str], dict[str, Any]] = {
    ("path", "namespace"): {"type": "string", "enum": NAMESPACES},
    ("path", "actor_id"): {
        "anyOf": [
            {"type": "string", "enum": ACTORS},
            # Printable ASCII; other characters come from ACTORS and negative cases.
            {"type": "string", "pattern": "^[ -~]{1,255}$"},
        ]
    },
    ("query", "limit"): {"type": "integer", "minimum": 1, "maximum": 1000},
    ("query", "from_version"): {"type": "integer", "minimum": 0, "maximum": 10**18 - 1},
    ("query", "at_version"): {"type": "integer", "minimum": 1, "maximum": 10**18 - 1},
}


def _published_schema() -> dict[str, Any]:
    response = Client().get(f"{API}/schema/", {"format": "json"})
    assert response.status_code == 200, response.status_code
    schema: dict[str, Any] = json.loads(response.content)
    return schema


def fuzz_schema(raw: dict[str, Any]) -> dict[str, Any]:
    """The published schema, narrowed as the module docstring says."""
    raw = copy.deepcopy(raw)
    for operations in raw["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                rule = PARAMETERS.get((parameter["in"], parameter["name"]))
                if rule is not None:
                    parameter["schema"] = rule
    components = raw["components"]["schemas"]
    # Event data and snapshot state must be JSON objects (the published schema says
    # "any value"); negative cases still send other values.
    components["Snapshot"]["properties"]["state"] = {"type": "object"}
    one = components["AppendOne"]
    one["properties"]["data"] = {"type": "object"}
    # Client ids from a few, so that retries and reused ids are sent; negative cases
    # send any other value.
    one["properties"]["id"] = {"type": "string", "enum": EVENT_IDS}
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
    config = schemathesis.Config()  # not a schemathesis.toml that may lie around
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
    checks = CHECKS
    if label == SCHEMA_OPERATION and mode is GenerationMode.NEGATIVE:
        # drf-spectacular's own view answers 404 to an unknown ?format= or ?lang=, a
        # status its schema does not list; the other checks still apply.
        checks = [check for check in CHECKS if check is not status_code_conformance]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case):
        case.call_and_validate(headers=AUTH, checks=checks)

    fuzz()


# --- Regressions: what the fuzzing (and probing around it) found ---------------------------
# Each of these answered 500 before the fix in aether_django/api.


def events_url(ns: str, actor: str = "a") -> str:
    return f"{API}/namespaces/{ns}/actors/{actor}/events/"


def test_a_namespace_with_a_trailing_newline_is_invalid(root, ns):
    assert root.get(f"{API}/namespaces/{ns}%0A/").status_code == 400
    response = root.post(events_url(f"{ns}%0A"), {"event_type": "A", "version": 1}, format="json")
    assert response.status_code == 400 and response.data["code"] == "invalid"


def test_namespaces_sharing_a_stream_answer_409_without_naming_the_other(root, ns):
    first = root.post(events_url(f"{ns}__b"), {"event_type": "A", "version": 1}, format="json")
    assert first.status_code == 201
    dotted = f"{ns}.b"  # its stream would be f"{ns}__b_events" too
    for response in (
        root.get(f"{API}/namespaces/{dotted}/"),
        root.get(events_url(dotted)),
        root.post(events_url(dotted), {"event_type": "A", "version": 1}, format="json"),
        root.put(
            f"{API}/namespaces/{dotted}/actors/a/snapshot/",
            {"version": 1, "state": {}},
            format="json",
        ),
    ):
        assert response.status_code == 409, response.status_code
        assert response.data["code"] == "namespace_collision"
        assert f"{ns}__b" not in response.data["detail"]


def test_an_event_id_of_another_event_answers_409(root, ns):
    first = root.post(events_url(ns, "a"), {"event_type": "A", "version": 1, "id": "e-1"})
    assert first.status_code == 201
    other_actor = root.post(events_url(ns, "b"), {"event_type": "A", "version": 1, "id": "e-1"})
    later_version = root.post(events_url(ns, "a"), {"event_type": "A", "version": 2, "id": "e-1"})
    partly_chosen = root.post(
        events_url(ns, "c"),
        {"expected_version": 0, "events": [{"event_type": "A"}, {"event_type": "B", "id": "e-1"}]},
        format="json",
    )
    for response in (other_actor, later_version, partly_chosen):
        assert response.status_code == 409, response.status_code
        assert response.data["code"] == "duplicate_event_id"
    # A retry of the stored event itself is still answered with it.
    retry = root.post(events_url(ns, "a"), {"event_type": "A", "version": 1, "id": "e-1"})
    assert retry.status_code == 201 and retry.data == first.data
    assert [e["id"] for e in root.get(events_url(ns, "a")).data["results"]] == ["e-1"]
    assert root.get(events_url(ns, "b")).data["results"] == []


@pytest.fixture
def tally(ns):
    """An aggregate class for ``ns``, registered for this test only."""
    from aether_django import aggregates

    class Tally(aggregates.Aggregate):
        n: int = 0

        class Meta:
            namespace = ns

        def count(self) -> None:
            self.record("Counted")

        @aggregates.apply("Counted")
        def _counted(self, event: Event) -> None:
            self.n += 1

    yield Tally
    aggregates._registry.pop(Tally._meta.label, None)


def test_state_of_an_actor_with_an_event_its_aggregate_cannot_apply_is_422(root, ns, tally):
    root.post(events_url(ns), {"event_type": "Counted", "version": 1}, format="json")
    root.post(events_url(ns), {"event_type": "Unknown", "version": 2}, format="json")
    url = f"{API}/namespaces/{ns}/actors/a/state/"
    response = root.get(url)
    assert response.status_code == 422 and response.data["code"] == "cannot_apply"
    before = root.get(url, {"at_version": 1})
    assert before.status_code == 200 and before.data["state"] == {"n": 1}
