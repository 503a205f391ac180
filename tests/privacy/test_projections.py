"""Projections see personal fields opened, the marker after forget(), and stop (failed)
at an envelope that is malformed, on a real nats-server and a real runner."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from aether_django import privacy
from aether_django.aggregates import Aggregate
from aether_django.events import Event
from aether_django.projections import Projection, ProjectionContext, on
from aether_django.projections.runner import catch_up

from .conftest import member_aggregate

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("scratch_registry", "scratch_projections"),
]


def declare(namespace: str) -> tuple[type[Aggregate], type[Projection], list[tuple[Any, ...]]]:
    """A member aggregate with a personal name, and a projection noting what it sees."""
    seen: list[tuple[Any, ...]] = []
    Member = member_aggregate(namespace)

    class Members(Projection):
        class Meta:
            source = namespace
            name = f"members-{namespace}"

        @on("Joined")
        def joined(self, event: Event, context: ProjectionContext) -> None:
            seen.append((event.data["name"], event.metadata.get(privacy.FORGOTTEN_KEY)))

    return Member, Members, seen


def test_a_rebuild_after_forget_shows_the_marker() -> None:
    namespace = f"privacy-proj-{uuid.uuid4().hex[:8]}"
    Member, Members, seen = declare(namespace)
    for person, name in (("p-1", "Erin Personal"), ("p-2", "Frank Kept")):
        member = Member(f"member-{person}")
        member.record("Joined", person=person, name=name)
        member.save()
    assert catch_up(Members) == {namespace: "caught-up"}
    assert seen == [("Erin Personal", None), ("Frank Kept", None)]

    privacy.forget("p-1")
    seen.clear()
    from aether_django.models import ProjectionCheckpoint

    ProjectionCheckpoint.objects.filter(projection=Members._meta.name).update(sequence=0)
    assert catch_up(Members) == {namespace: "caught-up"}
    assert seen == [(privacy.FORGOTTEN, "name"), ("Frank Kept", None)]


def test_a_malformed_envelope_fails_the_projection_there() -> None:
    namespace = f"privacy-proj-{uuid.uuid4().hex[:8]}"
    Member, Members, seen = declare(namespace)
    member = Member("member-1")
    member.record("Joined", person="p-3", name="Gina Good")
    member.save()
    (good,) = Member.get_store().get_events("member-1")
    bad = Event(
        event_type="Joined",
        actor_id="member-2",
        version=1,
        data={**good.data, "aether:enc": {**good.data["aether:enc"], "ct": "%%%"}},
    )
    Member.get_store().save_events([bad])
    assert catch_up(Members) == {namespace: "failed"}
    # (The good event's batch is rolled back and applied again on its own.)
    assert set(seen) == {("Gina Good", None)}
    from aether_django.models import ProjectionCheckpoint

    checkpoint = ProjectionCheckpoint.objects.get(projection=Members._meta.name)
    assert "not valid base64" in checkpoint.last_error
    assert checkpoint.last_error_sequence == checkpoint.sequence + 1
    # Nothing is lost: the stored event is as it was written.
    assert Member.get_store().get_events("member-2")[0].data == bad.data
