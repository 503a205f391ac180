"""Schemathesis against the API's own OpenAPI schema: no 5xx, no response that breaks it.

The schema is the live one (``GET /api/aether/schema/`` of tests.urls, from
drf-spectacular), which describes both forms of the append body (one event with a
version, or a batch after ``expected_version``) and every error body. The test takes
a copy and narrows only the parameters and identifiers that positive cases send, so
that they reach the stored data instead of bouncing off validation and keep to this
run's namespaces; negative cases send everything else:

* ``namespace`` comes from a few names of this run: a plain one, a dotted one, the
  underscored spelling of the dotted one (refused by name: it would share a
  stream), one with a trailing newline, and one whose aggregate class (``Ledger``,
  registered for this module) builds the ``state/`` answers; positive cases of
  ``state/`` get only that one and its seeded actors, since anything else is a
  plain 404;
* ``actor_id`` is one of a few seeded actors (with events and a snapshot) or any
  printable ASCII string of up to 255 characters;
* client event ids come from three, so that retries and reused ids happen, and
  event types are ``Deposited`` (the one the aggregate applies, with whatever data
  the case carries) or any other string;
* ``limit``, ``from_version`` and ``at_version`` keep to the bounds the views check
  (the published schema says "integer" and gives the limit's in its description).

Every operation gets ``MAX_EXAMPLES`` positive and as many negative cases
(derandomized: the same cases every run), sent through the WSGI application as the
superuser ``fuzzer`` with HTTP basic auth, and checked for server errors, response
bodies against the schema, undocumented status codes and content types. Each case
has ``CASE_DEADLINE`` and each operation and mode ``FUZZ_TIMEOUT`` seconds; only a
hung request reaches them. Set ``AETHER_SCHEMATHESIS_EXAMPLES`` to send more, and
``AETHER_SCHEMATHESIS_RANDOM=1`` for new random cases each run.

The test parametrizes itself over the operations instead of using
``schema.parametrize()``: under pytest 9.2, schemathesis 4.32's pytest plugin gives
every generated item the same node id, and its lazy loader (``from_fixture``) fails.

The regressions at the end are the 5xx that this fuzzing, and probing around what
it found, turned up.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import nats
import pytest
import schemathesis
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client, override_settings
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from aether_django import aggregates
from aether_django.conf import store_config
from aether_django.events import ActorSnapshot, Event
from aether_django.names import stream_name
from aether_django.store import get_event_store
from aether_django.store.jetstream import JetStreamEventStore

API = "/api/aether"
MAX_EXAMPLES = int(os.environ.get("AETHER_SCHEMATHESIS_EXAMPLES", "25"))
RANDOM = os.environ.get("AETHER_SCHEMATHESIS_RANDOM") == "1"
#: Seconds one case may take, and one operation's cases in one mode: generous bounds
#: (a case normally takes milliseconds) that only a hung request reaches.
CASE_DEADLINE = timedelta(seconds=20)
FUZZ_TIMEOUT = 120
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
#: The namespace of the Ledger aggregate (see the ``ledger`` fixture).
LEDGER_NS = f"{NS}.ledger"
#: The namespaces positive cases use: this run's, a dotted one, the underscored
#: spelling of the dotted one (refused by name), one with a trailing newline (a
#: "$"-anchored pattern would let that through), and the aggregate's.
NAMESPACES = [NS, f"{NS}.b", f"{NS}__b", f"{NS}\n", LEDGER_NS]
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

#: The path parameters of state/ in positive cases: the Ledger's namespace and actors.
STATE_PARAMETERS: dict[str, dict[str, Any]] = {
    "namespace": {"type": "string", "enum": [LEDGER_NS]},
    "actor_id": {"type": "string", "enum": ACTORS},
}


def _published_schema() -> dict[str, Any]:
    # Read at import, before any user exists: open the schema for this one request.
    with override_settings(AETHER={**django_settings.AETHER, "API_SCHEMA_PUBLIC": True}):
        response = Client().get(f"{API}/schema/", {"format": "json"})
    assert response.status_code == 200, response.status_code
    schema: dict[str, Any] = json.loads(response.content)
    return schema


def fuzz_schema(raw: dict[str, Any]) -> dict[str, Any]:
    """The published schema, narrowed as the module docstring says."""
    raw = copy.deepcopy(raw)
    for path, operations in raw["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                rule = PARAMETERS.get((parameter["in"], parameter["name"]))
                if path.endswith("/state/") and parameter["in"] == "path":
                    # Anywhere else state/ is a plain 404 (no aggregate class, no such
                    # actor); here the Ledger builds the seeded actors, or cannot.
                    rule = STATE_PARAMETERS[parameter["name"]]
                if rule is not None:
                    parameter["schema"] = rule
    components = raw["components"]["schemas"]
    # Both forms of the append body as published (AppendOne, and AppendBatch's
    # NewEvent items): client ids from a few, so that retries and reused ids are
    # sent, and the event type the Ledger applies besides any other.
    for name in ("AppendOne", "NewEvent"):
        properties = components[name]["properties"]
        properties["id"] = {"type": "string", "enum": EVENT_IDS}
        properties["event_type"] = {
            "anyOf": [{"type": "string", "enum": ["Deposited"]}, properties["event_type"]]
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
def ledger() -> Iterator[type[aggregates.Aggregate]]:
    """An aggregate class for LEDGER_NS whose handler raises on data without an amount,
    registered while this module runs."""

    class Ledger(aggregates.Aggregate):
        balance: int = 0

        class Meta:
            namespace = LEDGER_NS

        @aggregates.apply("Deposited")
        def _deposited(self, event: Event) -> None:
            self.balance += event.data["amount"]  # KeyError or TypeError on other data

    yield Ledger
    aggregates._registry.pop(Ledger._meta.label, None)


@pytest.fixture(scope="module")
def seeded(ledger) -> None:
    """Events and a snapshot for the seeded actors, so reads have something to return;
    in LEDGER_NS, one actor the Ledger can build, one whose data its handler raises on,
    and one with an event type it has no handler for."""
    store = get_event_store(NS)
    for actor in ACTORS:
        store.save_events(
            [
                Event(event_type="Seeded", actor_id=actor, version=v, data={"n": v})
                for v in (1, 2, 3)
            ]
        )
        store.save_snapshot(ActorSnapshot(actor_id=actor, version=2, state={"n": 2}))
    ledger_store = get_event_store(LEDGER_NS)
    good, bad_data, unknown = ACTORS
    for actor, event_type, data in [
        (good, "Deposited", {"amount": 5}),
        (bad_data, "Deposited", {"sum": 5}),
        (unknown, "Withdrawn", {"amount": 5}),
    ]:
        ledger_store.save_event(Event(event_type=event_type, actor_id=actor, version=1, data=data))


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


@pytest.mark.timeout(FUZZ_TIMEOUT)
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
        deadline=CASE_DEADLINE,
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


@pytest.fixture
def legacy_stream(aether_nats_url):
    """Makes the stream an earlier release made for a namespace whose name is refused now
    (``a__b``, which shares the stream of ``a.b``): that stream name, that namespace's
    subjects and metadata. Deleted afterwards, so the session's server holds no name
    that other tests' namespace listings would meet."""
    made: list[str] = []

    def make(namespace: str) -> None:
        # The settings a store gives its stream today, renamed for ``namespace``.
        # No runtime: the template only builds a stream configuration, never connects.
        template = JetStreamEventStore(f"t{RUN}", runtime=None, config=store_config())  # type: ignore[arg-type]
        config = template._provisioner.stream_config()
        config.name = stream_name(namespace)
        config.subjects = [f"{template.config.subject_prefix}.{namespace}.*"]
        config.metadata = {"aether_namespace": namespace}
        config.description = f"aether_django events of namespace {namespace}"

        async def create() -> None:
            nc = await nats.connect(aether_nats_url)
            try:
                await nc.jetstream().add_stream(config)
            finally:
                await nc.close()

        asyncio.run(create())
        made.append(str(config.name))

    yield make

    async def delete() -> None:
        nc = await nats.connect(aether_nats_url)
        try:
            for name in made:
                await nc.jetstream().delete_stream(name)
        finally:
            await nc.close()

    asyncio.run(delete())


