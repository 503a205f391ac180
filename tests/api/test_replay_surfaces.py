"""A history the aggregate's code cannot replay gets the same clear answer on every
surface (API, admin, the replay command, the inspection module), never a 500."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from aether_django import aggregates, inspection
from aether_django.errors import AggregateReplayError
from aether_django.events import Event

API = "/api/aether"
STREAMS = "/admin/aether_django/streaminspection"


@pytest.fixture
def till(ns) -> Iterator[type[aggregates.Aggregate]]:
    """An aggregate in the test's namespace whose handler reads a field, and one actor
    whose second event lacks it."""

    class Till(aggregates.Aggregate):
        cents: int = 0

        class Meta:
            namespace = ns

        @aggregates.apply("Paid")
        def _paid(self, event: Event) -> None:
            self.cents += event.data["cents"]  # KeyError on data without "cents"

    Till.get_store().save_events(
        [
            Event(event_type="Paid", actor_id="till-1", version=1, data={"cents": 5}),
            Event(event_type="Paid", actor_id="till-1", version=2, data={"euros": 1}),
        ]
    )
    try:
        yield Till
    finally:
        aggregates._registry.pop(Till._meta.label, None)


def test_inspection_raises_the_one_replay_error(till, ns):
    with pytest.raises(AggregateReplayError) as caught:
        inspection.aggregate_state(ns, "till-1")
    assert (caught.value.actor_id, caught.value.version) == ("till-1", 2)
    assert isinstance(caught.value.cause, KeyError)
    assert inspection.aggregate_state(ns, "till-1", at_version=1).state == {"cents": 5}


def test_the_api_answers_422_cannot_apply(till, ns, root):
    response = root.get(f"{API}/namespaces/{ns}/actors/till-1/state/")
    assert response.status_code == 422
    assert response.json() == {
        "code": "cannot_apply",
        "detail": "Till cannot build this actor's state from its stored events: "
        "its code raised KeyError",
    }


def test_the_admin_shows_it_beside_the_history(till, ns, db):
    client = Client()
    client.force_login(User.objects.create_superuser(f"root-{uuid.uuid4().hex[:6]}"))
    response = client.get(f"{STREAMS}/ns/{ns}/till-1/")
    assert response.status_code == 200
    page = response.content.decode()
    assert (
        "The Till cannot be rebuilt: Till cannot replay actor &#x27;till-1&#x27; at version 2 "
        "(event &#x27;Paid&#x27;): its code raised KeyError: &#x27;cents&#x27;"
    ) in page
    assert "euros" in page  # the timeline is still shown


def test_the_replay_command_names_the_actor(till, ns):
    out = io.StringIO()
    with pytest.raises(CommandError, match="problems found"):
        call_command("aether_replay", ns, "--no-progress", stdout=out, stderr=io.StringIO())
    assert "  till-1: KeyError: 'cents'" in out.getvalue()
