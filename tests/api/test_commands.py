"""Aggregate commands over the API: every answer, grants, arguments, idempotency keys, the schema.

The test Order (namespace ``test-orders``) is registered in tests/urls.py with ``place``
as its creating command; the other aggregates here are registered by the tests that
use them (the general routes serve them). Commands run locally here
(``COMMAND_ROUTING = "never"``); tests/api/test_commands_server.py runs the same
requests through a real server, routed to a node and locally.
"""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal
from typing import Any, Literal

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from rest_framework import serializers
from rest_framework.test import APIClient

from aether_django import correlation
from aether_django.aggregates import Aggregate, apply, command
from aether_django.api import commands
from aether_django.api.commands import FINGERPRINT_KEY, argument_serializer
from aether_django.events import Event
from aether_django.models import NamespaceGrant
from aether_django.sharding.commands import forget_liveness
from aether_django.store import get_event_store

from ..aggregates.domain import Order, Parcel

API = "/api/aether/aggregates"
NS = "test-orders"


@pytest.fixture(autouse=True)
def _local_commands():
    forget_liveness()
    with override_settings(AETHER={**settings.AETHER, "COMMAND_ROUTING": "never"}):
        yield
    forget_liveness()


@pytest.fixture
def actor() -> str:
    return f"order-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def ns() -> str:
    """The commands' namespace, for tests/api/conftest.py's ``callers`` grants."""
    return NS


@pytest.fixture
def clients(callers: dict[str, APIClient]) -> dict[str, APIClient]:
    """APIClients: anonymous, no grant, read grant, write grant (read too), superuser, ..."""
    return callers


@pytest.fixture
def root(clients) -> APIClient:
    return clients["superuser"]


def url(actor: str, command: str, ns: str = NS) -> str:
    return f"{API}/{ns}/{actor}/commands/{command}/"


def post(client: APIClient, actor: str, command: str, body: Any = None, **headers: str) -> Any:
    extra: dict[str, Any] = {f"HTTP_{k.upper()}": v for k, v in headers.items()}
    data = body if body is not None else {}
    return client.post(url(actor, command), data, format="json", **extra)


LINE = {"sku": "pen", "quantity": 2, "price_cents": 150}


# --- the answers ------------------------------------------------------------------------------


def test_a_creating_command_starts_the_actor_and_answers_state_and_events(root, actor):
    response = post(root, actor, "place", {"customer": "ann"})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert set(body) == {"actor_id", "version", "state", "events"}
    assert body["actor_id"] == actor and body["version"] == 1
    assert body["state"]["status"] == "placed" and body["state"]["customer"] == "ann"
    (event,) = body["events"]
    stored = Order.get_store().get_events(actor)
    assert event == {"sequence": stored[0].sequence, "version": 1, "event_type": "OrderPlaced"}

    again = post(root, actor, "add_line", LINE)
    assert again.status_code == 200
    assert again.json()["version"] == 2 and again.json()["state"]["total_cents"] == 300
    assert [e["event_type"] for e in again.json()["events"]] == ["LineAdded"]

    state = root.get(f"{API}/{NS}/{actor}/")
    assert state.status_code == 200
    assert state.json() == {
        "actor_id": actor,
        "version": 2,
        "state": again.json()["state"],
    }


def test_an_actor_id_with_a_slash_and_a_space(root):
    actor = f"tenant/7 order-{uuid.uuid4().hex[:6]}"
    response = post(root, actor.replace(" ", "%20"), "place", {"customer": "ann"})
    assert response.status_code == 200, response.json()
    assert response.json()["actor_id"] == actor
    assert Order.objects.get(actor).customer == "ann"


def test_a_command_that_does_not_create_answers_404_for_an_unknown_actor(root, actor):
    response = post(root, actor, "add_line", LINE)
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "detail": "no such actor"}
    assert Order.get_store().get_latest_version(actor) == 0
    assert root.get(f"{API}/{NS}/{actor}/").status_code == 404


def test_a_domain_error_answers_422_with_its_message_and_stores_nothing(root, actor):
    post(root, actor, "place", {"customer": "ann"})
    response = post(root, actor, "pay")
    assert response.status_code == 422
    assert response.json() == {
        "code": "domain_error",
        "detail": "an order without lines cannot be paid",
    }
    assert Order.get_store().get_latest_version(actor) == 1


