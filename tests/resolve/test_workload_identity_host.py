"""An AKS workload identity pod (the webhook injects ``AZURE_FEDERATED_TOKEN_FILE``,
``AZURE_CLIENT_ID``, ``AZURE_TENANT_ID`` and ``AZURE_AUTHORITY_HOST``) as the app identity.

The node's IMDS does not know the pod's identity ("Identity not found"), so
``ManagedIdentity(client_id=AZURE_CLIENT_ID)`` on IMDS failed where azure-identity's
``ManagedIdentityCredential`` takes the workload identity. ``ManagedIdentity`` now does too:
client credentials as that identity, with the token file as the client assertion. Real MSAL
against the emulator over HTTPS; the emulator's IMDS stands in for the node's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from entra_passthrough import (
    ConfigurationError,
    ManagedIdentity,
    Policy,
    SourceUnavailable,
    TokenChain,
)
from entra_passthrough._env import azure_app_hint
from entra_passthrough._types import IdentityKind
from entra_passthrough.testing import EntraEmulator

from .conftest import decode, make_mi, mcp_scope, session


@pytest.fixture
def pod(idp: EntraEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The pod's variables; the process environment is a node whose IMDS is the emulator's."""
    for name in EntraEmulator.MI_HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID", "AZURE_TENANT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AZURE_AUTHORITY_HOST", raising=False)
    for name, value in idp.mi_env("imds").items():
        monkeypatch.setenv(name, value)
    # A projected service account token the emulator trusts: the workload's app registration
    # (idp.agent) has a federated credential for it.
    token_file = tmp_path / "azure-identity-token"
    mi = make_mi(idp)
    token_file.write_text(mi.token_for_resource("api://AzureADTokenExchange"))
    mi.close()
    return {
        "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
        "AZURE_CLIENT_ID": idp.agent.client_id,
        "AZURE_TENANT_ID": idp.tenant_id,
        "AZURE_AUTHORITY_HOST": idp.url,
    }


def _identity_endpoint_requests(idp: EntraEmulator) -> int:
    endpoints = idp.stats()["endpoints"]
    return sum(n for name, n in endpoints.items() if name not in ("token", "discovery"))


@pytest.mark.parametrize("policy", ["app_only", "user_or_app"])
def test_from_env_on_a_workload_identity_pod_gets_the_workload_app_token(
    idp: EntraEmulator, pod: dict[str, str], policy: str
) -> None:
    env = {**pod, "ENTRA_PASSTHROUGH_POLICY": policy, "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file}
    chain = TokenChain.from_env(env)
    try:
        (source,) = chain.sources
        assert "host=workload_identity" in repr(source)
        before_token = idp.stats()["endpoints"]["token"]
        before_identity = _identity_endpoint_requests(idp)
        result = chain.get_token(mcp_scope(idp))
        assert result.kind is IdentityKind.APP
        claims = decode(result.token)
        assert (claims.get("appid") or claims.get("azp")) == idp.agent.client_id
        assert idp.stats()["endpoints"]["token"] - before_token == 1
        assert _identity_endpoint_requests(idp) == before_identity  # the node's IMDS: never
    finally:
        chain.close()


def test_managed_identity_detects_the_pod_from_the_process_environment(
    idp: EntraEmulator, pod: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in pod.items():
        monkeypatch.setenv(name, value)
    # No selector: azure-identity's ManagedIdentityCredential() takes AZURE_CLIENT_ID there too.
    for source in (
        ManagedIdentity(http_client=session(idp)),
        ManagedIdentity(client_id=idp.agent.client_id, http_client=session(idp)),
    ):
        chain = TokenChain([source], policy=Policy.APP_ONLY)
        try:
            assert source.host == "workload_identity"
            result = asyncio.run(chain.get_token_async(mcp_scope(idp)))
            claims = decode(result.token)
            assert (claims.get("appid") or claims.get("azp")) == idp.agent.client_id
        finally:
            chain.close()


def test_a_pod_without_a_client_id_or_with_another_selector_is_refused(
    idp: EntraEmulator, pod: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    without_client_id = {k: v for k, v in pod.items() if k != "AZURE_CLIENT_ID"}
    with pytest.raises(ConfigurationError) as info:
        ManagedIdentity.from_env(without_client_id)
    assert "AZURE_CLIENT_ID" in str(info.value)
    assert "azure.workload.identity/client-id" in (info.value.fix or "")
    for name, value in without_client_id.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match="AZURE_CLIENT_ID"):
        ManagedIdentity()
    with pytest.raises(ConfigurationError, match="client_id"):
        ManagedIdentity(object_id="00000000-0000-0000-0000-000000000001")
    # The pod's variables appear after the source was built: refused before any request.
    monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE")
    source = ManagedIdentity(http_client=session(idp))
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", pod["AZURE_FEDERATED_TOKEN_FILE"])
    before = idp.stats()["endpoints"]["token"]
    chain = TokenChain([source], policy=Policy.APP_ONLY)
    try:
        with pytest.raises(SourceUnavailable, match="AZURE_CLIENT_ID"):
            chain.get_token(mcp_scope(idp))
    finally:
        chain.close()
    assert idp.stats()["endpoints"]["token"] == before


def test_the_hint_on_a_pod_asks_only_for_the_obo_client_id(pod: dict[str, str]) -> None:
    hint = azure_app_hint(pod)
    assert "ENTRA_PASSTHROUGH_CLIENT_ID" in hint
    # The token file is the credential: no secret or certificate to set.
    assert "ENTRA_PASSTHROUGH_CLIENT_SECRET" not in hint
    assert "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH" not in hint
    assert "AZURE_FEDERATED_TOKEN_FILE is its credential" in hint
    assert pod["AZURE_CLIENT_ID"] not in hint  # names, never values