def test_a_stream_made_for_a_name_refused_now_answers_409_without_naming_it(
    root, ns, legacy_stream
):
    underscored, dotted = f"{ns}__b", f"{ns}.b"  # both would be the stream f"{ns}__b_events"
    refused = root.post(events_url(underscored), {"event_type": "A", "version": 1}, format="json")
    assert refused.status_code == 400 and "two underscores" in str(refused.data)
    legacy_stream(underscored)
    assert stream_name(dotted) == f"{ns}__b_events"
    with override_settings(AETHER={**django_settings.AETHER, "API_SNAPSHOT_WRITES": True}):
        snapshot = root.put(
            f"{API}/namespaces/{dotted}/actors/a/snapshot/",
            {"version": 1, "state": {}},
            format="json",
        )
    for response in (
        root.get(f"{API}/namespaces/{dotted}/"),
        root.get(events_url(dotted)),
        root.post(events_url(dotted), {"event_type": "A", "version": 2}, format="json"),
        snapshot,
    ):
        assert response.status_code == 409, response.status_code
        assert response.data["code"] == "namespace_collision"
        assert underscored not in response.data["detail"]
    # The list leaves out the name no endpoint takes (it answered 400 before).
    listed = root.get(f"{API}/namespaces/")
    assert listed.status_code == 200
    assert underscored not in [n["name"] for n in listed.data]


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