def test_a_command_the_aggregate_refuses_on_a_new_actor_leaves_it_unborn(root, actor):
    response = post(root, actor, "place", {"customer": "   "})
    assert response.status_code == 422
    assert response.json()["detail"] == "an order needs a customer"
    assert Order.get_store().get_latest_version(actor) == 0


class Contended(Aggregate):
    """A command that another writer beats every time: its save always conflicts."""

    bumps: int = 0

    class Meta:
        namespace = "test-api-contended"

    @command
    def bump(self) -> None:
        # Another writer stores the very version this command is about to record.
        get_event_store("test-api-contended").save_event(
            Event(event_type="Bumped", actor_id=self.actor_id, version=self.version + 1)
        )
        self.record("Bumped")

    @command
    def nothing(self) -> None:
        """Records no event (so its command id is not kept either)."""
        NOTHING_CALLS.append(self.actor_id)

    @apply("Bumped")
    def _bumped(self, event: Event) -> None:
        self.bumps += 1


NOTHING_CALLS: list[str] = []


@pytest.fixture
def contended():
    commands.register(Contended, creating=["bump", "nothing"])
    yield
    commands.unregister(Contended)


def test_exhausted_retries_answer_409_conflict(root, contended, actor):
    response = root.post(f"{API}/test-api-contended/{actor}/commands/bump/", {}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert "after 6 attempts" in response.json()["detail"]
    # Only the other writer's events are stored.
    events = get_event_store("test-api-contended").get_events(actor)
    assert len(events) == 6 and all(e.command_id is None for e in events)


def test_a_command_that_records_nothing_runs_again_with_the_same_key(root, contended, actor):
    path = f"{API}/test-api-contended/{actor}/commands/nothing/"
    for _ in range(2):
        response = root.post(path, {}, format="json", HTTP_IDEMPOTENCY_KEY="k-nothing")
        assert response.status_code == 200
        assert response.json() == {"actor_id": actor, "version": 0, "state": {"bumps": 0},
                                   "events": []}  # fmt: skip
    assert NOTHING_CALLS.count(actor) == 2


# --- bad requests -----------------------------------------------------------------------------


def test_bad_arguments_answer_400_with_field_errors_and_store_nothing(root, actor):
    post(root, actor, "place", {"customer": "ann"})
    wrong = post(root, actor, "add_line", {**LINE, "quantity": "two"})
    assert wrong.status_code == 400
    assert wrong.json() == {"code": "invalid", "quantity": ["A valid integer is required."]}
    missing = post(root, actor, "add_line", {"sku": "pen"})
    assert missing.status_code == 400
    assert set(missing.json()) == {"code", "quantity", "price_cents"}
    unknown = post(root, actor, "add_line", {**LINE, "colour": "red", "quantity": "x"})
    assert unknown.status_code == 400
    assert unknown.json() == {
        "code": "invalid",
        "colour": ["not an argument of this command"],
        "quantity": ["A valid integer is required."],
    }
    null = post(root, actor, "add_line", {**LINE, "sku": None})
    assert null.status_code == 400 and null.json()["sku"] == ["This field may not be null."]
    assert Order.get_store().get_latest_version(actor) == 1


def test_a_body_that_is_not_an_object_or_not_json_answers_400(root, actor):
    for body in ([], ["ann"], "ann", 5):
        response = root.post(url(actor, "place"), body, format="json")
        assert response.status_code == 400, body
        assert response.json()["code"] == "invalid"
    malformed = root.post(url(actor, "place"), "{customer", content_type="application/json")
    assert malformed.status_code == 400
    assert malformed.json()["code"] == "parse_error"
    assert Order.get_store().get_latest_version(actor) == 0


def test_an_oversized_body_answers_413_and_stores_nothing(root, actor):
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000):
        response = post(root, actor, "place", {"customer": "x" * 2000})
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert Order.get_store().get_latest_version(actor) == 0


