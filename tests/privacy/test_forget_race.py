"""forget() wins against projection batches that opened a subject's values with a key
still cached: after forget() returns, the read model of a declared projection holds no
value of the erased key, on SQLite and on a real PostgreSQL, whether the batch opened
its events before the key was erased or its process's cache outlived the erase."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
from django.db import connections

from aether_django import privacy
from aether_django.aggregates import Aggregate
from aether_django.events import Event
from aether_django.models import ForgottenKey, ProjectionCheckpoint
from aether_django.privacy import subject_hash
from aether_django.privacy.keys import bucket_key, get_key_ring
from aether_django.projections import Projection, ProjectionContext, on
from aether_django.projections.runner import NamespaceWorker, catch_up
from aether_django.runtime import get_runtime
from tests.projections.app.models import MemberCard

from .test_forget_read_models import database_bytes, declare, join

pytestmark = [
    pytest.mark.django_db(transaction=True),  # db_alias's "pg" adds its database
    pytest.mark.usefixtures("scratch_registry", "scratch_projections"),
]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def long_key_cache(settings: Any) -> None:
    """Keys stay cached for a minute: longer than any of these tests."""
    settings.AETHER = {**settings.AETHER, "PRIVACY_KEY_CACHE_SECONDS": 60}


@contextmanager
def cached_elsewhere(person: str) -> Iterator[None]:
    """Inside the block, forget(person) leaves this process's cached key of ``person``
    in place, as it leaves the cache of every process but the one that forgets."""
    warm = get_key_ring()._entry(person)
    assert warm is not None, "the key is not cached"
    yield
    rewarm(person, warm)


def rewarm(person: str, warm: Any) -> None:
    """Put a cache entry of ``person``'s key (as ``KeyRing._entry`` gave it) back."""
    ring = get_key_ring()
    with ring._lock:
        ring._cache[person] = warm


def rebuild(projection: type[Projection], alias: str) -> dict[str, str]:
    """Replay the projection from the start of its namespaces."""
    MemberCard.objects.using(alias).all().delete()
    ProjectionCheckpoint.objects.using(alias).filter(projection=projection._meta.name).update(
        sequence=0
    )
    return catch_up(projection)


def scene(alias: str) -> tuple[str, type[Aggregate], type[Projection], str]:
    """A new namespace, its member aggregate and card projection on ``alias``, and a
    new data subject."""
    namespace = f"privacy-race-{uuid.uuid4().hex[:8]}"
    Member, Cards = declare(namespace, alias, [])
    return namespace, Member, Cards, f"p-{uuid.uuid4().hex[:8]}"


def names(alias: str) -> dict[str, str]:
    return dict(MemberCard.objects.using(alias).values_list("member_id", "name"))


def running(projection: type[Projection], alias: str) -> bool:
    states = ProjectionCheckpoint.objects.using(alias).filter(projection=projection._meta.name)
    return list(states.values_list("state", flat=True)) == [ProjectionCheckpoint.RUNNING]


@pytest.mark.usefixtures("long_key_cache")
def test_a_runner_whose_cache_outlived_forget_writes_the_marker(db_alias: str) -> None:
    namespace, Member, Cards, person = scene(db_alias)
    first, second = f"Kira First {uuid.uuid4().hex[:6]}", f"Kira Second {uuid.uuid4().hex[:6]}"
    join(Member, "m-1", person, first)
    assert catch_up(Cards) == {namespace: "caught-up"}
    assert names(db_alias) == {"m-1": first}
    warm = get_key_ring()._entry(person)

    with cached_elsewhere(person):
        audit = privacy.forget(person)
    assert audit.data["rows_deleted"] == {"projection_tests.MemberCard": 1}
    # Within the cache bound, a save here still seals with the forgotten key, and the
    # runner here can still open it: a new event of the subject, then a rebuild.
    join(Member, "m-2", person, second)
    assert catch_up(Cards) == {namespace: "caught-up"}
    assert names(db_alias) == {"m-2": privacy.FORGOTTEN}
    rewarm(person, warm)  # (the runner dropped it when it found the tombstone)
    assert rebuild(Cards, db_alias) == {namespace: "caught-up"}

    assert names(db_alias) == {"m-1": privacy.FORGOTTEN, "m-2": privacy.FORGOTTEN}
    raw = database_bytes(db_alias)
    assert first.encode() not in raw and second.encode() not in raw
    assert running(Cards, db_alias)


