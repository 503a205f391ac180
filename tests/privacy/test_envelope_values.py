"""Every JSON value a personal field may hold comes back from its envelope as it went in
(strings with and without escapes take different paths when opened)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aether_django.privacy.envelope import (
    EnvelopeError,
    decrypt_field,
    encrypt_field,
    new_data_key,
    open_checked,
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
    envelope = encrypt_field(key, subject="s", kid="k", event_id="e1", field="f", value=value)
    assert decrypt_field(key, envelope, event_id="e1", field="f") == value
    assert open_checked(AESGCM(key), envelope, event_id="e1", field="f") == value


def test_a_sealed_string_that_is_not_utf8_is_refused() -> None:
    import base64
    import os

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
