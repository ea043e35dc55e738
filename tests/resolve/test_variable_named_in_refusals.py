"""A value ``from_env()`` refuses names the variable it came from, with a fix, and never
echoes the value (docs/configuration.md): tenant variables (a tenant no caller can have),
``AZURE_AUTHORITY_HOST`` over http, ``ENTRA_PASSTHROUGH_CONSENT_KEYS``,
``ENTRA_PASSTHROUGH_AZ_TENANT_ID`` and ``ENTRA_PASSTHROUGH_REDIS_URL``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from entra_passthrough import (
    AgentIdentityOnBehalfOf,
    AzureCli,
    ConfigurationError,
    DelegatedConsent,
    Keyring,
    MemoryStore,
    OnBehalfOf,
)
from entra_passthrough.redis import RedisStore

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "11111111-2222-3333-4444-555555555555"
SECRET = "Qx8Q~not-a-real-secret-0123456789abcdefgh"
KEYS = "k1:" + "A" * 43
OBO_ENV = {
    "ENTRA_PASSTHROUGH_CLIENT_ID": CLIENT,
    "AZURE_TENANT_ID": TENANT,
    "ENTRA_PASSTHROUGH_CLIENT_SECRET": SECRET,
}
CONSENT_ENV = {
    "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": CLIENT,
    "AZURE_TENANT_ID": TENANT,
    "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": SECRET,
    "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "https://broker.contoso.com/consent",
    "ENTRA_PASSTHROUGH_CONSENT_KEYS": KEYS,
}
AGENT_ENV = {
    "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID": CLIENT,
    "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": "21111111-2222-3333-4444-555555555555",
    "AZURE_TENANT_ID": TENANT,
    "ENTRA_PASSTHROUGH_CLIENT_SECRET": SECRET,
}


def obo(env: dict[str, str]) -> Any:
    return OnBehalfOf.from_env({**OBO_ENV, **env})


def delegated(env: dict[str, str]) -> Any:
    return DelegatedConsent.from_env({**CONSENT_ENV, **env}, store=MemoryStore())


def agent_id(env: dict[str, str]) -> Any:
    return AgentIdentityOnBehalfOf.from_env({**AGENT_ENV, **env})


def azure_cli(env: dict[str, str]) -> Any:
    return AzureCli.from_env(env)


def keyring(env: dict[str, str]) -> Any:
    return Keyring.from_env(environ=env)


def redis(env: dict[str, str]) -> Any:
    return RedisStore.from_env(env)


PASTED = "Zq9~pastedSecretValue0123456789"

CASES: list[tuple[Callable[[dict[str, str]], Any], str, str]] = [
    (obo, "AZURE_TENANT_ID", "common"),
    (obo, "AZURE_TENANT_ID", "organizations"),
    (obo, "AZURE_TENANT_ID", "{" + TENANT + "}"),
    (obo, "AZURE_TENANT_ID", "relative/path"),
    (obo, "AZURE_TENANT_ID", PASTED),
    (obo, "AZURE_AUTHORITY_HOST", "http://login.example.com"),
    (delegated, "AZURE_TENANT_ID", "consumers"),
    (delegated, "ENTRA_PASSTHROUGH_CONSENT_TENANT_ID", "{" + TENANT + "}"),
    (delegated, "ENTRA_PASSTHROUGH_CONSENT_KEYS", "not-a-keyring"),
    (delegated, "ENTRA_PASSTHROUGH_CONSENT_KEYS", "k1:tooshort"),
    (agent_id, "AZURE_TENANT_ID", "common"),
    (agent_id, "AZURE_TENANT_ID", "http://example.com"),
    (azure_cli, "ENTRA_PASSTHROUGH_AZ_TENANT_ID", "{" + TENANT + "}"),
    (azure_cli, "ENTRA_PASSTHROUGH_AZ_TENANT_ID", "relative/path"),
    (keyring, "ENTRA_PASSTHROUGH_CONSENT_KEYS", "not-a-keyring"),
    (keyring, "ENTRA_PASSTHROUGH_CONSENT_KEYS", "k1:tooshort"),
    (keyring, "ENTRA_PASSTHROUGH_CONSENT_KEYS", "k1:%%%"),
    (redis, "ENTRA_PASSTHROUGH_REDIS_URL", "https://cache.contoso.com:6380"),
    (redis, "ENTRA_PASSTHROUGH_REDIS_URL", "redis://cache.contoso.com:6379"),
]


@pytest.mark.parametrize(
    ("build", "variable", "value"),
    CASES,
    ids=[f"{b.__name__}-{v}-{i}" for i, (b, v, _) in enumerate(CASES)],
)
def test_the_refusal_names_the_variable(
    build: Callable[[dict[str, str]], Any], variable: str, value: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        build({variable: value})  # refused before anything is started
    text = str(info.value)
    assert variable in text, text
    assert "Fix:" in text, text
    assert PASTED not in text


def test_the_az_tenant_may_still_be_tenantless_or_a_domain() -> None:
    for tenant in ("organizations", "contoso.onmicrosoft.com", TENANT):
        AzureCli.from_env({"ENTRA_PASSTHROUGH_AZ_TENANT_ID": tenant}).close()


def test_good_values_still_build() -> None:
    # A domain names the authority; the callers' tid is compared with the allow-list (GUIDs).
    obo(
        {"AZURE_TENANT_ID": "contoso.onmicrosoft.com", "ENTRA_PASSTHROUGH_ALLOWED_TENANTS": TENANT}
    ).close()
    delegated({"ENTRA_PASSTHROUGH_CONSENT_TENANT_ID": TENANT.upper()}).close()
    agent_id({}).close()
    assert Keyring.from_env(environ={"ENTRA_PASSTHROUGH_CONSENT_KEYS": KEYS}).current == "k1"