def test_unknown_commands_aggregates_and_namespaces_answer_404(root, actor):
    unknown = post(root, actor, "delete")
    assert unknown.status_code == 404
    assert "'delete' is not a command served" in unknown.json()["detail"]
    assert "place" in unknown.json()["detail"]  # the caller may write here: it is told what is
    # A method of the aggregate that is not a command is no more reachable.
    assert post(root, actor, "save").status_code == 404
    assert post(root, actor, "_placed").status_code == 404
    # A namespace with events whose aggregate is not served.
    get_event_store("test-api-raw").save_event(Event(event_type="X", actor_id=actor, version=1))
    for path in (f"{API}/test-api-raw/{actor}/commands/place/", f"{API}/nowhere/{actor}/"):
        response = root.post(path, {}, format="json") if "commands" in path else root.get(path)
        assert response.status_code == 404
        assert "no aggregate's commands are served" in response.json()["detail"]
    assert root.get(f"{API}/test-api-raw/{actor}/").status_code == 404
    # An invalid namespace or actor id answers 400 whoever asks.
    assert root.post(f"{API}/a__b/{actor}/commands/place/", {}, format="json").status_code == 400
    assert post(root, "x" * 300, "place", {"customer": "ann"}).status_code == 400
    # GET on a command is not allowed.
    assert root.get(url(actor, "place")).status_code == 405


# --- grants -----------------------------------------------------------------------------------


def test_grants_as_for_the_events_api(clients, actor):
    post(clients["superuser"], actor, "place", {"customer": "ann"})
    expected = {
        "anonymous": (403, 403),
        "no_grant": (404, 404),
        "read_grant": (403, 200),
        "write_grant": (200, 200),
        "superuser": (200, 200),
    }
    for kind, (write, read) in expected.items():
        client = clients[kind]
        response = post(client, actor, "add_line", LINE)
        assert response.status_code == write, (kind, response.json())
        assert client.get(f"{API}/{NS}/{actor}/").status_code == read, kind
    assert clients["no_grant"].get(f"{API}/{NS}/{actor}/").json()["detail"] == "no such namespace"
    assert post(clients["read_grant"], actor, "add_line", LINE).json()["code"] == (
        "permission_denied"
    )
    # Two lines: the write grant's and the superuser's.
    assert Order.objects.get(actor).version == 3


# --- Idempotency-Key --------------------------------------------------------------------------


def test_the_same_key_and_body_answer_the_first_response_without_running_again(root, actor):
    post(root, actor, "place", {"customer": "ann"})
    first = post(root, actor, "add_line", LINE, idempotency_key="line-1")
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    post(root, actor, "add_line", {**LINE, "sku": "ink"})  # the actor moves on
    again = post(
        root, actor, "add_line", dict(reversed(list(LINE.items()))), idempotency_key="line-1"
    )
    assert again.status_code == 200
    assert again.json() == first.json()  # the state as of the first answer
    assert again.headers["Idempotent-Replayed"] == "true"
    events = Order.get_store().get_events(actor)
    assert [e.event_type for e in events] == ["OrderPlaced", "LineAdded", "LineAdded"]
    assert events[1].command_id == "line-1" and FINGERPRINT_KEY in events[1].metadata


def test_the_same_key_with_another_body_or_command_answers_422(root, actor):
    post(root, actor, "place", {"customer": "ann"}, idempotency_key="k")
    other_body = post(root, actor, "place", {"customer": "bob"}, idempotency_key="k")
    assert other_body.status_code == 422
    assert other_body.json()["code"] == "idempotency_key_reused"
    post(root, actor, "add_line", LINE)
    other_command = post(root, actor, "add_line", LINE, idempotency_key="k")
    assert other_command.status_code == 422
    assert other_command.json()["code"] == "idempotency_key_reused"
    assert Order.objects.get(actor).version == 2  # place and one line, nothing else


def test_a_key_is_per_actor(root, actor):
    other = f"{actor}-b"
    assert post(root, actor, "place", {"customer": "ann"}, idempotency_key="k").status_code == 200
    answer = post(root, other, "place", {"customer": "ann"}, idempotency_key="k")
    assert answer.status_code == 200 and "Idempotent-Replayed" not in answer.headers
    assert Order.objects.get(other).version == 1


def test_a_command_id_stored_without_the_api_is_not_taken_for_a_key(root, actor):
    Order.objects.update(actor, lambda o: o.place("ann"), create=True, command_id="mine")
    response = post(root, actor, "place", {"customer": "ann"}, idempotency_key="mine")
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"


