"""forget() deletes a data subject's read-model rows (``Meta.subject_fields``) and runs
``on_forget()`` hooks, on SQLite and on a real PostgreSQL: afterwards the database holds
no plaintext of the subject's personal values, and other subjects' rows stay."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest
from django.core import checks
from django.core.management import call_command
from django.db import connections

from aether_django import privacy
from aether_django.aggregates import Aggregate
from aether_django.events import Event
from aether_django.models import ForgottenKey
from aether_django.projections import ForgetContext, Projection, ProjectionContext, on
from aether_django.projections.runner import catch_up
from tests.projections.app.models import Applied, MemberCard, MemberNote

from .conftest import member_aggregate

pytestmark = [
    pytest.mark.django_db(transaction=True),  # db_alias's "pg" adds its database
    pytest.mark.usefixtures("scratch_registry", "scratch_projections"),
]


def hashed(person: str) -> str:
    return hashlib.sha256(person.encode()).hexdigest()


def declare(
    namespace: str, alias: str, fail: list[bool]
) -> tuple[type[Aggregate], type[Projection]]:
    """A member aggregate with a personal name; a projection copying it into MemberCard
    (rows declared as the subject's) and MemberNote (erased by its on_forget hook), on
    the database ``alias``."""

    Member = member_aggregate(namespace)

    class Cards(Projection):
        class Meta:
            source = namespace
            name = f"cards-{namespace}"
            models = [MemberCard, MemberNote]
            database = alias
            subject_fields = {MemberCard: "person"}

        @on("Joined")
        def joined(self, event: Event, context: ProjectionContext) -> None:
            person, name = event.data["person"], event.data["name"]
            MemberCard.objects.using(context.database).update_or_create(
                member_id=event.actor_id, defaults={"person": person, "name": name}
            )
            MemberNote.objects.using(context.database).create(
                person_hash=hashed(person), text=f"welcome {name}"
            )

        def on_forget(self, subject_id: str, context: ForgetContext) -> None:
            if fail and fail.pop():
                raise RuntimeError("the notes table is locked")
            MemberNote.objects.using(context.database).filter(
                person_hash=hashed(subject_id)
            ).delete()

    return Member, Cards


def database_bytes(alias: str) -> bytes:
    """Everything the database holds: the SQLite database's pages (free pages, where
    deleted rows linger, included), or every PostgreSQL table's rows."""
    connection = connections[alias]
    connection.ensure_connection()
    if connection.vendor == "sqlite":
        return bytes(connection.connection.serialize())
    parts: list[bytes] = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        for (table,) in cursor.fetchall():
            cursor.execute(f'SELECT t::text FROM "{table}" AS t')
            parts.extend(row[0].encode() for row in cursor.fetchall())
    return b"\n".join(parts)


def join(Member: type[Aggregate], actor: str, person: str, name: str) -> None:
    member = Member(actor)
    member.record("Joined", person=person, name=name)
    member.save()


def test_forget_deletes_the_subjects_rows_and_runs_on_forget(db_alias: str) -> None:
    namespace = f"privacy-rows-{uuid.uuid4().hex[:8]}"
    Member, Cards = declare(namespace, db_alias, [])
    secret, kept = f"Hilda Secret {uuid.uuid4().hex[:6]}", f"Ivan Kept {uuid.uuid4().hex[:6]}"
    join(Member, "m-1", "p-forgotten", secret)
    join(Member, "m-2", "p-kept", kept)
    assert catch_up(Cards) == {namespace: "caught-up"}
    assert secret.encode() in database_bytes(db_alias)
    connection = connections[db_alias]
    if connection.vendor == "sqlite":
        # The attack: a SQLite built to keep deleted bytes in its free pages.
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA secure_delete = OFF")

    audit = privacy.forget("p-forgotten")

    assert audit.data["rows_deleted"] == {"projection_tests.MemberCard": 1}
    raw = database_bytes(db_alias)
    assert secret.encode() not in raw
    assert kept.encode() in raw
    cards = MemberCard.objects.using(db_alias)
    assert list(cards.values_list("person", "name")) == [("p-kept", kept)]
    notes = MemberNote.objects.using(db_alias)
    assert list(notes.values_list("text", flat=True)) == [f"welcome {kept}"]
    # A rebuild after forget() runs through, and copies the marker, not the value.
    cards.all().delete()
    notes.all().delete()
    from aether_django.models import ProjectionCheckpoint

    ProjectionCheckpoint.objects.using(db_alias).filter(projection=Cards._meta.name).update(
        sequence=0
    )
    assert catch_up(Cards) == {namespace: "caught-up"}
    assert sorted(cards.values_list("name", flat=True)) == sorted([privacy.FORGOTTEN, kept])
    assert secret.encode() not in database_bytes(db_alias)


def test_a_failing_hook_rolls_its_database_back_and_a_second_forget_finishes(
    db_alias: str,
) -> None:
    namespace = f"privacy-rows-{uuid.uuid4().hex[:8]}"
    fail = [True]
    Member, Cards = declare(namespace, db_alias, fail)
    secret = f"Jade Secret {uuid.uuid4().hex[:6]}"
    join(Member, "m-1", "p-again", secret)
    assert catch_up(Cards) == {namespace: "caught-up"}

    with pytest.raises(privacy.ForgetIncompleteError, match="run forget again"):
        privacy.forget("p-again")
    # The key is gone already; the database's step was rolled back as a whole, but
    # for the erased key's tombstone: forget() run again finds no key to name.
    assert Member.objects.get("m-1").name == privacy.FORGOTTEN
    assert MemberCard.objects.using(db_alias).filter(person="p-again").count() == 1
    tombstones = ForgottenKey.objects.using(db_alias).filter(subject_sha256=hashed("p-again"))
    assert tombstones.count() == 1

    call_command("aether_privacy", "forget", "p-again")
    assert not MemberCard.objects.using(db_alias).filter(person="p-again").exists()
    assert not MemberNote.objects.using(db_alias).filter(person_hash=hashed("p-again")).exists()
    assert secret.encode() not in database_bytes(db_alias)
    assert tombstones.count() == 1


@pytest.mark.django_db
def test_subject_fields_declared_wrongly_are_refused() -> None:
    class NotAMapping(Projection):
        class Meta:
            source = "privacy-bad"
            name = "privacy-bad-1"
            models = [MemberCard]
            subject_fields = ["person"]

    class NotOwned(Projection):
        class Meta:
            source = "privacy-bad"
            name = "privacy-bad-2"
            models = [MemberCard]
            subject_fields = {Applied: "actor_id"}

    class NoSuchField(Projection):
        class Meta:
            source = "privacy-bad"
            name = "privacy-bad-3"
            models = [MemberCard]
            subject_fields = {MemberCard: "customer"}

    found: dict[str, list[Any]] = {}
    for message in checks.run_checks():
        if message.obj in (NotAMapping, NotOwned, NoSuchField):
            found.setdefault(message.obj.__name__, []).append((message.id, message.msg))
    assert found["NotAMapping"] == [
        (
            "aether_django.E501",
            "Projection tests.privacy.test_forget_read_models."
            "test_subject_fields_declared_wrongly_are_refused.<locals>.NotAMapping: "
            "Meta.subject_fields must map Django model classes to the name of the field "
            "holding a row's data subject id.",
        )
    ]
    assert [m[0] for m in found["NotOwned"]] == ["aether_django.E501"]
    assert "which is not in Meta.models" in found["NotOwned"][0][1]
    assert [m[0] for m in found["NoSuchField"]] == ["aether_django.E505"]
    assert "MemberCard.customer, which is not a field" in found["NoSuchField"][0][1]
