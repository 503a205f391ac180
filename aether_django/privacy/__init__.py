"""Crypto-shredding: personal fields encrypted per data subject, forgotten by deleting a key.

An aggregate declares which fields of which event types are personal and whose they
are (docs/privacy.md)::

    class Order(Aggregate):
        class Meta:
            namespace = "orders"
            personal_data = {"OrderPlaced": ["customer", "email"]}
            data_subject = "customer_id"  # a field of the event data, or a callable(event)

Saving takes an event's declared fields out of its data and seals them together in one
envelope (:mod:`.envelope`) with the subject's data key (:mod:`.keys`), so nothing of
them leaves the process in plain text; loading puts them back. :func:`forget` deletes
the subject's key: from then on loads give :data:`FORGOTTEN` in place of those fields
and name them in the event's metadata under :data:`FORGOTTEN_KEY`, and aggregates
keep replaying. Snapshots of such an
aggregate hold their state sealed under every subject of its history
(:func:`seal_snapshot`); one that no longer opens is ignored and the events replayed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import json.scanner
import logging
from binascii import Error as BinasciiError
from binascii import a2b_base64
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.core.exceptions import ImproperlyConfigured

from ..conf import privacy_master_key
from ..errors import AetherError, InvalidEventError
from ..events import ActorSnapshot, Event, new_event_id, with_data
from ..runtime import get_runtime
from .envelope import (
    ENVELOPE_VERSION,
    NONCE_BYTES,
    SEALED_KEY,
    EnvelopeError,
    KeyUnwrapError,
    decrypt_field,
    encrypt_field,
    envelope_subject,
    is_envelope,
    open_values,
    seal_values,
    sealed_subject,
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
    "aopen_events_with_keys",
    "aopen_history",
    "aopen_snapshot",
    "arotate_master_key",
    "aseal_events",
    "aseal_history",
    "aseal_snapshot",
    "forget",
    "open_events",
    "open_history",
    "open_snapshot",
    "rotate_master_key",
    "seal_events",
    "seal_history",
    "seal_snapshot",
    "subject_hash",
    "subject_of",
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


def _seal_pass(
    model: type[Aggregate],
    events: Sequence[Event],
    aeads: dict[str, tuple[str, AESGCM]],
    subjects: dict[str, str],
) -> tuple[list[Event], set[str]]:
    """``events`` sealed with the keys in ``aeads`` or this process's key cache (added
    to ``aeads``), and the subjects neither had a key for: when there are any, the
    events are not all sealed, and another pass with their keys in ``aeads`` seals
    them. ``subjects`` gets each subject sealed for, with its key id.

    An event's declared fields that its data holds leave the data, sealed together in
    one envelope under :data:`SEALED_KEY`."""
    declared = model._meta.personal_data
    ring = get_key_ring()
    out: list[Event] = []
    missing: set[str] = set()
    for event in events:
        data = event.data
        if SEALED_KEY in data:
            raise PersonalDataError(
                f"{model.__name__}: event {event.event_type!r} (version {event.version}) has "
                f"the key {SEALED_KEY!r} in its data: it is reserved for the sealed personal "
                "fields of aggregates that declare personal data"
            )
        fields = declared.get(event.event_type)
        present = [name for name in fields if name in data] if fields else None
        if not present:
            out.append(event)
            continue
        subject = subject_of(model, event)
        found = aeads.get(subject)
        if found is None:
            found = ring.cached_for_write(subject)
            if found is None:
                missing.add(subject)
                continue
            aeads[subject] = found
        if missing:
            continue  # another pass seals them all
        kid, aead = found
        subjects[subject] = kid
        sealed = {name: value for name, value in data.items() if name not in present}
        try:
            sealed[SEALED_KEY] = seal_values(
                aead,
                subject=subject,
                kid=kid,
                event_id=event.id,
                fields=present,
                values=[data[name] for name in present],
            )
        except (TypeError, ValueError, RecursionError) as exc:
            # What the store says of data it cannot encode, for the part it never sees.
            raise InvalidEventError(f"personal data is not JSON-serialisable: {exc}") from None
        out.append(with_data(event, sealed, event.metadata))
    return out, missing


def _ensure_key_configured() -> None:
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
    return seal_history(model, events)[0]


async def aseal_events(model: type[Aggregate], events: Sequence[Event]) -> list[Event]:
    """Async twin of :func:`seal_events`."""
    return (await aseal_history(model, events))[0]


def seal_history(
    model: type[Aggregate], events: Sequence[Event]
) -> tuple[list[Event], dict[str, str]]:
    """:func:`seal_events`, and the data subjects sealed for, each with the key id of
    its latest envelope: what saving an actor needs (its snapshots are sealed under
    them). No thread hop while the subjects' keys are cached."""
    sealed, subjects, missing, aeads = _seal_cached(model, events)
    if missing:
        get_runtime().run(_fetch_for_write(missing, aeads))
        sealed, _ = _seal_pass(model, events, aeads, subjects)
    return sealed, subjects