@pytest.mark.parametrize("key", ["", "x" * 256, "line\nbreak", "tab\there", "bell\x07"])
def test_an_unusable_key_answers_400(root, actor, key):
    response = post(root, actor, "place", {"customer": "ann"}, idempotency_key=key)
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid",
        "Idempotency-Key": ["must be 1 to 255 printable characters"],
    }
    assert Order.get_store().get_latest_version(actor) == 0


def test_concurrent_requests_with_one_key_apply_the_command_once(root, actor):
    post(root, actor, "place", {"customer": "ann"})
    Order.objects.forget()  # each thread starts from the store, as other processes would
    answers: list[Any] = []
    barrier = threading.Barrier(8)
    superuser = User.objects.get(username="root")  # a superuser's grants need no query

    def send() -> None:
        client = APIClient()
        client.force_authenticate(superuser)
        barrier.wait()
        response = post(client, actor, "add_line", LINE, idempotency_key="once")
        answers.append((response.status_code, response.json()))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [status for status, _ in answers] == [200] * 8
    assert all(body == answers[0][1] for _, body in answers)
    assert answers[0][1]["version"] == 2
    events = Order.get_store().get_events(actor)
    assert [e.command_id for e in events].count("once") == 1 and len(events) == 2


# --- X-Request-ID -----------------------------------------------------------------------------


def test_the_request_id_is_echoed_and_carried_by_the_events(root, actor):
    response = post(root, actor, "place", {"customer": "ann"}, x_request_id="req-42")
    assert response.headers["X-Request-ID"] == "req-42"
    (event,) = Order.get_store().get_events(actor)
    assert event.metadata[correlation.CORRELATION_KEY] == "req-42"
    assert event.metadata[correlation.CAUSATION_KEY] == "req-42"


def test_without_a_usable_request_id_a_fresh_one_is_made(root, actor):
    response = post(root, actor, "place", {"customer": "ann"}, x_request_id="has space")
    made = response.headers["X-Request-ID"]
    assert made != "has space" and uuid.UUID(made)
    (event,) = Order.get_store().get_events(actor)
    assert event.metadata[correlation.CORRELATION_KEY] == made
    # Every answer has one, errors too.
    refused = post(root, actor, "pay", x_request_id="r" * 201)
    assert refused.status_code == 422 and uuid.UUID(refused.headers["X-Request-ID"])
    assert (
        root.get(f"{API}/{NS}/{actor}/", HTTP_X_REQUEST_ID="read-1").headers["X-Request-ID"]
        == "read-1"
    )


def test_appended_events_carry_the_request_id_unless_they_have_their_own(root, actor):
    events_url = f"/api/aether/namespaces/test-api-raw/actors/{actor}/events/"
    body = {"expected_version": 0, "events": [
        {"event_type": "A"},
        {"event_type": "B", "metadata": {"correlationId": "theirs", "causationId": "c"}},
    ]}  # fmt: skip
    response = root.post(events_url, body, format="json", HTTP_X_REQUEST_ID="append-1")
    assert response.status_code == 201
    first, second = (e["metadata"] for e in response.json()["events"])
    assert first == {"correlationId": "append-1", "causationId": "append-1"}
    assert second == {"correlationId": "theirs", "causationId": "c"}


# --- registration and serializers -------------------------------------------------------------


class Typed(Aggregate):
    """Commands with every kind of hint."""

    seen: dict = {}

    class Meta:
        namespace = "test-api-typed"

    @command
    def take(
        self,
        name: str,
        count: int,
        ratio: float,
        flag: bool,
        price: Decimal,
        tags: list[str],
        scores: dict[str, int],
        size: Literal["s", "m"],
        note: str | None,
        extra,  # no hint: any JSON
        limit: int = 3,
    ) -> None:
        self.record(
            "Took",
            {"name": name, "count": count, "ratio": ratio, "flag": flag, "price": str(price)},
            tags=tags,
            scores=scores,
            size=size,
            note=note,
            extra=extra,
            limit=limit,
        )

    @command
    def positional(self, value: int, /) -> None:
        self.record("Took", value=value)

    @apply("Took")
    def _took(self, event: Event) -> None:
        self.seen = dict(event.data)


