"""Keyring.from_string / ENTRA_PASSTHROUGH_CONSENT_KEYS take the documented format only,
``kid:<base64url of 32 bytes>[,old-kid:...]``: ``k1:<key>;k2:<key>`` was read as one 66-byte
key (the decoder skipped ';' and ':'), and a repeated key id replaced the first key. Anything
else is a ConfigurationError naming the variable, and no key is ever echoed."""

from __future__ import annotations

import base64
import secrets

import pytest

from entra_passthrough import ConfigurationError, Keyring

VARIABLE = "ENTRA_PASSTHROUGH_CONSENT_KEYS"


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


@pytest.mark.parametrize(
    ("template", "said"),
    [
        ("k1:{a};k2:{b}", "not base64url (items are separated by ','"),
        ("k1:{a} k2:{b}", "not base64url (items are separated by ','"),
        ("k1:{a},k1:{b}", "key id 'k1' is listed twice"),
        ("k1:{a}{b}", "not base64url"),  # padding in the middle
        ("k1:{a}=", "not base64url"),  # too much padding
        ("k1:{a}!", "not base64url"),
        ("{a}", "item 1 is not 'kid:base64url'"),
        ("k1:{a},{b}", "item 2 is not 'kid:base64url'"),
        ("{a}:{b}", "key id of item 1 is not 1-32 characters"),
        ("k 1:{a}", "key id of item 1 is not 1-32 characters"),
    ],
)
def test_anything_but_the_documented_format_is_refused(template: str, said: str) -> None:
    a, b = _key(), _key()
    value = template.format(a=a, b=b)
    with pytest.raises(ConfigurationError) as info:
        Keyring.from_env(environ={VARIABLE: value})
    text = f"{info.value} {info.value.fix}"
    assert text.startswith(f"{VARIABLE}: ")
    assert said in text
    for key in (a, b):
        assert key.rstrip("=")[:16] not in text  # never echoed, not even in part
    with pytest.raises(ConfigurationError):
        Keyring.from_string(value)


@pytest.mark.parametrize(
    "template",
    [
        "k1:{a}",
        "k1:{a_bare}",  # unpadded
        "2026-12:{a},2026-11:{b}",
        " 2026-12 : {a} , 2026-11:{b} ,",  # spaces around items, a trailing comma
    ],
)
def test_the_documented_format_is_read(template: str) -> None:
    a, b = _key(), _key()
    value = template.format(a=a, b=b, a_bare=a.rstrip("="))
    keyring = Keyring.from_env(environ={VARIABLE: value})
    assert keyring.current in ("k1", "2026-12")
    assert keyring.keys[keyring.current] == base64.urlsafe_b64decode(a)
    assert all(len(key) == 32 for key in keyring.keys.values())
    if "2026-11" in value:
        assert keyring.keys["2026-11"] == base64.urlsafe_b64decode(b)


def test_a_standard_base64_key_reads_as_the_same_bytes() -> None:
    """``openssl rand -base64 32`` writes ``+`` and ``/`` (3 keys in 4 have one): read as the
    same bytes as their base64url spelling, as before the format was checked; refused, every
    upgraded deployment would have lost its stored grants to a new key."""
    raw = bytes(range(200, 232))  # base64 of these has both "+" and "/"
    standard = base64.b64encode(raw).decode()
    assert "+" in standard
    assert "/" in standard
    keyring = Keyring.from_string(f"k1:{standard}")
    assert keyring.keys["k1"] == raw
    assert Keyring.from_string(f"k1:{base64.urlsafe_b64encode(raw).decode()}").keys["k1"] == raw