async def aseal_history(
    model: type[Aggregate], events: Sequence[Event]
) -> tuple[list[Event], dict[str, str]]:
    """Async twin of :func:`seal_history`."""
    sealed, subjects, missing, aeads = _seal_cached(model, events)
    if missing:
        await _fetch_for_write(missing, aeads)
        sealed, _ = _seal_pass(model, events, aeads, subjects)
    return sealed, subjects


def _seal_cached(
    model: type[Aggregate], events: Sequence[Event]
) -> tuple[list[Event], dict[str, str], set[str], dict[str, tuple[str, AESGCM]]]:
    """The first pass of a save: what the cached keys seal, and the subjects whose
    keys must be read (or made) first."""
    _refuse_invalid(model)
    aeads: dict[str, tuple[str, AESGCM]] = {}
    subjects: dict[str, str] = {}
    if not model._meta.personal_data:
        return list(events), subjects, set(), aeads
    sealed, missing = _seal_pass(model, events, aeads, subjects)
    if subjects or missing:
        _ensure_key_configured()
    return sealed, subjects, missing, aeads


async def _fetch_for_write(subjects: Iterable[str], aeads: dict[str, tuple[str, AESGCM]]) -> None:
    ring = get_key_ring()
    for subject in sorted(subjects):
        aeads[subject] = await ring.aead_for_write(subject)


