"""``Keyring.from_env`` takes the environment mapping first, as ``RedisStore.from_env``,
``shared_token_cache`` and ``DelegatedConsent.from_env`` do (it raised an untyped TypeError),
besides its variable name first; what it cannot use is a typed error with a fix. An empty key
list has a fix too."""

from __future__ import annotations

import base64
import secrets

import pytest

from entra_passthrough import ConfigurationError, Keyring

KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
ENV = {"ENTRA_PASSTHROUGH_CONSENT_KEYS": f"k1:{KEY}", "OTHER_KEYS": f"k2:{KEY}"}


def test_the_mapping_first_is_the_environment() -> None:
    first = Keyring.from_env(ENV)
    assert first.current == "k1"
    assert first.keys == Keyring.from_env(environ=ENV).keys
    assert Keyring.from_env("OTHER_KEYS", environ=ENV).current == "k2"  # the variable first


def test_what_it_cannot_use_is_typed_with_a_fix() -> None:
    with pytest.raises(ConfigurationError, match="two environments") as info:
        Keyring.from_env(ENV, environ=ENV)
    assert info.value.fix
    with pytest.raises(ConfigurationError, match="name of an environment variable") as info:
        Keyring.from_env(42)  # type: ignore[arg-type]
    assert info.value.fix
    with pytest.raises(ConfigurationError, match="not a mapping") as info:
        Keyring.from_env(environ=["ENTRA_PASSTHROUGH_CONSENT_KEYS"])  # type: ignore[arg-type]
    assert info.value.fix
    with pytest.raises(ConfigurationError, match="ENTRA_PASSTHROUGH_CONSENT_KEYS is not set"):
        Keyring.from_env({})
    assert KEY not in str(info.value)


@pytest.mark.parametrize("text", ["", " , ,"])
def test_an_empty_key_list_has_a_fix(text: str) -> None:
    with pytest.raises(ConfigurationError, match="no keys given") as info:
        Keyring.from_string(text)
    assert info.value.fix
    assert "Keyring.generate()" in info.value.fix
