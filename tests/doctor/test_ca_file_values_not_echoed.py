"""A secret pasted into a CA file variable by mistake is never echoed, whatever "/" it holds: an
Azure Redis access key (base64, often with "/") or a PEM key's text. doctor showed any value with
a "/" as a path, and ``RedisStore.from_env``'s and the OBO source's errors did too. A value
shaped like a path is still shown (the user must see which path is wrong)."""

from __future__ import annotations

import json

import pytest

from entra_passthrough import ConfigurationError
from entra_passthrough._doctor import run, table
from entra_passthrough.redis import RedisStore

KEY = "Zq8+v/Uw3kR9sT2yX7pL4mN6bC1dE5fG0hJ="  # an access key's shape
PEM = (
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN/BgkqhkiG9w0BAQEFAASCBKcw+secretKEYmaterial\n-----END"
)
SECRETS = [KEY, PEM, "secretKEYmaterial"]


def _report(env: dict[str, str]) -> str:
    checks = run(env)
    return table(checks) + json.dumps([c.__dict__ for c in checks])


@pytest.mark.parametrize("value", [KEY, PEM], ids=["access-key", "pem-text"])
@pytest.mark.parametrize(
    "variable", ["ENTRA_PASSTHROUGH_REDIS_CA_FILE", "ENTRA_PASSTHROUGH_CA_FILE"]
)
def test_doctor_never_shows_a_secret_pasted_as_a_ca_file(variable: str, value: str) -> None:
    env = {"ENTRA_PASSTHROUGH_REDIS_URL": "rediss://cache.contoso.com:6380/0", variable: value}
    text = _report(env)
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize("value", [KEY, PEM], ids=["access-key", "pem-text"])
def test_the_store_error_never_shows_it_either(value: str) -> None:
    env = {
        "ENTRA_PASSTHROUGH_REDIS_URL": "rediss://cache.contoso.com:6380/0",
        "ENTRA_PASSTHROUGH_REDIS_CA_FILE": value,
    }
    with pytest.raises(ConfigurationError) as info:
        RedisStore.from_env(env)
    for secret in SECRETS:
        assert secret not in str(info.value)


def test_a_path_is_still_shown(tmp_path: object) -> None:
    missing = "/etc/ssl/private/no-such-ca.pem"
    env = {
        "ENTRA_PASSTHROUGH_REDIS_URL": "rediss://cache.contoso.com:6380/0",
        "ENTRA_PASSTHROUGH_REDIS_CA_FILE": missing,
    }
    with pytest.raises(ConfigurationError) as info:
        RedisStore.from_env(env)
    assert missing in str(info.value)
    assert missing in _report(env)
