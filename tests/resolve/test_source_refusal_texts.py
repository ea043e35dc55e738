"""What the sources say when they refuse, followed literally, must lead somewhere:

* a crashed or killed ``az`` (non-zero exit, no output) was ``EntraError: az could not get a
  token:`` with nothing after the colon and no fix;
* ``from_env`` on Service Fabric / Cloud Shell sent the user in a loop (set AZURE_CLIENT_ID, then
  unset it), and on a VM named IDENTITY_ENDPOINT/IDENTITY_HEADER, which IMDS never sets;
* Agent ID's ``TenantNotAllowed`` said to add the tenant to ``allowed_tenants``, which Agent ID
  refuses at build;
* one string as ``allowed_tenants`` / ``accepted_audiences`` of the OBO sources was split into
  letters (every caller refused with a misleading allow-list)."""

from __future__ import annotations

import asyncio
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from entra_passthrough import (
    AgentIdentityOnBehalfOf,
    AzureCli,
    ConfigurationError,
    EntraError,
    OnBehalfOf,
    Policy,
    SourceUnavailable,
    TenantNotAllowed,
    TokenChain,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope, session, token_posts

SCOPE = ["api://11111111-2222-3333-4444-555555555555/.default"]
UAMI = "0d8e0000-0000-0000-0000-00000000beef"


def _fake_az(tmp_path: Path, body: str) -> str:
    script = tmp_path / "az"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.skipif(sys.platform == "win32", reason="a shell script stands in for az")
@pytest.mark.parametrize(
    ("body", "said"),
    [("exit 2", "exited with status 2"), ("kill -9 $$", "was killed by signal 9")],
)
@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_crashed_az_is_unavailable_with_its_exit_status(
    tmp_path: Path, body: str, said: str, driver: str
) -> None:
    chain = TokenChain([AzureCli(executable=_fake_az(tmp_path, body))], policy=Policy.DEVELOPER)
    get = chain.get_token if driver == "sync" else lambda s: asyncio.run(chain.get_token_async(s))
    try:
        with pytest.raises(SourceUnavailable) as info:
            get(SCOPE)
    finally:
        chain.close()
    assert not isinstance(info.value, EntraError)
    assert f"az {said} and printed nothing" in str(info.value)
    assert "az account get-access-token" in (info.value.fix or "")


def _obo_env(**extra: str) -> dict[str, str]:
    return {
        "ENTRA_PASSTHROUGH_CLIENT_ID": "7f1c0000-0000-0000-0000-000000000001",
        "AZURE_TENANT_ID": "72f90000-0000-0000-0000-000000000001",
        **extra,
    }


def _host(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    """The process environment as the host sets it (ManagedIdentity detects the host there)."""
    for name in EntraEmulator.MI_HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AZURE_CLIENT_ID", raising=False)
    monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def _fix(env: dict[str, str]) -> str:
    with pytest.raises(ConfigurationError) as info:
        OnBehalfOf.from_env(env).close()
    return info.value.fix or ""


@pytest.mark.parametrize(
    "host",
    [
        {
            "IDENTITY_ENDPOINT": "https://localhost:2377/t",
            "IDENTITY_HEADER": "h",
            "IDENTITY_SERVER_THUMBPRINT": "AB" * 20,
        },
        {"MSI_ENDPOINT": "http://localhost:50342/oauth2/token"},
    ],
    ids=["service_fabric", "cloud_shell"],
)
def test_a_host_that_cannot_select_an_identity_says_so_instead_of_looping(
    monkeypatch: pytest.MonkeyPatch, host: dict[str, str]
) -> None:
    _host(monkeypatch, host)
    env = _obo_env(ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL="managed_identity", **host)
    first = _fix(env)
    # Setting AZURE_CLIENT_ID is refused on this host next: the first fix must not ask for it.
    assert "set AZURE_CLIENT_ID" not in first
    assert "ENTRA_PASSTHROUGH_CLIENT_SECRET" in first
    assert "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH" in first
    # Without a credential choice: no managed identity way is offered on this host at all.
    plain = _fix(_obo_env(**host))
    assert "managed_identity" not in plain
    assert "IDENTITY_ENDPOINT" not in plain


@pytest.mark.parametrize(
    "host",
    [{}, {"MSI_ENDPOINT": "http://localhost:1/token", "MSI_SECRET": "s"}],
    ids=["imds", "machine_learning"],
)
def test_a_vm_is_told_the_variable_it_can_set(
    monkeypatch: pytest.MonkeyPatch, host: dict[str, str]
) -> None:
    _host(monkeypatch, host)
    env = _obo_env(AZURE_CLIENT_ID=UAMI, **host)
    fix = _fix(env)
    assert "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL=managed_identity" in fix
    assert "IDENTITY_ENDPOINT/IDENTITY_HEADER" not in fix  # the host sets those, or none
    assert UAMI not in fix
    # Followed literally, it builds.
    OnBehalfOf.from_env({**env, "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL": "managed_identity"}).close()


def _agent_id(idp: EntraEmulator, **kw: Any) -> AgentIdentityOnBehalfOf:
    return AgentIdentityOnBehalfOf(
        blueprint_client_id=idp.blueprint.client_id,
        agent_identity_id=idp.agent_identity.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.blueprint.secret,
        authority_host=idp.url,
        http_client=session(idp),
        **kw,
    )


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_agent_id_tenant_refusal_names_what_can_be_done(idp: EntraEmulator, driver: str) -> None:
    chain = TokenChain([_agent_id(idp)])
    token = idp.user_token(
        "alice", audience=idp.blueprint.client_id, tenant_id=idp.second_tenant_id
    )
    before = token_posts(idp)
    try:
        get = (
            chain.get_token if driver == "sync" else lambda s: asyncio.run(chain.get_token_async(s))
        )
        with bind_caller(token=token), pytest.raises(TenantNotAllowed) as info:
            get(mcp_scope(idp))
    finally:
        chain.close()
    assert token_posts(idp) == before
    assert type(info.value) is TenantNotAllowed
    assert info.value.tenant == idp.second_tenant_id
    fix = info.value.fix or ""
    assert "add the tenant to allowed_tenants" not in fix  # refused at build for Agent ID
    assert "single-tenant" in fix
    assert "guest" in fix


def test_obo_sources_refuse_one_string_for_a_list(idp: EntraEmulator) -> None:
    simple = {
        "client_id": idp.agent.client_id,
        "tenant_id": idp.tenant_id,
        "client_secret": idp.agent.secret,
        "authority_host": idp.url,
        "http_client": session(idp),
    }
    for make in (lambda **kw: OnBehalfOf(**simple, **kw), lambda **kw: _agent_id(idp, **kw)):
        with pytest.raises(ConfigurationError, match="allowed_tenants must be a list") as info:
            make(allowed_tenants=idp.tenant_id)
        assert "allowed_tenants=[" in (info.value.fix or "")
        with pytest.raises(ConfigurationError, match="accepted_audiences must be a list"):
            make(accepted_audiences="api://agent-alias")
        # The list form still works.
        make(allowed_tenants=[idp.tenant_id], accepted_audiences=["api://agent-alias"]).close()


@pytest.mark.parametrize("tid", [None, 7, ["a"]], ids=["missing", "number", "list"])
@pytest.mark.parametrize("agent_id", [False, True], ids=["obo", "agent_id"])
def test_a_token_without_a_tenant_is_not_called_another_tenant(
    idp: EntraEmulator, tid: Any, agent_id: bool
) -> None:
    """A caller token whose tid is missing or not a string: nothing is sent, and the refusal
    says the token names no tenant. It said "The caller's tenant None is not on the
    allow-list" with the fix "add the tenant to allowed_tenants" (or, for Agent ID, "invite
    the user as a guest"), which no one can follow."""
    if agent_id:
        source: Any = _agent_id(idp)
        audience = idp.blueprint.client_id
    else:
        source = OnBehalfOf(
            client_id=idp.agent.client_id,
            tenant_id=idp.tenant_id,
            client_secret=idp.agent.secret,
            authority_host=idp.url,
            http_client=session(idp),
        )
        audience = idp.agent.client_id
    chain = TokenChain([source])
    token = idp.user_token("alice", audience=audience, extra_claims={"tid": tid})
    before = token_posts(idp)
    try:
        with bind_caller(token=token), pytest.raises(TenantNotAllowed) as info:
            chain.get_token(mcp_scope(idp))
    finally:
        chain.close()
    assert token_posts(idp) == before
    assert info.value.tenant is None
    said = str(info.value)
    assert "names no tenant" in said, said
    assert "None" not in said, said
    fix = info.value.fix or ""
    assert "inspect" in fix, fix
    assert "allowed_tenants" not in fix, fix
    assert "guest" not in fix, fix
