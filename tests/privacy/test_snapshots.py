"""Snapshots of aggregates with personal data, on a real nats-server: their state is
sealed under each data subject's key, so the snapshot bucket (its history included)
never holds a personal value in plain; after forget() a load ignores the snapshot and
replays the events (which give the marker); rotation keeps snapshots readable; and
the snapshots of aggregates without personal data are stored byte for byte as before."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any

import nats
import pytest

from aether_django import privacy
from aether_django.events import ActorSnapshot, encode_snapshot
from aether_django.names import snapshot_bucket
from aether_django.privacy import FORGOTTEN
from aether_django.privacy.keys import get_key_ring
from aether_django.store.base import EventStore

from .conftest import _scan, forms, new_id
from .domain import Group, PlainSnap, SnapOrder

ALICE = ("Alice Liddell", "alice.liddell@example.org")
BOB = ("Bob Marley-Example", "bob.example@example.net")


@pytest.fixture
def raw_snapshots(aether_nats_url: str) -> Callable[[str], bytes]:
    """raw_snapshots(namespace): every message (all history) of its snapshot bucket."""
    return lambda namespace: asyncio.run(_scan(aether_nats_url, f"KV_{snapshot_bucket(namespace)}"))


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The first version of every read of SnapOrder's and Group's events (0: the whole
    history), to tell a load from a snapshot from a full replay."""
    seen: list[int] = []
    # On the store class: a settings change builds new stores. The synchronous reads
    # run the asynchronous one, so one spy sees both.
    store_class = type(SnapOrder.get_store())
    original = store_class.aget_events
    watched = {SnapOrder._meta.namespace, Group._meta.namespace}

    async def spy(self: Any, actor_id: str, from_version: int = 0, *a: Any, **k: Any) -> Any:
        if self.namespace in watched:
            seen.append(from_version)
        return await original(self, actor_id, from_version, *a, **k)

    monkeypatch.setattr(store_class, "aget_events", spy)
    yield seen


def snapshotted(subject: str, person: tuple[str, str]) -> SnapOrder:
    """An order at version 2, with a snapshot at version 2."""
    order = SnapOrder(new_id("order"))
    order.place(subject, *person, 30)
    order.annotate("leave at the door")
    order.save()
    assert SnapOrder.get_store().get_latest_snapshot(order.actor_id) is not None
    return order


def assert_no_plaintext(raw: bytes, *values: str) -> None:
    for value in values:
        for form in forms(value):
            assert form not in raw, value


# --- sealed on save, opened on load ------------------------------------------------------------


def test_a_snapshot_holds_no_personal_value_and_loads_readable(
    raw_snapshots: Callable[[str], bytes], reads: list[int]
) -> None:
    subject = new_id("customer")
    order = snapshotted(subject, ALICE)

    raw = raw_snapshots("privacy_snap_orders")
    assert_no_plaintext(raw, *ALICE)
    snapshot = SnapOrder.get_store().get_latest_snapshot(order.actor_id)
    assert snapshot is not None and snapshot.version == 2
    # The subjects stay plain (they find the keys); the state is one envelope.
    assert snapshot.state["subjects"] == [subject]
    sealed = snapshot.state["state"]
    assert set(sealed) == {"aether:enc", "subject", "kid", "ct"}
    assert sealed["subject"] == subject
    # Not even the fields that are not personal: the whole state is sealed.
    assert b"leave at the door" not in raw

    get_key_ring().drop()
    loaded = SnapOrder.objects.get(order.actor_id)
    assert reads == [3]  # from the snapshot: only what follows it was read
    assert (loaded.customer, loaded.email, loaded.note, loaded.version) == (
        *ALICE,
        "leave at the door",
        2,
    )
    # A snapshot written later (from a loaded aggregate) is sealed the same way.
    loaded.annotate("ring twice")
    loaded.annotate("ring three times")
    loaded.save()
    again = SnapOrder.get_store().get_latest_snapshot(order.actor_id)
    assert again is not None and again.version == 4 and again.state["subjects"] == [subject]
    assert_no_plaintext(raw_snapshots("privacy_snap_orders"), *ALICE)
    assert SnapOrder.objects.get(order.actor_id).email == ALICE[1]


