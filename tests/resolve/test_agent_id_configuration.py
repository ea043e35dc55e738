"""``AgentIdentityOnBehalfOf`` against what Entra Agent ID allows: an agent identity lives in its
blueprint's tenant only (another tenant's user cost a T1 and an OBO request, then AADSTS700016),
and it cannot be consented interactively (AADSTS82014), so its ConsentRequired carries no link
and a fix for an administrator, not the consent-link fix of an ordinary app."""

from __future__ import annotations

from typing import Any

import pytest

from entra_passthrough import (
    AgentIdentityOnBehalfOf,
    ConfigurationError,
    ConsentRequired,
    TokenChain,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope, session, token_posts


def agent_id(idp: EntraEmulator, **kw: Any) -> AgentIdentityOnBehalfOf:
    return AgentIdentityOnBehalfOf(
        blueprint_client_id=idp.blueprint.client_id,
        agent_identity_id=idp.agent_identity.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.blueprint.secret,
        authority_host=idp.url,
        http_client=session(idp),
        **kw,
    )


def test_another_allowed_tenant_is_refused_at_build(idp: EntraEmulator) -> None:
    before = token_posts(idp)
    with pytest.raises(ConfigurationError) as info:
        agent_id(idp, allowed_tenants=[idp.tenant_id, idp.second_tenant_id])
    assert "AADSTS700016" in str(info.value)
    assert info.value.fix is not None
    assert "allowed_tenants" in info.value.fix
    assert idp.second_tenant_id not in str(info.value)  # a count, not the list
    assert token_posts(idp) == before


def test_another_allowed_tenant_from_the_environment_is_refused(idp: EntraEmulator) -> None:
    env = {
        "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID": idp.blueprint.client_id,
        "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": idp.agent_identity.client_id,
        "AZURE_TENANT_ID": idp.tenant_id,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.blueprint.secret or "",
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        "AZURE_ADDITIONALLY_ALLOWED_TENANTS": idp.second_tenant_id,
    }
    with pytest.raises(ConfigurationError, match="AADSTS700016"):
        AgentIdentityOnBehalfOf.from_env(env)


async def test_the_agent_identitys_own_tenant_is_accepted_in_any_case(
    idp: EntraEmulator,
) -> None:
    source = agent_id(idp, allowed_tenants=[idp.tenant_id.upper()])
    chain = TokenChain([source])
    try:
        with bind_caller(token=idp.user_token("alice", audience=idp.blueprint.client_id)):
            assert (await chain.get_token_async(mcp_scope(idp))).token
    finally:
        chain.close()


@pytest.mark.parametrize("driver", ["sync", "async"])
async def test_consent_required_says_an_administrator_grants_an_inheritable_permission(
    idp: EntraEmulator, driver: str
) -> None:
    # carol never consented: Entra answers AADSTS65001 for the agent identity.
    chain = TokenChain([agent_id(idp)])
    token = idp.user_token("carol", audience=idp.blueprint.client_id)
    try:
        with bind_caller(token=token), pytest.raises(ConsentRequired) as info:
            await _get(chain, mcp_scope(idp), driver)
    finally:
        chain.close()
    error = info.value
    assert error.link is None  # no interactive consent for agent identities (AADSTS82014)
    assert error.code is not None
    assert error.code.code == 65001
    assert error.correlation_id
    fix = error.fix or ""
    assert "inheritable permission" in fix
    assert "administrator" in fix
    assert "consent link" not in fix
    assert "knownClientApplications" not in fix
    assert str(error).endswith(f"Fix: {fix}")


async def _get(chain: TokenChain, scopes: list[str], driver: str) -> None:
    if driver == "sync":
        chain.get_token(scopes)
    else:
        await chain.get_token_async(scopes)