def _open_pass(
    events: Sequence[Event],
    aeads: dict[tuple[str, str], AESGCM | None],
    subjects: dict[str, str],
    after_version: int,
    in_place: bool,
) -> tuple[list[Event], set[tuple[str, str]]]:
    """``events`` opened with the keys in ``aeads`` or this process's key cache (added
    to ``aeads``), and the (subject, key id) pairs neither had: when there are any,
    the events are not all opened, and another pass with those keys in ``aeads`` opens
    them. Every envelope is checked either way (EnvelopeError, located). ``subjects``
    gets the data subjects whose envelopes the events after ``after_version`` hold, each
    with the key id of its latest envelope. ``in_place``: the events are the caller's
    alone (decoded for it), so an event whose envelope opens gets its fields back in its
    own ``data`` rather than in a copy of the event.

    A load opens every envelope of a history, so this is its inner loop: one pass, no
    await while the keys are cached, and open_values' work inlined (a failure goes
    through it to say what is wrong). An envelope whose (subject, key id) the pass has
    already seen is not checked again: what matters in it is authenticated by AES-GCM
    (its field names are in the associated data) or refused below.
    """
    ring = get_key_ring()
    out: list[Event] = []
    missing: set[tuple[str, str]] = set()
    for event in events:
        data = event.data
        envelope: Any = data.get(SEALED_KEY, _UNKNOWN)
        if envelope is _UNKNOWN:
            out.append(event)
            continue
        pair: tuple[Any, Any]
        try:
            # The shape as decoded, of a pair the pass has a key (or None) for: any
            # other is checked, and refused with what is wrong.
            if type(envelope) is not dict or len(envelope) != 5:
                raise KeyError
            if envelope["v"] != ENVELOPE_VERSION:
                raise KeyError
            pair = (envelope["subject"], envelope["kid"])
            aead = aeads[pair]
        except (KeyError, TypeError):  # TypeError: a subject or key id that is no string
            pair = _checked_envelope(event, envelope)
            aead = aeads.get(pair, _UNKNOWN)
            if aead is _UNKNOWN:
                aead = ring.cached_aead(*pair)
                if aead is None:
                    missing.add(pair)
                else:
                    aeads[pair] = aead
        if event.version > after_version:
            subjects[pair[0]] = pair[1]
        if missing:
            continue  # another pass opens them all
        metadata = event.metadata
        if aead is None:
            _checked_envelope(event, envelope)  # the field names are not authenticated
            fields = envelope["fields"]
            values = [FORGOTTEN] * len(fields)
            metadata = {**metadata, FORGOTTEN_KEY: ",".join(fields)}
        else:
            try:
                fields = envelope["fields"]
                sealed = a2b_base64(envelope["ct"], strict_mode=True)
                # AESGCM refuses a nonce under 8 bytes, and a ciphertext without its tag
                # does not authenticate: a short 'ct' fails here and is told below.
                text = aead.decrypt(
                    sealed[:NONCE_BYTES],
                    sealed[NONCE_BYTES:],
                    "\x00".join((event.id, *fields)).encode(),
                ).decode()
                values, end = _scan_json(text, 0)
                if end != len(text) or type(values) is not list or len(values) != len(fields):
                    raise ValueError
            except (BinasciiError, TypeError, ValueError, KeyError, InvalidTag, StopIteration):
                values = _opened_slowly(event, aead, envelope)
                fields = envelope["fields"]  # checked by then
        # A forgotten event's metadata changes too: that takes a copy of the event.
        # One value per field, checked above: zip need not check it again.
        if in_place and metadata is event.metadata and type(data) is dict:
            # An event opened in a pass that then misses a key is not opened again:
            # the next pass finds no envelope in it.
            del data[SEALED_KEY]
            data.update(zip(fields, values, strict=False))
            out.append(event)
        else:
            opened = {name: value for name, value in data.items() if name != SEALED_KEY}
            opened.update(zip(fields, values, strict=False))
            out.append(with_data(event, opened, metadata))
    return out, missing


def _checked_envelope(event: Event, envelope: object) -> tuple[str, str]:
    try:
        return sealed_subject(envelope)
    except EnvelopeError as exc:
        raise _located(event, exc) from None


#: Not in the keys a pass has (distinct from None, a forgotten key), nor in an
#: event's data (distinct from an envelope that is null).
_UNKNOWN: Any = object()

#: The JSON scanner, called without json.loads's wrapping (leading whitespace, the
#: check of what follows, the Python frame of raw_decode): an envelope holds compact
#: JSON; anything else fails here (StopIteration when nothing decodes) and goes the
#: slow way.
# (typeshed types make_scanner's argument as the scanner class, not the decoder it takes)
_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _opened_slowly(event: Event, aead: AESGCM, envelope: Mapping[str, Any]) -> list[Any]:
    """What sealed_subject and open_values say of an envelope the inlined opening
    refused: its values, or the EnvelopeError that says why not, located."""
    try:
        sealed_subject(envelope)  # the pass checks an envelope's keys on first sight only
        return open_values(aead, envelope, event_id=event.id)
    except EnvelopeError as exc:
        raise _located(event, exc) from None


def _located(event: Event, exc: EnvelopeError) -> EnvelopeError:
    return EnvelopeError(
        f"actor {event.actor_id!r} version {event.version} ({event.event_type}): {exc}"
    )


def open_events(model: type[Aggregate], events: Sequence[Event]) -> list[Event]:
    """``events`` with their sealed personal fields opened, or :data:`FORGOTTEN`.

    EnvelopeError when an envelope is malformed or does not authenticate; the stored
    events are untouched.
    """
    return open_history(model, events)[0]


async def aopen_events(model: type[Aggregate], events: Sequence[Event]) -> list[Event]:
    """Async twin of :func:`open_events`."""
    return (await aopen_history(model, events))[0]


