"""Crypto-shredding: personal fields encrypted per data subject, forgotten by deleting a key.

An aggregate declares which fields of which event types are personal and whose they
are (docs/privacy.md)::

    class Order(Aggregate):
        class Meta:
            namespace = "orders"
            personal_data = {"OrderPlaced": ["customer", "email"]}
            data_subject = "customer_id"  # a field of the event data, or a callable(event)

Saving seals each declared field in an envelope (:mod:`.envelope`) with the subject's
data key (:mod:`.keys`), so nothing of it leaves the process in plain text; loading
opens them again. :func:`forget` deletes the subject's key: from then on loads give
:data:`FORGOTTEN` in place of those fields and name them in the event's metadata
under :data:`FORGOTTEN_KEY`, and aggregates keep replaying. Snapshots of such an
aggregate hold their state sealed under every subject of its history
(:func:`seal_snapshot`); one that no longer opens is ignored and the events replayed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import AetherError
from ..events import ActorSnapshot, Event, new_event_id
from ..runtime import get_runtime
from .envelope import (
    EnvelopeError,
    KeyUnwrapError,
    decrypt_field,
    encrypt_field,
    envelope_subject,
    is_envelope,
    open_checked,
)
from .keys import get_key_ring

if TYPE_CHECKING:
    from ..aggregates import Aggregate

logger = logging.getLogger(__name__)

__all__ = [
    "AUDIT_NAMESPACE",
    "FORGOTTEN",
    "FORGOTTEN_KEY",
    "EnvelopeError",
    "ForgetIncompleteError",
    "KeyUnwrapError",
    "PersonalDataError",
    "add_forget_step",
    "aforget",
    "aopen_events",
    "aopen_snapshot",
    "arotate_master_key",
    "aseal_events",
    "aseal_snapshot",
    "forget",
    "open_events",
    "open_snapshot",
    "rotate_master_key",
    "seal_events",
    "seal_snapshot",
    "subject_of",
    "subjects_in",
]

#: What a forgotten personal field reads as after its subject was forgotten.
FORGOTTEN = "[forgotten]"
#: Metadata key of a loaded event whose fields were forgotten: their names, comma-separated.
#: Set on the decoded event only; it is never stored.
FORGOTTEN_KEY = "aether:forgotten"
#: Namespace of the audit events forget() records (event type ``SubjectForgotten``).
AUDIT_NAMESPACE = "aether.privacy"


class PersonalDataError(AetherError):
    """Personal data that cannot be protected: no data subject for an event, or no
    usable master key (never a plain write)."""


class ForgetIncompleteError(PersonalDataError):
    """forget() erased the subject's key but could not finish erasing its copies
    elsewhere (a read model's database failed): run forget again to finish."""


def subject_of(model: type[Aggregate], event: Event) -> str:
    """The data subject of ``event``, by the model's ``Meta.data_subject``."""
    how: str | Callable[[Event], Any] | None = model._meta.data_subject
    if callable(how):
        subject = how(event)
    elif isinstance(how, str):
        subject = event.data.get(how)
    else:
        subject = None
    if not isinstance(subject, str) or not subject:
        raise PersonalDataError(
            f"{model.__name__}: event {event.event_type!r} (version {event.version}) has "
            f"personal data but no data subject: Meta.data_subject {how!r} gave {subject!r}, "
            "expected a non-empty string"
        )
    return subject


def _to_seal(model: type[Aggregate], events: Iterable[Event]) -> list[tuple[Event, str | None]]:
    declared = model._meta.personal_data
    out: list[tuple[Event, str | None]] = []
    for event in events:
        fields = declared.get(event.event_type)
        if fields and any(f in event.data for f in fields):
            out.append((event, subject_of(model, event)))
        else:
            out.append((event, None))
    return out


def _seal(model: type[Aggregate], event: Event, subject: str, kid: str, key: bytes) -> Event:
    data = dict(event.data)
    for name in model._meta.personal_data[event.event_type]:
        if name in data:
            data[name] = encrypt_field(
                key, subject=subject, kid=kid, event_id=event.id, field=name, value=data[name]
            )
    return dataclasses.replace(event, data=data)


def _ensure_key_configured() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from ..conf import privacy_master_key

    try:
        privacy_master_key()
    except ImproperlyConfigured as exc:
        raise PersonalDataError(f"refusing to store personal data in plain text: {exc}") from exc


def _refuse_invalid(model: type[Aggregate]) -> None:
    if model._meta.personal_data_error:
        raise PersonalDataError(
            f"{model.__name__}: refusing to store events: {model._meta.personal_data_error}"
        )


def seal_events(model: type[Aggregate], events: Sequence[Event]) -> list[Event]:
    """``events`` with their declared personal fields sealed (as they are stored)."""
    _refuse_invalid(model)
    if not model._meta.personal_data:
        return list(events)
    return get_runtime().run(aseal_events(model, events))


async def aseal_events(model: type[Aggregate], events: Sequence[Event]) -> list[Event]:
    """Async twin of :func:`seal_events`."""
    _refuse_invalid(model)
    if not model._meta.personal_data:
        return list(events)
    pairs = _to_seal(model, events)
    if all(subject is None for _, subject in pairs):
        return list(events)
    _ensure_key_configured()
    ring = get_key_ring()
    out = []
    for event, subject in pairs:
        if subject is None:
            out.append(event)
        else:
            kid, key = await ring.key_for_write(subject)
            out.append(_seal(model, event, subject, kid, key))
    return out


def _envelopes(model: type[Aggregate], event: Event) -> list[tuple[str, Mapping[str, Any]]]:
    fields = model._meta.personal_data.get(event.event_type) or ()
    data = event.data
    return [(f, data[f]) for f in fields if is_envelope(data.get(f))]


#: One event's sealed fields: (name, envelope, (subject, key id)), checked.
_Sealed = list[tuple[str, Mapping[str, Any], tuple[str, str]]]


def _plan(model: type[Aggregate], events: Iterable[Event]) -> list[tuple[Event, _Sealed]]:
    """Each event with its sealed fields; EnvelopeError (located) for a malformed one.
    Each envelope is checked once here, so opening it need not check it again."""
    planned: list[tuple[Event, _Sealed]] = []
    for event in events:
        sealed: _Sealed = []
        for name, envelope in _envelopes(model, event):
            try:
                sealed.append((name, envelope, envelope_subject(envelope)))
            except EnvelopeError as exc:
                raise _located(event, name, exc) from None
        planned.append((event, sealed))
    return planned


def _open(event: Event, sealed: _Sealed, aeads: Mapping[tuple[str, str], AESGCM | None]) -> Event:
    if not sealed:
        return event
    data = dict(event.data)
    forgotten = []
    for name, envelope, subject_kid in sealed:
        aead = aeads[subject_kid]
        if aead is None:
            data[name] = FORGOTTEN
            forgotten.append(name)
        else:
            try:
                data[name] = open_checked(aead, envelope, event_id=event.id, field=name)
            except EnvelopeError as exc:
                raise EnvelopeError(f"field {name!r}: {exc}") from None
    if not forgotten:
        return _with_data(event, data, event.metadata)
    metadata = {**event.metadata, FORGOTTEN_KEY: ",".join(forgotten)}
    return _with_data(event, data, metadata)


def _with_data(event: Event, data: Mapping[str, Any], metadata: Mapping[str, str]) -> Event:
    """``dataclasses.replace(event, data=..., metadata=...)`` spelled out: replace()
    looks the fields up on every call, a quarter of the cost of opening a loaded event.
    tests/privacy/test_envelope_values.py checks that every field of Event is here."""
    return Event(
        event_type=event.event_type,
        actor_id=event.actor_id,
        version=event.version,
        data=data,
        id=event.id,
        command_id=event.command_id,
        metadata=metadata,
        timestamp=event.timestamp,
        sequence=event.sequence,
        trace_context=event.trace_context,
    )


def _wanted(model: type[Aggregate], events: Iterable[Event]) -> set[tuple[str, str]]:
    return {subject_kid for _, sealed in _plan(model, events) for *_, subject_kid in sealed}


def _located(event: Event, name: str, exc: EnvelopeError) -> EnvelopeError:
    return EnvelopeError(
        f"actor {event.actor_id!r} version {event.version} ({event.event_type}), "
        f"field {name!r}: {exc}"
    )


def open_events(model: type[Aggregate], events: Sequence[Event]) -> list[Event]:
    """``events`` with their sealed personal fields opened, or :data:`FORGOTTEN`.

    EnvelopeError when an envelope is malformed or does not authenticate; the stored
    events are untouched.
    """
    if not model._meta.personal_data:
        return list(events)
    if not _wanted(model, events):
        return list(events)
    return get_runtime().run(aopen_events(model, events))


async def aopen_events(model: type[Aggregate], events: Sequence[Event]) -> list[Event]:
    """Async twin of :func:`open_events`."""
    if not model._meta.personal_data:
        return list(events)
    planned = _plan(model, events)
    wanted = {subject_kid for _, sealed in planned for *_, subject_kid in sealed}
    if not wanted:
        return list(events)
    ring = get_key_ring()
    aeads: dict[tuple[str, str], AESGCM | None] = {}
    for subject, kid in sorted(wanted):
        key = await ring.key_for_read(subject, kid)
        aeads[(subject, kid)] = None if key is None else AESGCM(key)
    out = []
    for event, sealed in planned:
        try:
            out.append(_open(event, sealed, aeads))
        except EnvelopeError as exc:
            raise EnvelopeError(
                f"actor {event.actor_id!r} version {event.version} ({event.event_type}): {exc}"
            ) from None
    return out


# --- snapshots ---------------------------------------------------------------------------
#
# A snapshot of an aggregate that declares personal data names, in plain, the data
# subjects whose sealed fields its history holds (``"subjects"``), and its ``"state"``
# is sealed once per subject, one envelope inside the other (the innermost with the
# first subject): opening it takes every one of those keys, so forgetting any of them
# makes the snapshot unreadable, and loading then replays the events instead.


def subjects_in(model: type[Aggregate], events: Iterable[Event]) -> dict[str, str]:
    """The data subjects whose envelopes ``events`` (as stored: sealed, oldest first)
    hold, each with the key id of its latest envelope."""
    found: dict[str, str] = {}
    if not model._meta.personal_data:
        return found
    for event in events:
        for name, envelope in _envelopes(model, event):
            try:
                subject, kid = envelope_subject(envelope)
            except EnvelopeError as exc:
                raise _located(event, name, exc) from None
            found[subject] = kid
    return found


def _snapshot_aad(model: type[Aggregate], snapshot: ActorSnapshot) -> str:
    # Event ids are UUIDs: this never equals one, so a field's envelope does not open
    # as a snapshot's and a snapshot moved to another actor or version does not open.
    return f"snapshot\x00{model._meta.label}\x00{snapshot.actor_id}\x00{snapshot.version}"


def seal_snapshot(
    model: type[Aggregate], snapshot: ActorSnapshot, key_ids: Mapping[str, str]
) -> ActorSnapshot | None:
    """``snapshot`` with its state sealed under each of its subjects (as it is stored).

    ``key_ids`` maps each subject to the key id of its latest envelope in the actor's
    history. None (no snapshot is taken) when a subject's key is not that one any more:
    forgotten, or forgotten and made again, since the state was loaded. Its state may
    then hold values of the forgotten life, which no key that exists may open.
    """
    if not model._meta.personal_data or not snapshot.state.get("subjects"):
        return snapshot
    return get_runtime().run(aseal_snapshot(model, snapshot, key_ids))


async def aseal_snapshot(
    model: type[Aggregate], snapshot: ActorSnapshot, key_ids: Mapping[str, str]
) -> ActorSnapshot | None:
    """Async twin of :func:`seal_snapshot`."""
    subjects = list(snapshot.state.get("subjects") or ())
    if not model._meta.personal_data or not subjects:
        return snapshot
    _ensure_key_configured()
    ring = get_key_ring()
    aad = _snapshot_aad(model, snapshot)
    value: Any = snapshot.state["state"]
    for subject in subjects:
        found = await ring.current_key(subject)
        if found is None or found[0] != key_ids.get(subject):
            return None
        kid, key = found
        value = encrypt_field(
            key, subject=subject, kid=kid, event_id=aad, field="state", value=value
        )
    return dataclasses.replace(snapshot, state={**snapshot.state, "state": value})


def open_snapshot(model: type[Aggregate], snapshot: ActorSnapshot) -> ActorSnapshot | None:
    """``snapshot`` with its state opened, and the key id of each subject under
    ``"key_ids"`` (in the returned copy only); None when it cannot be used (a subject
    forgotten, written before its state was sealed, or not authentic): replay instead."""
    if not model._meta.personal_data:
        return snapshot
    if snapshot.state.get("subjects") == [] and not is_envelope(snapshot.state.get("state")):
        return snapshot
    return get_runtime().run(aopen_snapshot(model, snapshot))


async def aopen_snapshot(model: type[Aggregate], snapshot: ActorSnapshot) -> ActorSnapshot | None:
    """Async twin of :func:`open_snapshot`."""
    if not model._meta.personal_data:
        return snapshot
    subjects = snapshot.state.get("subjects")
    if subjects == [] and not is_envelope(snapshot.state.get("state")):
        return snapshot  # nothing sealed in its history when it was taken
    if (
        not isinstance(subjects, list)
        or not subjects
        or not all(isinstance(s, str) and s for s in subjects)
    ):
        # Written before snapshots were sealed (or not by aether_django): its state may
        # hold personal values in plain, which must not outlive a forget().
        logger.warning(
            "ignoring snapshot of %s: its state is not sealed; replaying", snapshot.actor_id
        )
        return None
    ring = get_key_ring()
    aad = _snapshot_aad(model, snapshot)
    value: Any = snapshot.state.get("state")
    key_ids: dict[str, str] = {}
    try:
        for subject in reversed(subjects):
            found, kid = envelope_subject(value)
            if found != subject:
                raise EnvelopeError(f"sealed for {found!r}, expected {subject!r}")
            key = await ring.key_for_read(subject, kid)
            if key is None:
                return None  # forgotten: the events give the marker
            key_ids[subject] = kid
            value = decrypt_field(key, value, event_id=aad, field="state")
    except EnvelopeError as exc:
        logger.warning("ignoring snapshot of %s: %s; replaying", snapshot.actor_id, exc)
        return None
    if not isinstance(value, dict):
        logger.warning("ignoring snapshot of %s: its state is not an object", snapshot.actor_id)
        return None
    opened = {**snapshot.state, "state": value, "key_ids": key_ids}
    return dataclasses.replace(snapshot, state=opened)


# --- rotating the master key --------------------------------------------------------------


def rotate_master_key() -> int:
    """Re-wrap every data key with PRIVACY_MASTER_KEY, from PRIVACY_OLD_MASTER_KEY; the
    number of entries re-wrapped (0 when everything already was)."""
    return get_runtime().run(arotate_master_key())


async def arotate_master_key() -> int:
    """Async twin of :func:`rotate_master_key`."""
    return await get_key_ring().rotate()


# --- forgetting -------------------------------------------------------------------------


#: Steps forget() runs after erasing the key, each ``step(subject_id)`` giving the
#: rows it deleted per model label. The layers above register theirs (the projections
#: package: read-model rows and ``on_forget`` hooks); this layer cannot import them.
_forget_steps: list[Callable[[str], Mapping[str, int]]] = []


def add_forget_step(step: Callable[[str], Mapping[str, int]]) -> None:
    """Have forget() run ``step(subject_id)`` (synchronous, it may use the Django ORM)
    after the key is erased, before the audit event. Registering one twice keeps one."""
    if step not in _forget_steps:
        _forget_steps.append(step)


def _checked(subject_id: object) -> str:
    if not isinstance(subject_id, str) or not subject_id:
        raise ValueError(f"a data subject id is a non-empty string, not {subject_id!r}")
    return subject_id


def _run_steps(subject_id: str) -> dict[str, int]:
    deleted: dict[str, int] = {}
    for step in list(_forget_steps):
        for label, count in step(subject_id).items():
            deleted[label] = deleted.get(label, 0) + count
    return deleted


def forget(subject_id: str) -> Event:
    """Forget a data subject: purge its data key everywhere it is stored, drop it from
    this process's cache, delete its read-model rows (projections' ``Meta.subject_fields``
    and ``on_forget()`` hooks, in this process, against their databases), and record a
    ``SubjectForgotten`` audit event (returned).

    Other processes stop decrypting within ``PRIVACY_KEY_CACHE_SECONDS``. When a read
    model's database fails, ForgetIncompleteError is raised after the key is gone and no
    audit event is recorded: calling forget() again finishes (it is idempotent).
    """
    subject_id = _checked(subject_id)
    runtime = get_runtime()
    kid = runtime.run(get_key_ring().forget(subject_id))
    deleted = _run_steps(subject_id)
    return runtime.run(_audit(subject_id, kid, deleted))


async def aforget(subject_id: str) -> Event:
    """Async twin of :func:`forget` (the read-model steps run in a worker thread)."""
    from asgiref.sync import sync_to_async

    subject_id = _checked(subject_id)
    kid = await get_key_ring().forget(subject_id)
    deleted = await sync_to_async(_run_steps)(subject_id)
    return await _audit(subject_id, kid, deleted)


async def _audit(subject_id: str, kid: str | None, deleted: Mapping[str, int]) -> Event:
    from ..store import get_event_store

    audit_id = new_event_id()
    event = Event(
        event_type="SubjectForgotten",
        actor_id=f"forget-{audit_id}",
        version=1,
        id=audit_id,
        # The id's hash, not the id: the audit trail must not keep what was erased.
        data={
            "subject_sha256": hashlib.sha256(subject_id.encode()).hexdigest(),
            "kid": kid,
            "rows_deleted": dict(sorted(deleted.items())),
        },
    )
    stored = await get_event_store(AUDIT_NAMESPACE).asave_events([event])
    return stored[0]