async def test_async_saves_and_loads_seal_and_open_snapshots(
    raw_snapshots: Callable[[str], bytes], reads: list[int]
) -> None:
    subject = new_id("customer")
    order = SnapOrder(new_id("order"))
    order.place(subject, *BOB, 5)
    order.annotate("async")
    await order.asave()
    snapshot = await SnapOrder.get_store().aget_latest_snapshot(order.actor_id)
    assert snapshot is not None and snapshot.state["subjects"] == [subject]
    assert_no_plaintext(await asyncio.to_thread(raw_snapshots, "privacy_snap_orders"), *BOB)
    get_key_ring().drop()
    loaded = await SnapOrder.objects.aget(order.actor_id)
    assert reads == [3]
    assert (loaded.customer, loaded.email) == BOB

    await privacy.aforget(subject)
    loaded = await SnapOrder.objects.aget(order.actor_id)
    assert reads[-1] == 0  # the snapshot could not be opened: the events were replayed
    assert (loaded.customer, loaded.email, loaded.note) == (FORGOTTEN, FORGOTTEN, "async")


# --- after forget ---------------------------------------------------------------------------


def test_after_forget_the_snapshot_is_ignored_and_the_events_give_the_marker(
    raw_snapshots: Callable[[str], bytes],
    raw_key_bucket: Callable[..., bytes],
    reads: list[int],
) -> None:
    alice, bob = new_id("customer"), new_id("customer")
    order = snapshotted(alice, ALICE)
    other = snapshotted(bob, BOB)

    privacy.forget(alice)
    assert_no_plaintext(raw_snapshots("privacy_snap_orders"), *ALICE)
    assert_no_plaintext(raw_key_bucket(), *ALICE)
    loaded = SnapOrder.objects.get(order.actor_id)
    assert reads[-1] == 0  # replayed from the first event
    assert (loaded.customer, loaded.email, loaded.note, loaded.total) == (
        FORGOTTEN,
        FORGOTTEN,
        "leave at the door",
        30,
    )
    # Another subject's snapshot is untouched, and still used.
    reads.clear()
    assert SnapOrder.objects.get(other.actor_id).email == BOB[1]
    assert reads == [3]

    # Saving on: the forgotten subject has no key, and none is made for a snapshot,
    # so no snapshot is taken (the old one stays unreadable, the events replay).
    loaded.annotate("one")
    loaded.annotate("two")
    loaded.save()
    latest = SnapOrder.get_store().get_latest_snapshot(order.actor_id)
    assert latest is not None and latest.version == 2
    assert get_key_ring()._cached(alice) is None
    replayed = SnapOrder.objects.get(order.actor_id)
    assert (replayed.email, replayed.note, replayed.version) == (FORGOTTEN, "two", 4)
    assert_no_plaintext(raw_snapshots("privacy_snap_orders"), *ALICE)


def test_a_subject_forgotten_then_back_seals_its_new_life_only(
    raw_snapshots: Callable[[str], bytes],
) -> None:
    subject = new_id("customer")
    order = snapshotted(subject, ALICE)
    privacy.forget(subject)
    loaded = SnapOrder.objects.get(order.actor_id)
    loaded.place(subject, *BOB, 1)  # a new life: a new key
    loaded.annotate("back")
    loaded.save()
    snapshot = SnapOrder.get_store().get_latest_snapshot(order.actor_id)
    assert snapshot is not None and snapshot.version == 4
    assert_no_plaintext(raw_snapshots("privacy_snap_orders"), *ALICE, *BOB)
    get_key_ring().drop()
    again = SnapOrder.objects.get(order.actor_id)
    assert (again.customer, again.email, again.note) == (*BOB, "back")