def open_history(
    model: type[Aggregate],
    events: Sequence[Event],
    *,
    after_version: int = 0,
    in_place: bool = False,
) -> tuple[list[Event], dict[str, str]]:
    """:func:`open_events`, and the data subjects of the events after
    ``after_version`` (a snapshot's), each with its latest key id: what loading an
    actor needs, in one pass. No thread hop while the keys are cached.

    ``in_place=True`` when nothing else holds ``events`` (they were decoded for this
    call: :attr:`EventStore.fresh_reads <aether_django.store.base.EventStore.fresh_reads>`):
    the opened values go into the events' own data, with no copy of each event.
    """
    opened, subjects, aeads, missing = _open_cached(model, events, after_version, in_place)
    if missing:
        get_runtime().run(_fetch(missing, aeads))
        opened, _ = _open_pass(events, aeads, subjects, after_version, in_place)
    return opened, subjects


async def aopen_history(
    model: type[Aggregate],
    events: Sequence[Event],
    *,
    after_version: int = 0,
    in_place: bool = False,
) -> tuple[list[Event], dict[str, str]]:
    """Async twin of :func:`open_history`."""
    opened, subjects, _ = await _aopen(model, events, after_version, in_place)
    return opened, subjects


async def aopen_events_with_keys(
    model: type[Aggregate], events: Sequence[Event]
) -> tuple[list[Event], set[tuple[str, str]]]:
    """:func:`aopen_events`, and the (subject, key id) pairs whose key opened a value
    (a field read as :data:`FORGOTTEN` names no pair).

    For whoever copies opened values elsewhere and must make sure the key was not
    forgotten meanwhile (the projection runner, against forget()'s tombstones).
    """
    opened, _, aeads = await _aopen(model, events, 0, False)
    # Read off the keys the pass used, rather than noted in its inner loop (which
    # every load runs): each pair in ``aeads`` comes from an envelope of ``events``,
    # and one with a key opened every envelope it sealed (or raised EnvelopeError).
    return opened, {pair for pair, aead in aeads.items() if aead is not None}


_Keys = dict[tuple[str, str], AESGCM | None]


def _open_cached(
    model: type[Aggregate], events: Sequence[Event], after_version: int, in_place: bool
) -> tuple[list[Event], dict[str, str], _Keys, set[tuple[str, str]]]:
    """The first pass of a load: what the cached keys open, the subjects, the keys
    used, and the (subject, key id) pairs whose keys must be read first."""
    aeads: _Keys = {}
    subjects: dict[str, str] = {}
    if not model._meta.personal_data:
        return list(events), subjects, aeads, set()
    opened, missing = _open_pass(events, aeads, subjects, after_version, in_place)
    return opened, subjects, aeads, missing


async def _aopen(
    model: type[Aggregate], events: Sequence[Event], after_version: int, in_place: bool
) -> tuple[list[Event], dict[str, str], _Keys]:
    opened, subjects, aeads, missing = _open_cached(model, events, after_version, in_place)
    if missing:
        await _fetch(missing, aeads)
        opened, _ = _open_pass(events, aeads, subjects, after_version, in_place)
    return opened, subjects, aeads


#: Key reads a load (or a projection's batch) has under way at once.
_CONCURRENT_KEY_READS = 32


async def _fetch(wanted: Iterable[tuple[str, str]], aeads: _Keys) -> None:
    """Read the keys of ``wanted`` into ``aeads`` (None for a forgotten one), several
    at a time: a history or a batch whose subjects' keys are not cached (the first
    load, or any after PRIVACY_KEY_CACHE_SECONDS) would otherwise wait one round trip
    per subject. The first failure, in the pairs' order, is raised once every read of
    its group has ended."""
    ring = get_key_ring()
    pairs = sorted(wanted)
    if len(pairs) > 1:
        await ring.bucket()  # opened and checked once, not by each read of the first group
    for start in range(0, len(pairs), _CONCURRENT_KEY_READS):
        group = pairs[start : start + _CONCURRENT_KEY_READS]
        found = await asyncio.gather(
            *(ring.aead_for_read(subject, kid) for subject, kid in group),
            return_exceptions=True,
        )
        for pair, aead in zip(group, found, strict=True):
            if isinstance(aead, BaseException):
                raise aead
            aeads[pair] = aead


