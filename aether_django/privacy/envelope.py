"""The envelopes of sealed personal data, and the wrapping of data keys.

Pure: imports neither Django nor nats, only ``cryptography``'s AES-GCM, so another
program (or a test) can read and write the formats with nothing else
(docs/privacy.md#the-envelope). An event's personal fields leave its data, sealed
together in one envelope under the data key ``"aether:enc"``::

    {"v": 1, "subject": "<subject id>", "kid": "<key id>", "fields": ["<name>", ...],
     "ct": "<base64 of the 12-byte nonce, the ciphertext and the 16-byte tag>"}

Its plaintext is the JSON array of the fields' values (so any JSON value can be
personal); its associated data the event id and the field names, NUL-separated: a
ciphertext copied into another event, or given other field names, no longer
authenticates. A snapshot's state is sealed as one value, in the field envelope
``{"aether:enc": 1, "subject", "kid", "ct"}`` (associated data ``"{id}\x00{field}"``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ENVELOPE_MARKER",
    "ENVELOPE_VERSION",
    "NONCE_BYTES",
    "SEALED_KEY",
    "TAG_BYTES",
    "EnvelopeError",
    "KeyUnwrapError",
    "decrypt_field",
    "encrypt_field",
    "envelope_subject",
    "fields_aad",
    "is_envelope",
    "new_data_key",
    "new_key_id",
    "open_values",
    "seal_values",
    "sealed_subject",
    "unwrap_key",
    "wrap_key",
]

#: The key that marks a value as a field envelope, and the formats' version.
ENVELOPE_MARKER = "aether:enc"
ENVELOPE_VERSION = 1
_ENVELOPE_KEYS = frozenset({ENVELOPE_MARKER, "subject", "kid", "ct"})
NONCE_BYTES = 12
TAG_BYTES = 16


class EnvelopeError(ValueError):
    """An envelope that is malformed, or whose ciphertext does not authenticate
    (tampered with, or moved to another event or field)."""


class KeyUnwrapError(ValueError):
    """A wrapped data key that the master key does not open (another master key
    wrapped it, or the entry was tampered with)."""


def new_data_key() -> bytes:
    """A fresh AES-256 data key."""
    return AESGCM.generate_key(bit_length=256)


def new_key_id() -> str:
    """A fresh random key id (16 hex digits), naming one life of a subject's key."""
    return os.urandom(8).hex()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise EnvelopeError(f"envelope {what!r} must be a base64 string")
    try:
        # What b64decode(validate=True) checks, without its regular expression pass.
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(f"envelope {what!r} is not valid base64") from None


def _aad(event_id: str, field: str) -> bytes:
    return f"{event_id}\x00{field}".encode()


def is_envelope(value: object) -> bool:
    """Whether ``value`` claims to be an envelope (checked fully only when opened)."""
    if type(value) is dict:  # what decoded JSON holds: no ABC check (loads ask per field)
        return ENVELOPE_MARKER in value
    return isinstance(value, Mapping) and ENVELOPE_MARKER in value


def encrypt_field(
    key: bytes, *, subject: str, kid: str, event_id: str, field: str, value: Any
) -> dict[str, Any]:
    """The envelope of ``value`` (any JSON value) for ``field`` of event ``event_id``."""
    nonce = os.urandom(NONCE_BYTES)
    plain = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    # The nonce goes in front of the ciphertext, as most AEAD formats store it: one
    # base64 string to write and to read.
    sealed = nonce + AESGCM(key).encrypt(nonce, plain, _aad(event_id, field))
    return {ENVELOPE_MARKER: ENVELOPE_VERSION, "subject": subject, "kid": kid, "ct": _b64(sealed)}


def envelope_subject(envelope: object) -> tuple[str, str]:
    """The (subject, key id) of a field envelope; EnvelopeError when it is malformed."""
    return _subject_and_kid(envelope, ENVELOPE_MARKER, _ENVELOPE_KEYS)


def _subject_and_kid(envelope: object, marker: str, keys: frozenset[str]) -> tuple[str, str]:
    """What both envelopes check: an object whose ``marker`` key gives this format
    version, with exactly ``keys``, naming a subject and a key id."""
    if type(envelope) is not dict and not isinstance(envelope, Mapping):
        raise EnvelopeError(f"an envelope must be a JSON object, not {type(envelope).__name__}")
    if envelope.get(marker) != ENVELOPE_VERSION:
        raise EnvelopeError(
            f"unknown envelope version {envelope.get(marker)!r} "
            f"(this release reads {ENVELOPE_VERSION})"
        )
    if envelope.keys() != keys:
        raise EnvelopeError(f"an envelope has exactly the keys {sorted(keys)}")
    subject, kid = envelope["subject"], envelope["kid"]
    if not isinstance(subject, str) or not subject:
        raise EnvelopeError("envelope 'subject' must be a non-empty string")
    if not isinstance(kid, str) or not kid:
        raise EnvelopeError("envelope 'kid' must be a non-empty string")
    return subject, kid


