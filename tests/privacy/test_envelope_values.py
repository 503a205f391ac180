"""Every JSON value a personal field may hold comes back from its envelope as it went in,
and an envelope that opens but does not hold what it should is a clear error."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aether_django.privacy.envelope import (
    EnvelopeError,
    decrypt_field,
    encrypt_field,
    fields_aad,
    new_data_key,
    open_values,
    seal_values,
    sealed_subject,
)

VALUES = [
    "Customer Number 1",
    "",
    'a "quoted" name',
    "back\\slash",
    "tab\tand\nnewline",
    "é ü 漢字 🙂",
    "\u2028 line separator",
    '"',
    0,
    12.5,
    None,
    True,
    ["a", 1],
    {"street": "Main St", "no": 7},
]


@pytest.mark.parametrize("value", VALUES, ids=[repr(v)[:20] for v in VALUES])
def test_a_value_comes_back_as_it_went_in(value: Any) -> None:
    key = new_data_key()
    envelope = seal_values(
        AESGCM(key), subject="s", kid="k", event_id="e1", fields=["f", "g"], values=[value, 1]
    )
    assert sealed_subject(envelope) == ("s", "k")
    assert open_values(AESGCM(key), envelope, event_id="e1") == [value, 1]
    # A snapshot's state is sealed as one value, in a field envelope.
    field = encrypt_field(key, subject="s", kid="k", event_id="e1", field="f", value=value)
    assert decrypt_field(key, field, event_id="e1", field="f") == value


def _sealed(key: bytes, plain: bytes, fields: list[str]) -> dict[str, Any]:
    """An event envelope of ``plain`` as it is, whatever it holds."""
    nonce = os.urandom(12)
    ct = nonce + AESGCM(key).encrypt(nonce, plain, fields_aad("e1", fields))
    return {
        "v": 1,
        "subject": "s",
        "kid": "k",
        "fields": fields,
        "ct": base64.b64encode(ct).decode(),
    }


@pytest.mark.parametrize(
    ("plain", "message"),
    [
        (b'["\xff\xfe", 1]', "does not hold JSON"),
        (b"[1, 2", "does not hold JSON"),
        (b"[1]", "one value per field"),
        (b"[1, 2, 3]", "one value per field"),
        (b'{"f": 1, "g": 2}', "one value per field"),
    ],
)
def test_an_envelope_that_opens_to_something_else_is_refused(plain: bytes, message: str) -> None:
    key = new_data_key()
    with pytest.raises(EnvelopeError, match=message):
        open_values(AESGCM(key), _sealed(key, plain, ["f", "g"]), event_id="e1")


def test_a_sealed_field_that_is_not_utf8_is_refused() -> None:
    key = new_data_key()
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(key).encrypt(nonce, b'"\xff\xfe"', b"e1\x00f")
    envelope = {
        "aether:enc": 1,
        "subject": "s",
        "kid": "k",
        "ct": base64.b64encode(sealed).decode(),
    }
    with pytest.raises(EnvelopeError, match="does not hold JSON"):
        decrypt_field(key, envelope, event_id="e1", field="f")