# --- snapshots ---------------------------------------------------------------------------
#
# A snapshot of an aggregate that declares personal data names, in plain, the data
# subjects whose sealed fields its history holds (``"subjects"``), and its ``"state"``
# is sealed once per subject, one envelope inside the other (the innermost with the
# first subject): opening it takes every one of those keys, so forgetting any of them
# makes the snapshot unreadable, and loading then replays the events instead.


def _snapshot_aad(model: type[Aggregate], snapshot: ActorSnapshot) -> str:
    # Event ids are UUIDs: this never equals one, so an event's envelope does not open
    # as a snapshot's, and a snapshot moved to another actor or version does not open.
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


#: What forget() hands its steps: the subject id, and the id of the key it erased
#: (None when the subject had no key left: never made, or forgotten already).
ForgetStep = Callable[[str, str | None], Mapping[str, int]]

#: Steps forget() runs after erasing the key, each ``step(subject_id, kid)`` giving the
#: rows it deleted per model label. The layers above register theirs (the projections
#: package: read-model rows, ``on_forget`` hooks and the key's tombstones); this layer
#: cannot import them.
_forget_steps: list[ForgetStep] = []


def add_forget_step(step: ForgetStep) -> None:
    """Have forget() run ``step(subject_id, kid)`` (synchronous, it may use the Django
    ORM) after the key is erased, before the audit event: ``kid`` is the id of the key
    erased, None when there was none. Registering one twice keeps one."""
    if step not in _forget_steps:
        _forget_steps.append(step)


def subject_hash(subject_id: str) -> str:
    """How the audit events and forget()'s tombstones name a subject: the SHA-256 of
    its id, hex (what was erased must not be kept, even as an id)."""
    return hashlib.sha256(subject_id.encode()).hexdigest()


def _checked(subject_id: object) -> str:
    if not isinstance(subject_id, str) or not subject_id:
        raise ValueError(f"a data subject id is a non-empty string, not {subject_id!r}")
    return subject_id


def _run_steps(subject_id: str, kid: str | None) -> dict[str, int]:
    deleted: dict[str, int] = {}
    for step in list(_forget_steps):
        for label, count in step(subject_id, kid).items():
            deleted[label] = deleted.get(label, 0) + count
    return deleted


def forget(subject_id: str) -> Event:
    """Forget a data subject: erase and purge its data key from the key bucket (from
    every replica's message store; a replicated bucket's raft logs keep the wrapped key
    until the server compacts them, see docs/privacy.md), drop it from this process's
    cache, delete its read-model rows (projections' ``Meta.subject_fields`` and
    ``on_forget()`` hooks, in this process, against their databases), and record a
    ``SubjectForgotten`` audit event (returned).

    Other processes stop decrypting within ``PRIVACY_KEY_CACHE_SECONDS``; the read
    models of declared projections never keep the erased key's values, whatever process
    runs them (the key's tombstone, :mod:`aether_django.projections.forgetting`). When a read
    model's database fails, ForgetIncompleteError is raised after the key is gone and no
    audit event is recorded: calling forget() again finishes (it is idempotent).
    """
    subject_id = _checked(subject_id)
    runtime = get_runtime()
    kid = runtime.run(get_key_ring().forget(subject_id))
    deleted = _run_steps(subject_id, kid)
    return runtime.run(_audit(subject_id, kid, deleted))


async def aforget(subject_id: str) -> Event:
    """Async twin of :func:`forget` (the read-model steps run in a worker thread)."""
    from asgiref.sync import sync_to_async

    subject_id = _checked(subject_id)
    kid = await get_key_ring().forget(subject_id)
    deleted = await sync_to_async(_run_steps)(subject_id, kid)
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
            "subject_sha256": subject_hash(subject_id),
            "kid": kid,
            "rows_deleted": dict(sorted(deleted.items())),
        },
    )
    stored = await get_event_store(AUDIT_NAMESPACE).asave_events([event])
    return stored[0]