def test_the_serializer_follows_the_signature_and_hints():
    fields = argument_serializer(Typed, "take")().fields
    kinds = {name: type(field).__name__ for name, field in fields.items()}
    assert kinds == {
        "name": "CharField",
        "count": "IntegerField",
        "ratio": "FloatField",
        "flag": "BooleanField",
        "price": "DecimalField",
        "tags": "ListField",
        "scores": "DictField",
        "size": "ChoiceField",
        "note": "CharField",
        "extra": "JSONField",
        "limit": "IntegerField",
    }
    tags, scores = fields["tags"], fields["scores"]
    assert isinstance(tags, serializers.ListField) and isinstance(scores, serializers.DictField)
    assert type(tags.child).__name__ == "CharField"
    assert type(scores.child).__name__ == "IntegerField"
    assert [n for n, f in fields.items() if not f.required] == ["note", "limit"]
    assert fields["note"].allow_null
    with pytest.raises(ImproperlyConfigured, match="positional-only"):
        argument_serializer(Typed, "positional")


def test_typed_arguments_reach_the_command_as_their_types(root):
    commands.register(Typed, commands=["take"], creating=["take"])
    try:
        actor = f"t-{uuid.uuid4().hex[:8]}"
        body = {"name": " padded ", "count": 2, "ratio": 0.5, "flag": True, "price": "1.10",
                "tags": ["a"], "scores": {"x": 1}, "size": "m", "extra": {"any": [1]}}  # fmt: skip
        response = root.post(f"{API}/test-api-typed/{actor}/commands/take/", body, format="json")
        assert response.status_code == 200, response.json()
        seen = response.json()["state"]["seen"]
        assert seen == {**body, "price": "1.10", "note": None, "limit": 3}
        bad = root.post(
            f"{API}/test-api-typed/{actor}/commands/take/",
            {**body, "size": "xl", "tags": "a", "flag": "perhaps"},
            format="json",
        )
        assert bad.status_code == 400
        assert set(bad.json()) == {"code", "size", "tags", "flag"}
    finally:
        commands.unregister(Typed)


class WeighArguments(serializers.Serializer[Any]):
    grams = serializers.IntegerField(min_value=1)
    source = serializers.ChoiceField(choices=["scale", "label"])  # type: ignore[assignment]


def test_an_explicit_serializer_validates_instead(root):
    commands.register(Parcel, creating=["weigh"], serializers={"weigh": WeighArguments})
    try:
        actor = f"p-{uuid.uuid4().hex[:8]}"
        path = f"{API}/test-parcels/{actor}/commands/weigh/"
        refused = root.post(path, {"grams": 0, "source": "guess"}, format="json")
        assert refused.status_code == 400
        assert set(refused.json()) == {"code", "grams", "source"}
        done = root.post(path, {"grams": 5, "source": "scale"}, format="json")
        assert done.status_code == 200 and done.json()["state"]["grams"] == 5
    finally:
        commands.unregister(Parcel)


def test_registration_refuses_what_it_cannot_serve():
    router = commands.CommandRouter()
    with pytest.raises(ImproperlyConfigured, match="'save' not among its commands"):
        router.register(Order, commands=["place", "save"])
    with pytest.raises(ImproperlyConfigured, match=r"creating=\.\.\.\): 'pay' not among the comm"):
        router.register(Order, commands=["place"], creating=["pay"])
    with pytest.raises(ImproperlyConfigured, match=r"serializers=\.\.\.\): 'ship'"):
        router.register(Order, commands=["place"], serializers={"ship": WeighArguments})
    router.register(Order)
    assert router.get(NS).commands == ["add_line", "cancel", "pay", "place", "ship"]
    router.register(Order, commands=["pay"])  # again: replaces
    assert router.get(NS).commands == ["pay"]

    class Impostor(Order):
        class Meta:
            abstract = True

    with pytest.raises(ImproperlyConfigured, match=r"no Meta\.namespace"):
        router.register(Impostor)


# --- the schema -------------------------------------------------------------------------------


