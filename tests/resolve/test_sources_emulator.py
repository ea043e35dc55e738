"""The other sources against the emulator: managed identity, secretless and certificate OBO,
Agent ID, the Foundry route, Azure CLI, azure-identity credentials, and the policy with them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from azure.identity import ClientSecretCredential

from entra_passthrough import (
    AgentIdentityOnBehalfOf,
    AssertionAudienceMismatch,
    AssertionMalformed,
    AzureCli,
    AzureCredential,
    Caller,
    FoundryToolboxRoute,
    IdentityKind,
    NoCallerError,
    OnBehalfOf,
    Policy,
    PolicyViolation,
    SourceUnavailable,
    TokenChain,
    TokenRequest,
    bind_caller,
    current_caller,
)
from entra_passthrough.testing import FOUNDRY_AUDIENCE, EntraEmulator

from .conftest import app_credential, decode, make_mi, make_obo, mcp_scope, session


def counts(idp: EntraEmulator) -> tuple[int, int]:
    stats = idp.stats()["endpoints"]
    return stats["token"], stats["msi"]


async def test_user_only_never_yields_app_with_mi_and_azure_credential(
    idp: EntraEmulator,
) -> None:
    mi = make_mi(idp)
    cred = AzureCredential(app_credential(idp), kind=IdentityKind.APP, name="agent_app")
    chain = TokenChain([make_obo(idp), mi, cred])  # default policy: user_only
    before = counts(idp)
    with pytest.raises(NoCallerError) as info:
        await chain.get_token_async(mcp_scope(idp))
    assert counts(idp) == before  # neither the MI endpoint nor Entra was asked
    assert "managed_identity: kind app not allowed by policy user_only" in str(info.value)
    assert chain.lifecycle_token(mcp_scope(idp)) is None

    foundry = idp.user_token("alice", audience=FOUNDRY_AUDIENCE)
    with bind_caller(token=foundry), pytest.raises(AssertionAudienceMismatch):
        await chain.get_token_async(mcp_scope(idp))
    assert counts(idp) == before

    with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
        result = await chain.get_token_async(mcp_scope(idp))
    claims = decode(result.token)
    assert result.kind is IdentityKind.USER
    assert "scp" in claims
    assert "roles" not in claims
    assert claims["oid"] == idp.users["alice"].oid
    chain.close()


async def test_user_or_app_uses_mi_only_without_any_assertion(idp: EntraEmulator) -> None:
    chain = TokenChain([make_obo(idp), make_mi(idp)], policy=Policy.USER_OR_APP)
    result = await chain.get_token_async(mcp_scope(idp))
    claims = decode(result.token)
    assert result.kind is IdentityKind.APP
    assert "Tools.Call" in claims["roles"]
    assert "scp" not in claims
    msi = idp.stats()["endpoints"]["msi"]
    # A presented but unusable assertion fails closed with its own typed error, even though
    # the app token is cached and would cost nothing.
    cases: list[tuple[str, type[Exception]]] = [
        ("garbage", AssertionMalformed),
        ("", AssertionMalformed),
        (idp.user_token("alice", audience=FOUNDRY_AUDIENCE), AssertionAudienceMismatch),
    ]
    for token, error in cases:
        with bind_caller(token=token), pytest.raises(error):
            await chain.get_token_async(mcp_scope(idp))
        with bind_caller(token=token), pytest.raises(error):
            chain.get_token(mcp_scope(idp))
    assert idp.stats()["endpoints"]["msi"] == msi
    chain.close()


async def test_app_only_with_azure_identity_sync_credential(idp: EntraEmulator) -> None:
    cred = AzureCredential(app_credential(idp), name="agent_app")
    chain = TokenChain([cred], policy="app_only")
    with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
        result = await chain.get_token_async(mcp_scope(idp))
    assert result.kind is IdentityKind.APP
    assert "roles" in decode(result.token)
    assert chain.get_token(mcp_scope(idp)).token == result.token  # cached
    chain.close()


async def test_azure_credential_aio_and_unavailable(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.identity.aio import ManagedIdentityCredential

    for name, value in idp.mi_env().items():
        monkeypatch.setenv(name, value)
    aio = ManagedIdentityCredential(client_id=idp.managed_identity.client_id)
    chain = TokenChain([AzureCredential(aio, name="mi_aio")], policy=Policy.APP_ONLY)
    result = await chain.get_token_async(mcp_scope(idp))
    assert decode(result.token)["oid"] == idp.managed_identity.object_id
    await aio.close()

    monkeypatch.delenv("IDENTITY_ENDPOINT")
    monkeypatch.delenv("IDENTITY_HEADER")
    from azure.identity import EnvironmentCredential

    unavailable = AzureCredential(EnvironmentCredential(), name="env")
    chain = TokenChain([unavailable], policy=Policy.APP_ONLY)
    with pytest.raises(PolicyViolation) as info:
        await chain.get_token_async(mcp_scope(idp))
    assert "env: not applicable" in str(info.value)
    chain.close()


async def test_obo_with_managed_identity_as_federated_credential(idp: EntraEmulator) -> None:
    mi = make_mi(idp)
    obo = make_obo(idp, managed_identity=mi)
    chain = TokenChain([obo])
    before = idp.stats()["endpoints"]["msi"]
    for name in ("alice", "bob"):
        with bind_caller(token=idp.user_token(name, audience=idp.agent.client_id)):
            result = await chain.get_token_async(mcp_scope(idp))
        assert decode(result.token)["oid"] == idp.users[name].oid
    assert idp.stats()["endpoints"]["msi"] - before == 1  # the MI assertion is reused
    chain.close()


async def test_obo_with_certificate_and_token_file(idp: EntraEmulator, tmp_path: Path) -> None:
    assert idp.agent.certificate_pem is not None
    cert = make_obo(idp, client_certificate=idp.agent.certificate_pem)
    with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
        result = cert.get_token(TokenRequest(tuple(mcp_scope(idp)), current_caller()))
    assert result is not None
    assert decode(result.token)["oid"] == idp.users["alice"].oid

    token_file = tmp_path / "federated-token"
    token_file.write_text(make_mi(idp).token_for_resource("api://AzureADTokenExchange"))
    fic = TokenChain([make_obo(idp, federated_token_file=str(token_file))])
    with bind_caller(token=idp.user_token("bob", audience=idp.agent.client_id)):
        result = await fic.get_token_async(mcp_scope(idp))
    assert decode(result.token)["oid"] == idp.users["bob"].oid
    cert.close()
    fic.close()


async def test_agent_identity_obo(idp: EntraEmulator) -> None:
    source = AgentIdentityOnBehalfOf(
        blueprint_client_id=idp.blueprint.client_id,
        agent_identity_id=idp.agent_identity.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.blueprint.secret,
        authority_host=idp.url,
        http_client=session(idp),
    )
    chain = TokenChain([source])
    before = idp.stats()["grants"]["client_credentials"]
    for name in ("alice", "bob"):
        with bind_caller(token=idp.user_token(name, audience=idp.blueprint.client_id)):
            result = await chain.get_token_async(mcp_scope(idp))
        claims = decode(result.token)
        assert claims["oid"] == idp.users[name].oid
        assert claims["aud"] == idp.mcp.client_id
        assert result.kind is IdentityKind.USER
    assert idp.stats()["grants"]["client_credentials"] - before == 1  # T1 reused
    # A token for the agent app (not the blueprint) is refused before any request.
    wrong = idp.user_token("alice", audience=idp.agent.client_id)
    with bind_caller(token=wrong), pytest.raises(AssertionAudienceMismatch):
        await chain.get_token_async(mcp_scope(idp))
    chain.close()


async def test_agent_identity_blueprint_error_names_this_source(idp: EntraEmulator) -> None:
    from entra_passthrough import TokenAcquisitionError

    source = AgentIdentityOnBehalfOf(
        blueprint_client_id=idp.blueprint.client_id,
        agent_identity_id=idp.agent_identity.client_id,
        tenant_id=idp.tenant_id,
        client_secret="not-the-blueprint-secret",
        authority_host=idp.url,
        http_client=session(idp),
        name="agent_b",
    )
    chain = TokenChain([source])
    token = idp.user_token("alice", audience=idp.blueprint.client_id)
    with bind_caller(token=token), pytest.raises(TokenAcquisitionError) as info:
        await chain.get_token_async(mcp_scope(idp))
    assert info.value.source == "agent_b.blueprint"
    chain.close()


async def test_agent_identity_close_closes_the_sessions_msal_built(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import requests

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", idp.ca_file)  # MSAL's own sessions keep trust_env
    source = AgentIdentityOnBehalfOf(
        blueprint_client_id=idp.blueprint.client_id,
        agent_identity_id=idp.agent_identity.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.blueprint.secret,
        authority_host=idp.url,
    )
    with bind_caller(token=idp.user_token("alice", audience=idp.blueprint.client_id)):
        await TokenChain([source]).get_token_async(mcp_scope(idp))
    assert len(source.msal_apps()) == 1
    closed: list[requests.Session] = []
    real_close = requests.Session.close

    def record(self: requests.Session) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(requests.Session, "close", record)
    source.close()
    assert len(closed) == 2  # the agent identity's OBO app and the blueprint's app


async def test_foundry_route_uses_the_current_call_id(idp: EntraEmulator) -> None:
    route = FoundryToolboxRoute(make_mi(idp))
    chain = TokenChain([route], policy=Policy.APP_ONLY)
    msi = idp.stats()["endpoints"]["msi"]
    seen = []
    for call_id in ("call-1", "call-2", "call-3"):
        caller = Caller.from_token(
            idp.user_token("alice", audience=FOUNDRY_AUDIENCE), call_id=call_id
        )
        with bind_caller(caller):
            result = await chain.get_token_async(["https://ai.azure.com/.default"])
        seen.append(result.headers["x-agent-foundry-call-id"])
        assert decode(result.token)["aud"] in (idp.foundry.client_id, FOUNDRY_AUDIENCE)
        assert result.kind is IdentityKind.APP
    assert seen == ["call-1", "call-2", "call-3"]
    assert idp.stats()["endpoints"]["msi"] - msi == 1  # the agent token is cached
    # No caller (connection lifecycle): the agent itself, with the features, never a call id.
    agent = await chain.get_token_async(["https://ai.azure.com/.default"])
    assert dict(agent.headers) == {"Foundry-Features": "Toolboxes=V1Preview"}
    stale = Caller.from_token(None, call_id="old-call")
    stale.end()
    with bind_caller(stale):
        result = await chain.get_token_async(["https://ai.azure.com/.default"])
    assert "x-agent-foundry-call-id" not in result.headers  # never a stale call id
    # A caller the toolbox cannot route (no call id): nothing is sent, the agent never stands in.
    with bind_caller(Caller.from_token(None, user_id="u1")), pytest.raises(PolicyViolation) as info:
        await chain.get_token_async(["https://ai.azure.com/.default"])
    assert "foundry_toolbox: the current request has no x-agent-foundry-call-id" in str(info.value)
    chain.close()


async def test_azure_cli_developer_policy(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in idp.az_env("alice").items():
        monkeypatch.setenv(name, value)
    az = AzureCli()
    chain = TokenChain([make_obo(idp), az], policy=Policy.DEVELOPER)
    result = await chain.get_token_async(mcp_scope(idp))
    assert result.kind is IdentityKind.DEVELOPER
    assert decode(result.token)["oid"] == idp.users["alice"].oid
    sync = az.get_token(TokenRequest(tuple(mcp_scope(idp)), None))
    assert sync is not None
    assert sync.kind is IdentityKind.DEVELOPER
    # Never under the default policy, even with az signed in.
    with pytest.raises(NoCallerError):
        await TokenChain([make_obo(idp), az]).get_token_async(mcp_scope(idp))
    chain.close()


def test_azure_cli_sync_with_a_sub_second_timeout(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """azure-identity takes whole seconds: 0.9 became 0 and every sync call timed out at once.

    The invariant, not a timing: a 0.9 s timeout never fires before 0.9 s. On a loaded machine
    the fake ``az`` (a Python process) may really take longer than that; then the call times
    out, but not at once.
    """
    for name, value in idp.az_env("alice").items():
        monkeypatch.setenv(name, value)
    az = AzureCli(timeout=0.9)
    started = time.monotonic()
    failure = ""
    try:
        result = az.get_token(TokenRequest(tuple(mcp_scope(idp)), None))
    except SourceUnavailable as exc:
        failure = str(exc)
    finally:
        az.close()
    elapsed = time.monotonic() - started
    if failure:
        assert "timed out" in failure
        assert elapsed >= 0.9, f"a 0.9 s timeout fired after {elapsed:.3f} s"
        return
    assert result is not None
    assert decode(result.token)["oid"] == idp.users["alice"].oid


async def test_obo_from_env_against_the_emulator(idp: EntraEmulator) -> None:
    env = {
        "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
        "AZURE_TENANT_ID": idp.tenant_id,
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.agent.secret or "",
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
    }
    chain = TokenChain.from_env(env)
    assert isinstance(chain.sources[0], OnBehalfOf)
    with bind_caller(token=idp.user_token("bob", audience=idp.agent.client_id)):
        result = await chain.get_token_async(mcp_scope(idp))
    assert decode(result.token)["oid"] == idp.users["bob"].oid
    chain.close()
    await asyncio.sleep(0)


async def test_azure_credential_auth_failure_is_typed(idp: EntraEmulator) -> None:
    from entra_passthrough import EntraError

    wrong = ClientSecretCredential(
        idp.tenant_id,
        idp.agent.client_id,
        "not-the-secret",
        authority=idp.url,
        connection_verify=idp.ca_file,
        disable_instance_discovery=True,
    )
    chain = TokenChain([AzureCredential(wrong, name="wrong")], policy=Policy.APP_ONLY)
    with pytest.raises(EntraError) as info:
        await chain.get_token_async(mcp_scope(idp))
    assert info.value.code is not None
    assert info.value.code.code == 7000215
    assert "not-the-secret" not in str(info.value)
    chain.close()


async def test_managed_identity_detected_by_msal_from_the_environment(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from entra_passthrough import ManagedIdentity

    for name, value in idp.mi_env().items():
        monkeypatch.setenv(name, value)
    mi = ManagedIdentity(client_id=idp.managed_identity.client_id)  # no endpoint: MSAL detects
    chain = TokenChain([mi], policy=Policy.APP_ONLY)
    result = await chain.get_token_async(mcp_scope(idp))
    assert decode(result.token)["oid"] == idp.managed_identity.object_id
    assert result.kind is IdentityKind.APP
    chain.close()


@pytest.mark.parametrize("aio", [False, True])
async def test_azure_credential_transport_failures_are_not_entras_verdict(
    idp: EntraEmulator, aio: bool
) -> None:
    """azure-identity raises ClientAuthenticationError for a 503, a 429 and an unreachable
    endpoint alike: the source tells them apart (the docs promise SourceUnavailable and
    Throttled with retry_after for them, EntraError for Entra's answers)."""
    import socket

    from azure.identity.aio import ClientSecretCredential as AioClientSecretCredential

    from entra_passthrough import EntraError, EntraPassthroughError, SourceUnavailable, Throttled

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"https://127.0.0.1:{s.getsockname()[1]}"

    def credential(authority: str, secret: str | None = None) -> Any:
        kind = AioClientSecretCredential if aio else ClientSecretCredential
        return kind(
            idp.tenant_id,
            idp.agent.client_id,
            secret or idp.agent.secret or "",
            authority=authority,
            connection_verify=idp.ca_file,
            disable_instance_discovery=True,
            retry_total=0,
        )

    async def attempt(authority: str, fault: dict[str, Any] | None) -> BaseException:
        if fault:
            idp.inject_fault("token", count=10, **fault)
        cred = credential(authority)
        chain = TokenChain([AzureCredential(cred)], policy=Policy.APP_ONLY)
        try:
            with pytest.raises(EntraPassthroughError) as info:
                await chain.get_token_async(mcp_scope(idp))
            return info.value
        finally:
            idp.clear_faults()
            chain.close()
            if aio:
                await cred.close()

    unreachable = await attempt(closed, None)
    assert type(unreachable) is SourceUnavailable
    assert "HTTPS_PROXY" in (unreachable.fix or "")
    failing = await attempt(idp.url, {"status": 503})
    assert type(failing) is SourceUnavailable
    throttled = await attempt(idp.url, {"status": 429, "retry_after": 7})
    if aio:  # the aio credentials keep the response: its status and Retry-After
        assert type(throttled) is Throttled
        assert throttled.retry_after is not None
        assert 5 <= throttled.retry_after <= 7
    else:  # MSAL's text names only AADSTS90033: a transient failure, not Entra's verdict
        assert type(throttled) is SourceUnavailable
    # Entra's own refusal stays EntraError, code decoded.
    cred = credential(idp.url, secret="not-the-secret")
    chain = TokenChain([AzureCredential(cred)], policy=Policy.APP_ONLY)
    with pytest.raises(EntraError) as info:
        await chain.get_token_async(mcp_scope(idp))
    chain.close()
    if aio:
        await cred.close()
    assert info.value.code is not None
    assert info.value.code.code == 7000215