def test_a_batch_opened_before_forget_and_committed_after_it_keeps_no_value(
    db_alias: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace, Member, Cards, person = scene(db_alias)
    secret = f"Lena Opened {uuid.uuid4().hex[:6]}"
    join(Member, "m-1", person, secret)

    # The worker opens its first batch, then waits (without blocking the event loop
    # that forget() needs) until forget() has returned, then applies it.
    opened, resume = threading.Event(), threading.Event()
    original = NamespaceWorker._open_personal

    async def open_then_wait(self: NamespaceWorker, items: list[Any]) -> Any:
        result = await original(self, items)
        if not opened.is_set():
            opened.set()
            await asyncio.to_thread(resume.wait, 30)
        return result

    monkeypatch.setattr(NamespaceWorker, "_open_personal", open_then_wait)
    outcome: dict[str, str] = {}
    worker = threading.Thread(target=lambda: outcome.update(catch_up(Cards)))
    worker.start()
    try:
        assert opened.wait(30)
        privacy.forget(person)
    finally:
        resume.set()
        worker.join(30)

    assert outcome == {namespace: "caught-up"}
    assert names(db_alias) == {"m-1": privacy.FORGOTTEN}
    assert secret.encode() not in database_bytes(db_alias)
    assert running(Cards, db_alias)


def _key_erased(person: str) -> bool:
    async def look() -> bool:
        kv = await get_key_ring().bucket()
        try:
            entry = await kv.get(bucket_key(person))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return True
        return not entry.value

    return get_runtime().run(look())


def test_forget_waits_for_a_batch_under_way_and_then_deletes_its_rows(db_alias: str) -> None:
    """On PostgreSQL forget() waits for the batch's checkpoint lock, on SQLite for the
    database's write lock the batch holds (the busy timeout)."""
    alias = db_alias
    namespace = f"privacy-race-{uuid.uuid4().hex[:8]}"
    Member = declare(namespace, alias, [])[0]
    in_handler, resume = threading.Event(), threading.Event()

    class SlowCards(Projection):
        class Meta:
            source = namespace
            name = f"slow-cards-{namespace}"
            models = [MemberCard]
            database = alias
            subject_fields = {MemberCard: "person"}

        @on("Joined")
        def joined(self, event: Event, context: ProjectionContext) -> None:
            MemberCard.objects.using(context.database).update_or_create(
                member_id=event.actor_id,
                defaults={"person": event.data["person"], "name": event.data["name"]},
            )
            if not in_handler.is_set():
                in_handler.set()
                resume.wait(30)

    person = f"p-{uuid.uuid4().hex[:8]}"
    secret = f"Mona Underway {uuid.uuid4().hex[:6]}"
    join(Member, "m-1", person, secret)
    outcome: dict[str, str] = {}
    worker = threading.Thread(target=lambda: outcome.update(catch_up(SlowCards)))
    worker.start()
    failed: list[BaseException] = []

    def forget_then_close() -> None:
        try:
            privacy.forget(person)
        except BaseException as exc:
            failed.append(exc)
        finally:
            connections.close_all()  # this thread's connection, before the test ends

    forgetting = threading.Thread(target=forget_then_close)
    try:
        assert in_handler.wait(30)
        forgetting.start()
        deadline = time.monotonic() + 30
        while not _key_erased(person):
            assert time.monotonic() < deadline, "forget() did not erase the key"
            time.sleep(0.01)
        # Give forget() the time to reach its database work while the batch is open
        # (the order that lost the rows before: its delete did not see them).
        time.sleep(0.5)
    finally:
        resume.set()
        worker.join(30)
        if forgetting.is_alive():
            forgetting.join(30)

    assert not failed
    assert outcome == {namespace: "caught-up"}
    assert names(alias) == {}
    assert secret.encode() not in database_bytes(alias)
    assert running(SlowCards, alias)


def test_a_new_life_is_projected_in_plain_and_the_old_one_as_the_marker(
    db_alias: str,
) -> None:
    namespace, Member, Cards, person = scene(db_alias)
    old, new = f"Nora Old {uuid.uuid4().hex[:6]}", f"Nora New {uuid.uuid4().hex[:6]}"
    join(Member, "m-1", person, old)
    assert catch_up(Cards) == {namespace: "caught-up"}
    forgotten_kid = privacy.forget(person).data["kid"]
    assert forgotten_kid

    join(Member, "m-2", person, new)  # a new key, a new key id
    assert rebuild(Cards, db_alias) == {namespace: "caught-up"}

    assert names(db_alias) == {"m-1": privacy.FORGOTTEN, "m-2": new}
    assert running(Cards, db_alias)
    # The tombstone names the erased key by its id and the subject by its hash only.
    tombstones = ForgottenKey.objects.using(db_alias).filter(subject_sha256=subject_hash(person))
    assert list(tombstones.values_list("kid", flat=True)) == [forgotten_kid]
    # The new life's key has a tombstone of its own once forgotten; forgetting again
    # finds no key, and adds none.
    second_kid = privacy.forget(person).data["kid"]
    assert second_kid not in (None, forgotten_kid)
    assert privacy.forget(person).data["kid"] is None
    assert sorted(tombstones.values_list("kid", flat=True)) == sorted([forgotten_kid, second_kid])


@pytest.mark.django_db(databases=["default", "pg"], transaction=True)
@pytest.mark.usefixtures("long_key_cache")
def test_forget_in_another_process_wins_against_a_warm_cache_here(aether_nats_url: str) -> None:
    """A real second process forgets (PostgreSQL, the database both processes share)
    while this process's runner still holds the key, then projects the subject."""
    alias = "pg"
    namespace, Member, Cards, person = scene(alias)
    first, second = f"Olga First {uuid.uuid4().hex[:6]}", f"Olga Second {uuid.uuid4().hex[:6]}"
    join(Member, "m-1", person, first)
    assert catch_up(Cards) == {namespace: "caught-up"}
    assert get_key_ring()._entry(person) is not None

    env = {**os.environ, "AETHER_NATS_URL": aether_nats_url, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.privacy.forgetproc", namespace, alias, person],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rows_deleted"] == {"projection_tests.MemberCard": 1}
    assert get_key_ring()._entry(person) is not None  # still warm here

    join(Member, "m-2", person, second)  # sealed here with the cached, erased key
    assert catch_up(Cards) == {namespace: "caught-up"}
    assert names(alias) == {"m-2": privacy.FORGOTTEN}
    raw = database_bytes(alias)
    assert first.encode() not in raw and second.encode() not in raw
    assert running(Cards, alias)