def test_an_aggregate_loaded_before_forget_snapshots_nothing_under_the_new_life_key(
    raw_snapshots: Callable[[str], bytes],
) -> None:
    """Its state holds the forgotten life's values: sealed under the subject's new key,
    they would be readable again."""
    subject = new_id("customer")
    stale = SnapOrder(new_id("order"))
    stale.place(subject, *ALICE, 1)
    stale.save()  # version 1: no snapshot yet
    stale = SnapOrder.objects.get(stale.actor_id)  # plain state, in this process
    privacy.forget(subject)
    fresh = SnapOrder(new_id("order"))
    fresh.place(subject, *BOB, 2)  # a new life: the subject has a key again
    fresh.save()

    stale.annotate("after the forget")
    stale.save()  # version 2: a snapshot is due, but not under the new key
    assert SnapOrder.get_store().get_latest_snapshot(stale.actor_id) is None
    assert_no_plaintext(raw_snapshots("privacy_snap_orders"), *ALICE)
    loaded = SnapOrder.objects.get(stale.actor_id)
    assert (loaded.email, loaded.note) == (FORGOTTEN, "after the forget")


def test_several_subjects_each_seal_the_snapshot_and_forgetting_one_replays(
    raw_snapshots: Callable[[str], bytes], reads: list[int]
) -> None:
    alice, bob = new_id("member"), new_id("member")
    group = Group(new_id("group"))
    group.join(alice, ALICE[0])
    group.join(bob, BOB[0])
    group.save()
    snapshot = Group.get_store().get_latest_snapshot(group.actor_id)
    assert snapshot is not None and snapshot.state["subjects"] == sorted([alice, bob])
    outer = snapshot.state["state"]
    assert outer["subject"] == max(alice, bob)  # the last subject seals the outer layer
    assert_no_plaintext(raw_snapshots("privacy_snap_groups"), ALICE[0], BOB[0])

    get_key_ring().drop()
    assert Group.objects.get(group.actor_id).names == {alice: ALICE[0], bob: BOB[0]}
    assert reads == [3]

    for gone, stays in ((alice, bob), (bob, alice)):
        member = Group(new_id("group"))
        member.join(gone, "Gone Person")
        member.join(stays, "Staying Person")
        member.save()
        privacy.forget(gone)
        reads.clear()
        loaded = Group.objects.get(member.actor_id)
        assert reads == [0], gone  # either subject's forget makes the snapshot unusable
        assert loaded.names == {gone: FORGOTTEN, stays: "Staying Person"}
        assert_no_plaintext(raw_snapshots("privacy_snap_groups"), "Gone Person")


# --- rotation -------------------------------------------------------------------------------


def test_rotation_keeps_snapshots_readable(settings: Any, reads: list[int]) -> None:
    bucket = new_id("keys").replace("-", "_")
    old_key = base64.b64encode(b"O" * 32).decode()
    new_key = base64.b64encode(b"N" * 32).decode()
    settings.AETHER = {**settings.AETHER, "PRIVACY_BUCKET": bucket, "PRIVACY_MASTER_KEY": old_key}
    order = snapshotted(new_id("customer"), ALICE)

    settings.AETHER = {
        **settings.AETHER,
        "PRIVACY_MASTER_KEY": new_key,
        "PRIVACY_OLD_MASTER_KEY": old_key,
    }
    assert privacy.rotate_master_key() == 2  # the data key and the verifier
    settings.AETHER = {**settings.AETHER, "PRIVACY_OLD_MASTER_KEY": ""}
    get_key_ring().drop()
    reads.clear()
    loaded = SnapOrder.objects.get(order.actor_id)
    assert reads == [3]  # the snapshot sealed before the rotation still opens
    assert (loaded.customer, loaded.email) == ALICE


# --- snapshots that must not be used -------------------------------------------------------------


def test_a_plain_snapshot_of_an_aggregate_with_personal_data_is_ignored(
    caplog: pytest.LogCaptureFixture, reads: list[int]
) -> None:
    """One written before snapshots were sealed (or through the API) may hold personal
    values in plain: it must not bring them back after forget()."""
    subject = new_id("customer")
    order = snapshotted(subject, ALICE)
    store = SnapOrder.get_store()
    plain = dataclasses.replace(order._snapshot(), state=_without_subjects(order._snapshot()))
    store.save_snapshot(plain)
    privacy.forget(subject)
    with caplog.at_level(logging.WARNING):
        loaded = SnapOrder.objects.get(order.actor_id)
    assert reads[-1] == 0
    assert loaded.email == FORGOTTEN
    assert "its state is not sealed" in caplog.text


def _without_subjects(snapshot: ActorSnapshot) -> dict[str, Any]:
    return {k: v for k, v in snapshot.state.items() if k != "subjects"}


