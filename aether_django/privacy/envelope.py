"""The envelope of one encrypted personal field, and the wrapping of data keys.

Pure: imports neither Django nor nats, only ``cryptography``'s AES-GCM, so another
program (or a test) can read and write the format with nothing else. The shape of
an encrypted field's value in the event JSON (docs/privacy.md#the-envelope)::

    {"aether:enc": 1, "subject": "<subject id>", "kid": "<key id>",
     "ct": "<base64 of the 12-byte nonce, the ciphertext and the 16-byte tag>"}

The plaintext is the field's value as compact JSON (so any JSON value can be
personal). The associated data is ``"{event id}\\x00{field name}"``: a ciphertext
copied into another event or another field no longer authenticates.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from json.encoder import encode_basestring
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ENVELOPE_MARKER",
    "ENVELOPE_VERSION",
    "NONCE_BYTES",
    "TAG_BYTES",
    "EnvelopeError",
    "KeyUnwrapError",
    "decoded",
    "decrypt_field",
    "encrypt_field",
    "envelope_subject",
    "is_envelope",
    "new_data_key",
    "new_key_id",
    "open_checked",
    "seal_checked",
    "unwrap_key",
    "wrap_key",
]

#: The key that marks a field's value as an envelope, and its format version.
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
    return seal_checked(
        AESGCM(key), subject=subject, kid=kid, event_id=event_id, field=field, value=value
    )


def seal_checked(
    aead: AESGCM, *, subject: str, kid: str, event_id: str, field: str, value: Any
) -> dict[str, Any]:
    """:func:`encrypt_field` with the key's AESGCM made once: a save seals several fields
    with one key, and making an AESGCM costs more than sealing a field."""
    nonce = os.urandom(NONCE_BYTES)
    if type(value) is str:
        # What json.dumps gives for a string, without its Python-level dispatch.
        plain = encode_basestring(value).encode()
    else:
        plain = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    # The nonce goes in front of the ciphertext, as most AEAD formats store it: one
    # base64 string to write and to read.
    sealed = nonce + aead.encrypt(nonce, plain, _aad(event_id, field))
    return {ENVELOPE_MARKER: ENVELOPE_VERSION, "subject": subject, "kid": kid, "ct": _b64(sealed)}


def envelope_subject(envelope: object) -> tuple[str, str]:
    """The (subject, key id) of an envelope; EnvelopeError when it is malformed."""
    if type(envelope) is not dict and not isinstance(envelope, Mapping):
        raise EnvelopeError(f"an envelope must be a JSON object, not {type(envelope).__name__}")
    if envelope.get(ENVELOPE_MARKER) != ENVELOPE_VERSION:
        raise EnvelopeError(
            f"unknown envelope version {envelope.get(ENVELOPE_MARKER)!r} "
            f"(this release reads {ENVELOPE_VERSION})"
        )
    if envelope.keys() != _ENVELOPE_KEYS:
        raise EnvelopeError(f"an envelope has exactly the keys {sorted(_ENVELOPE_KEYS)}")
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
    return open_checked(AESGCM(key), envelope, event_id=event_id, field=field)


def open_checked(aead: AESGCM, envelope: Mapping[str, Any], *, event_id: str, field: str) -> Any:
    """:func:`decrypt_field` for an envelope :func:`envelope_subject` has checked
    already, with the key's AESGCM made once: a load opens many fields with one key."""
    sealed = _unb64(envelope["ct"], "ct")
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise EnvelopeError(
            f"envelope 'ct' must hold at least {NONCE_BYTES + TAG_BYTES} bytes "
            f"(nonce and tag), not {len(sealed)}"
        )
    try:
        plain = aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(event_id, field))
    except InvalidTag:
        raise EnvelopeError(
            f"the envelope of field {field!r} in event {event_id} does not authenticate: "
            "tampered with, or copied from another event or field"
        ) from None
    return decoded(plain, field)


def decoded(plain: bytes, field: str) -> Any:
    """The JSON value an opened envelope of ``field`` holds; EnvelopeError when none."""
    try:
        text = plain.decode()
    except UnicodeDecodeError:
        raise EnvelopeError(f"the envelope of field {field!r} does not hold JSON") from None
    if text[:1] == '"' and text[-1:] == '"' and text.count('"') == 2 and "\\" not in text:
        # A string without escapes is its text between the quotes: json.loads would
        # cost more than the rest of opening the field.
        return text[1:-1]
    try:
        return json.loads(text)
    except ValueError:
        raise EnvelopeError(f"the envelope of field {field!r} does not hold JSON") from None


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
