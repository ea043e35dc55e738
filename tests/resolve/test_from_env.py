"""from_env() of the chain and each source: variable names, choices, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from entra_passthrough import (
    AgentIdentityOnBehalfOf,
    AzureCli,
    ConfigurationError,
    ManagedIdentity,
    OnBehalfOf,
    Policy,
    TokenChain,
)
from entra_passthrough._env import VARIABLES

BASE = {
    "ENTRA_PASSTHROUGH_CLIENT_ID": "app-id",
    "AZURE_TENANT_ID": "tenant-a",
    "ENTRA_PASSTHROUGH_CLIENT_SECRET": "s3cret-value",
}


def test_obo_from_env_secret_and_lists() -> None:
    env = {
        **BASE,
        "ENTRA_PASSTHROUGH_ALLOWED_TENANTS": "tenant-a, tenant-b",
        "ENTRA_PASSTHROUGH_ACCEPTED_AUDIENCES": "api://contoso/agent",
        "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us",
    }
    obo = OnBehalfOf.from_env(env)
    assert obo.client_id == "app-id"
    assert obo.allowed_tenants == {"tenant-a", "tenant-b"}
    assert "api://contoso/agent" in obo.accepted_audiences
    assert obo.authority_host == "https://login.microsoftonline.us"
    assert "s3cret-value" not in repr(obo)


def test_obo_from_env_credential_choice() -> None:
    env = {k: v for k, v in BASE.items() if k != "ENTRA_PASSTHROUGH_CLIENT_SECRET"}
    with pytest.raises(ConfigurationError) as info:
        OnBehalfOf.from_env(env)
    assert "ENTRA_PASSTHROUGH_CLIENT_SECRET" in str(info.value)
    mi = OnBehalfOf.from_env(
        {**env, "IDENTITY_ENDPOINT": "http://127.0.0.1:1/msi", "IDENTITY_HEADER": "h"}
    )
    assert "credential=managed_identity" in repr(mi)
    fic = OnBehalfOf.from_env({**env, "AZURE_FEDERATED_TOKEN_FILE": "/var/run/token"})
    assert "credential=federated_token_file" in repr(fic)
    with pytest.raises(ConfigurationError):
        OnBehalfOf.from_env({**BASE, "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL": "certificate"})


def test_missing_required() -> None:
    with pytest.raises(ConfigurationError) as info:
        OnBehalfOf.from_env({"AZURE_TENANT_ID": "t"})
    assert "ENTRA_PASSTHROUGH_CLIENT_ID" in str(info.value)


def test_managed_identity_from_env() -> None:
    mi = ManagedIdentity.from_env(
        {"AZURE_CLIENT_ID": "mi-id", "IDENTITY_ENDPOINT": "http://x", "IDENTITY_HEADER": "h"}
    )
    assert mi.client_id == "mi-id"
    assert mi.endpoint == "http://x"
    with pytest.raises(ConfigurationError):
        ManagedIdentity.from_env({"IDENTITY_ENDPOINT": "http://x"})


def test_chain_from_env_policies() -> None:
    chain = TokenChain.from_env(BASE)
    assert chain.policy is Policy.USER_ONLY
    assert [s.name for s in chain.sources] == ["obo"]
    mi_env = {**BASE, "IDENTITY_ENDPOINT": "http://x", "IDENTITY_HEADER": "h"}
    assert [s.name for s in TokenChain.from_env(mi_env).sources] == ["obo"]  # user_only: no MI
    chain = TokenChain.from_env({**mi_env, "ENTRA_PASSTHROUGH_POLICY": "user_or_app"})
    assert [s.name for s in chain.sources] == ["obo", "managed_identity"]
    chain = TokenChain.from_env({**mi_env, "ENTRA_PASSTHROUGH_LIFECYCLE_APP": "true"})
    assert chain.policy is Policy.USER_ONLY
    assert chain.lifecycle_app
    assert [s.name for s in chain.sources] == ["obo", "managed_identity"]
    dev = TokenChain.from_env({**BASE, "ENTRA_PASSTHROUGH_POLICY": "developer"})
    assert isinstance(dev.sources[-1], AzureCli)
    assert (
        TokenChain.from_env({**BASE, "ENTRA_PASSTHROUGH_CACHE_MAX_ENTRIES": "7"}).cache.max_entries
        == 7
    )
    with pytest.raises(ConfigurationError):
        TokenChain.from_env({**BASE, "ENTRA_PASSTHROUGH_POLICY": "anything"})
    with pytest.raises(ConfigurationError):
        TokenChain.from_env({})
    with pytest.raises(ConfigurationError):
        TokenChain.from_env({**BASE, "ENTRA_PASSTHROUGH_LIFECYCLE_APP": "maybe"})


def test_agent_identity_from_env() -> None:
    env = {
        "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID": "bp",
        "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": "agent",
        "AZURE_TENANT_ID": "t",
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": "bp-secret",
    }
    source = AgentIdentityOnBehalfOf.from_env(env)
    assert source.agent_identity_id == "agent"
    assert "bp-secret" not in repr(source)
    chain = TokenChain.from_env(env)
    assert isinstance(chain.sources[0], AgentIdentityOnBehalfOf)


def test_every_variable_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`((?:AZURE|IDENTITY|ENTRA_PASSTHROUGH)_[A-Z_]+)`", doc))
    assert set(VARIABLES) <= documented, set(VARIABLES) - documented


def test_azure_credential_and_foundry_route_from_env() -> None:
    from entra_passthrough import AzureCredential, FoundryToolboxRoute, IdentityKind

    env = {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "cs-123456"}
    cred = AzureCredential.from_env(env)
    assert cred.kind is IdentityKind.APP
    assert type(cred.credential).__name__ == "ClientSecretCredential"
    assert "cs-123456" not in repr(cred)
    with pytest.raises(ConfigurationError):
        AzureCredential.from_env({"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c"})
    route = FoundryToolboxRoute.from_env(
        {"AZURE_CLIENT_ID": "mi", "IDENTITY_ENDPOINT": "http://x", "IDENTITY_HEADER": "h"}
    )
    assert route.inner.name == "managed_identity"


@pytest.mark.parametrize("source_class", [OnBehalfOf, AgentIdentityOnBehalfOf])
def test_from_env_closes_the_ca_session_it_created(
    source_class: type[OnBehalfOf] | type[AgentIdentityOnBehalfOf],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import requests

    closed: list[requests.Session] = []
    monkeypatch.setattr(requests.Session, "close", lambda self: closed.append(self))
    env = {
        **BASE,
        "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID": "bp",
        "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": "agent",
        "ENTRA_PASSTHROUGH_CA_FILE": str(tmp_path / "ca.pem"),
    }
    source = source_class.from_env(env)
    source.close()
    assert [session.verify for session in closed] == [str(tmp_path / "ca.pem")]