def decrypt_field(key: bytes, envelope: object, *, event_id: str, field: str) -> Any:
    """The value sealed in ``envelope``; EnvelopeError when malformed or not authentic."""
    envelope_subject(envelope)
    assert isinstance(envelope, Mapping)
    plain = _opened(AESGCM(key), envelope["ct"], _aad(event_id, field), f"field {field!r}")
    try:
        return json.loads(plain.decode())
    except ValueError:  # UnicodeDecodeError is one
        raise EnvelopeError(f"the envelope of field {field!r} does not hold JSON") from None


def _opened(aead: AESGCM, ct: object, aad: bytes, what: str) -> bytes:
    """The plaintext of an envelope's ``ct``; EnvelopeError when it does not open."""
    sealed = _unb64(ct, "ct")
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise EnvelopeError(
            f"envelope 'ct' must hold at least {NONCE_BYTES + TAG_BYTES} bytes "
            f"(nonce and tag), not {len(sealed)}"
        )
    try:
        return aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag:
        raise EnvelopeError(
            f"the envelope of {what} does not authenticate: tampered with, or copied from "
            "another event or field"
        ) from None


# --- the sealed part of an event -----------------------------------------------------
#
# An event's personal fields are sealed together: they leave its data, and one
# envelope under the data key "aether:enc" holds their values (docs/privacy.md):
#
#     "aether:enc": {"v": 1, "subject": "<subject id>", "kid": "<key id>",
#                    "fields": ["<name>", ...], "ct": "<base64 of nonce, ciphertext, tag>"}
#
# The plaintext is the JSON array of the fields' values, in the order of "fields"; the
# associated data is the event id and the field names, NUL-separated. One AES-GCM call,
# one nonce and one tag per event rather than per field.

#: The data key of an event's envelope (the field envelopes' marker, in another place).
SEALED_KEY = ENVELOPE_MARKER
#: The keys of an event envelope.
_SEALED_KEYS = frozenset({"v", "subject", "kid", "fields", "ct"})


def fields_aad(event_id: str, fields: Sequence[str]) -> bytes:
    """The associated data of an event envelope: the event id and the field names."""
    return "\x00".join((event_id, *fields)).encode()


def seal_values(
    aead: AESGCM,
    *,
    subject: str,
    kid: str,
    event_id: str,
    fields: Sequence[str],
    values: Sequence[Any],
) -> dict[str, Any]:
    """The envelope of ``values`` (JSON values), those of ``fields`` of event ``event_id``."""
    nonce = os.urandom(NONCE_BYTES)
    plain = json.dumps(list(values), separators=(",", ":"), ensure_ascii=False).encode()
    sealed = nonce + aead.encrypt(nonce, plain, fields_aad(event_id, fields))
    return {
        "v": ENVELOPE_VERSION,
        "subject": subject,
        "kid": kid,
        "fields": list(fields),
        "ct": _b64(sealed),
    }


def sealed_subject(envelope: object) -> tuple[str, str]:
    """The (subject, key id) of an event envelope; EnvelopeError when it is malformed."""
    found = _subject_and_kid(envelope, "v", _SEALED_KEYS)
    fields = envelope["fields"]  # type: ignore[index]
    if (
        not isinstance(fields, list)
        or not fields
        or not all(isinstance(f, str) and f for f in fields)
        or len(set(fields)) != len(fields)
    ):
        raise EnvelopeError("envelope 'fields' must be a list of distinct field names")
    return found


def open_values(aead: AESGCM, envelope: Mapping[str, Any], *, event_id: str) -> list[Any]:
    """The values of an event envelope :func:`sealed_subject` has checked, one per
    field; EnvelopeError when they do not open."""
    fields = envelope["fields"]
    plain = _opened(aead, envelope["ct"], fields_aad(event_id, fields), f"event {event_id}")
    try:
        values = json.loads(plain.decode())
    except ValueError:  # UnicodeDecodeError is one
        raise EnvelopeError(f"the envelope of event {event_id} does not hold JSON") from None
    if type(values) is not list or len(values) != len(fields):
        raise EnvelopeError(f"the envelope of event {event_id} does not hold one value per field")
    return values


def wrap_key(master: bytes, data_key: bytes, *, name: str) -> str:
    """``data_key`` sealed with the master key, bound to ``name`` (its bucket key)."""
    nonce = os.urandom(NONCE_BYTES)
    return _b64(nonce + AESGCM(master).encrypt(nonce, data_key, name.encode()))


def unwrap_key(master: bytes, wrapped: str, *, name: str) -> bytes:
    """The data key sealed by :func:`wrap_key`; KeyUnwrapError when it does not open."""
    try:
        raw = base64.b64decode(wrapped, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise KeyUnwrapError(f"the wrapped key {name!r} is not valid base64") from None
    try:
        return AESGCM(master).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], name.encode())
    except (InvalidTag, ValueError):
        raise KeyUnwrapError(
            f"the master key does not open the wrapped key {name!r}: the key bucket was "
            "written with another PRIVACY_MASTER_KEY (or the entry was altered)"
        ) from None