@pytest.mark.parametrize("tamper", ["other_actor", "other_version", "no_subjects", "garbled"])
def test_a_snapshot_that_does_not_authenticate_is_ignored_and_the_events_replay(
    tamper: str, caplog: pytest.LogCaptureFixture, reads: list[int]
) -> None:
    store: EventStore = SnapOrder.get_store()
    source = snapshotted(new_id("customer"), ALICE)
    target = snapshotted(new_id("customer"), BOB)
    target.annotate("three")
    target.save()
    own = store.get_latest_snapshot(target.actor_id)
    other = store.get_latest_snapshot(source.actor_id)
    assert own is not None and other is not None
    state, version = dict(own.state), 2
    if tamper == "other_actor":  # another actor's snapshot, sealed for it
        state = dict(other.state)
    elif tamper == "other_version":  # its own, claiming a later version
        version = 3
    elif tamper == "no_subjects":  # its subjects struck out: it would pass as plain
        state["subjects"] = []
    else:
        state["state"] = {**state["state"], "ct": base64.b64encode(b"x" * 40).decode()}
    store.save_snapshot(ActorSnapshot(actor_id=target.actor_id, version=version, state=state))
    reads.clear()
    with caplog.at_level(logging.WARNING):
        loaded = SnapOrder.objects.get(target.actor_id)
    assert reads == [0], tamper  # ignored: replayed from the first event
    assert (loaded.customer, loaded.email, loaded.note, loaded.version) == (*BOB, "three", 3)
    assert "ignoring snapshot" in caplog.text


# --- aggregates without personal data pay nothing ---------------------------------------------


def test_a_snapshot_without_personal_data_is_stored_as_before(aether_nats_url: str) -> None:
    plain = PlainSnap(new_id("plain"))
    plain.place("Carol Plain-Text")
    plain.place("Carol Plain-Text")
    plain.save()
    snapshot = PlainSnap.get_store().get_latest_snapshot(plain.actor_id)
    assert snapshot is not None
    # Exactly the keys (and so the bytes) a snapshot had before personal data existed.
    expected = ActorSnapshot(
        actor_id=plain.actor_id,
        version=2,
        state={
            "aggregate": PlainSnap._meta.label,
            "snapshot_version": 1,
            "state": {"customer": "Carol Plain-Text", "count": 2},
            "sequence": plain._last_sequence,
            "recent_commands": [],
            "command_window": PlainSnap._meta.command_window,
        },
        timestamp=snapshot.timestamp,
    )

    async def raw_value() -> bytes:
        nc = await nats.connect(aether_nats_url)
        try:
            kv = await nc.jetstream().key_value(snapshot_bucket("privacy_snap_plain"))
            entry = await kv.get(_snapshot_key(plain.actor_id))
            return entry.value or b""
        finally:
            await nc.close()

    assert asyncio.run(raw_value()) == encode_snapshot(expected)
    assert PlainSnap.objects.get(plain.actor_id).count == 2


def _snapshot_key(actor_id: str) -> str:
    from aether_django.names import actor_token

    return actor_token(actor_id)


def test_aether_replay_verifies_sealed_snapshots() -> None:
    import io

    from django.core.management import call_command
    from django.core.management.base import CommandError

    order = snapshotted(new_id("customer"), ALICE)
    gone = new_id("customer")
    snapshotted(gone, BOB)
    privacy.forget(gone)  # its snapshot no longer opens: not compared, not a mismatch
    out = io.StringIO()
    call_command("aether_replay", "privacy_snap_orders", "--verify", "--no-progress", stdout=out)
    assert "0 snapshot mismatches" in out.getvalue()
    assert_no_plaintext(out.getvalue().encode(), *ALICE)

    # A sealed snapshot that disagrees with the history is still found.
    wrong = order._snapshot()
    wrong.state["state"]["total"] = 999
    sealed = privacy.seal_snapshot(SnapOrder, wrong, order._subjects)
    assert sealed is not None
    SnapOrder.get_store().save_snapshot(sealed)
    with pytest.raises(CommandError, match="problems found"):
        call_command(
            "aether_replay",
            "privacy_snap_orders",
            "--verify",
            "--no-progress",
            stdout=io.StringIO(),
        )