def test_the_schema_describes_each_command_with_its_arguments(root):
    schema = root.get("/api/aether/schema/?format=json").json()
    paths = schema["paths"]
    for name in ("place", "add_line", "pay", "ship", "cancel"):
        operation = paths[f"/api/aether/aggregates/{NS}/{{actor_id}}/commands/{name}/"]["post"]
        assert set(operation["responses"]) >= {"200", "400", "404", "409", "422"}
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert headers == {"Idempotency-Key", "X-Request-ID"}
    components = schema["components"]["schemas"]
    add_line = components["TestOrdersAddLineArguments"]
    assert add_line["properties"] == {
        "sku": {"type": "string"},
        "quantity": {"type": "integer"},
        "price_cents": {"type": "integer"},
    }
    assert sorted(add_line["required"]) == ["price_cents", "quantity", "sku"]
    cancel = components["TestOrdersCancelArguments"]
    assert cancel["properties"] == {"reason": {"type": "string"}} and "required" not in cancel
    result = components["CommandResult"]["properties"]
    assert set(result) == {"actor_id", "version", "state", "events"}
    assert "/api/aether/aggregates/{namespace}/{actor_id}/" in paths
    # The general route is not described a second time.
    assert not any("{command}" in path for path in paths)


def test_the_middleware_gives_a_projects_own_views_the_request_id(db, actor):
    """tests/urls.py's ``orders/<id>/place/`` is a plain Django view that saves an Order."""
    from django.test import Client

    middleware = [*settings.MIDDLEWARE, "aether_django.middleware.RequestIdMiddleware"]
    with override_settings(MIDDLEWARE=middleware):
        client = Client()
        response = client.get(f"/orders/{actor}/place/?customer=ann", HTTP_X_REQUEST_ID="mw-1")
        assert response.headers["X-Request-ID"] == "mw-1"
        made = client.get(f"/orders/{actor}-2/place/?customer=bob")
        fresh = made.headers["X-Request-ID"]
        # The API's views take the middleware's id rather than making another one.
        api = APIClient()
        api.force_authenticate(User.objects.create_superuser("mw", password="pw"))
        answer = post(api, f"{actor}-3", "place", {"customer": "cy"})
    assert uuid.UUID(fresh)
    ids = {
        a: Order.get_store().get_events(a)[0].metadata[correlation.CORRELATION_KEY]
        for a in (actor, f"{actor}-2", f"{actor}-3")
    }
    assert ids == {actor: "mw-1", f"{actor}-2": fresh, f"{actor}-3": answer.headers["X-Request-ID"]}


async def test_the_middleware_in_an_async_stack(actor):
    """Under ASGI (AsyncClient) the middleware runs as a coroutine, around an async view."""
    from django.test import AsyncClient

    await Order.objects.aupdate(actor, lambda o: o.place("ann"), create=True)
    middleware = [*settings.MIDDLEWARE, "aether_django.middleware.RequestIdMiddleware"]
    with override_settings(MIDDLEWARE=middleware):
        response = await AsyncClient().get(
            f"/orders/{actor}/add-line/?sku=pen", headers={"X-Request-ID": "mw-async"}
        )
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "mw-async"
    line = (await Order.get_store().aget_events(actor))[-1]
    assert line.metadata[correlation.CORRELATION_KEY] == "mw-async"


class Fresh(Aggregate):
    """An aggregate of a namespace no test has written to yet."""

    count: int = 0

    class Meta:
        namespace = f"test-api-new-{uuid.uuid4().hex[:8]}"

    @command
    def start(self) -> None:
        self.record("Started")

    @apply("Started")
    def _started(self, event: Event) -> None:
        self.count += 1


def test_a_command_that_would_create_a_namespace_takes_can_create(db):
    namespace = str(Fresh._meta.namespace)
    commands.register(Fresh, creating=["start"])
    try:
        clients = {}
        for name, can_create in (("no-create", False), ("create", True)):
            person = User.objects.create_user(name, password="pw")
            NamespaceGrant.objects.create(user=person, pattern="test-api-new-*", can_read=True,
                                          can_write=True, can_create=can_create)  # fmt: skip
            clients[name] = APIClient()
            clients[name].force_authenticate(person)
        path = f"{API}/{namespace}/f-1/commands/start/"
        refused = clients["no-create"].post(path, {}, format="json")
        assert refused.status_code == 403
        assert "can_create" in refused.json()["detail"]
        assert not get_event_store(namespace).exists()
        assert clients["create"].post(path, {}, format="json").status_code == 200
        assert clients["no-create"].post(path, {}, format="json").status_code == 200  # exists now
        assert Fresh.objects.get("f-1").count == 2
    finally:
        commands.unregister(Fresh)
