"""A value the exported ``Keyring`` cannot open or verify raises the exported ``KeyringError``:
an ``EntraPassthroughError`` (so ``except EntraPassthroughError`` catches it, docs/errors.md)
and still a ``ValueError``, saying what happened with a fix, never echoing the value."""

from __future__ import annotations

from typing import Any

import pytest

import entra_passthrough
from entra_passthrough import EntraPassthroughError, Keyring


def _cases() -> list[tuple[str, Any]]:
    keys = Keyring.generate("k1")
    sealed = keys.seal("store", b"grant-secret-value", aad=b"slot")
    signed = keys.sign("state", b"payload-secret-value")
    kid, body, mac = signed.split(".")
    other = Keyring.generate("k2")
    return [
        ("open: unknown key id", lambda: other.open("store", sealed, aad=b"slot")),
        ("open: altered", lambda: keys.open("store", sealed[:-4] + "AAAA", aad=b"slot")),
        ("open: another record", lambda: keys.open("store", sealed, aad=b"other-slot")),
        ("open: too short", lambda: keys.open("store", "k1.AAAA")),
        ("open: not base64url", lambda: keys.open("store", "k1.@@@@secretish@@@@")),
        ("open: not a string", lambda: keys.open("store", None)),
        ("verify: unknown key id", lambda: other.verify("state", signed)),
        ("verify: bad signature", lambda: keys.verify("state", f"{kid}.{body}.{'A' * len(mac)}")),
        ("verify: malformed", lambda: keys.verify("state", "no-dots-secretish")),
        ("verify: not a string", lambda: keys.verify("state", b"bytes")),
    ]


@pytest.mark.parametrize(("case", "call"), _cases(), ids=[c for c, _ in _cases()])
def test_keyring_refusal_is_a_typed_library_error(case: str, call: Any) -> None:
    error_type = getattr(entra_passthrough, "KeyringError", None)
    assert error_type is not None, "KeyringError is not exported from entra_passthrough"
    with pytest.raises(error_type) as caught:
        call()
    error = caught.value
    assert isinstance(error, EntraPassthroughError), case
    assert isinstance(error, ValueError), case  # what it always was
    message = str(error)
    assert message.startswith("Keyring: "), message
    assert error.fix, message
    assert "Fix: " in message, message
    for secret in ("secret-value", "secretish", "AAAA"):
        assert secret not in message, (case, message)
