"""A wrong-audience user token given to ``AgentIdentityOnBehalfOf``: the refusal says the token
must be for the *blueprint* (``api://<blueprint>/<scope>`` or its client id), not "the OBO app"
or "your app's scope"; ``entra-passthrough doctor`` in Agent ID mode asks for a token for the
blueprint, not "for the agent app"."""

from __future__ import annotations

import time

import pytest

from _support.tokens import bare_jwt
from entra_passthrough import (
    AgentIdentityOnBehalfOf,
    AssertionAudienceMismatch,
    TokenChain,
    bind_caller,
)
from entra_passthrough._doctor import run
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope, session


@pytest.mark.parametrize("audience", ["agent", "https://ai.azure.com"])
async def test_the_refusal_names_the_blueprint(idp: EntraEmulator, audience: str) -> None:
    source = AgentIdentityOnBehalfOf(
        blueprint_client_id=idp.blueprint.client_id,
        agent_identity_id=idp.agent_identity.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.blueprint.secret,
        authority_host=idp.url,
        http_client=session(idp),
    )
    chain = TokenChain([source])
    wrong = idp.user_token(
        "alice", audience=idp.agent.client_id if audience == "agent" else audience
    )
    blueprint = idp.blueprint.client_id
    try:
        with bind_caller(token=wrong), pytest.raises(AssertionAudienceMismatch) as sync:
            chain.get_token(mcp_scope(idp))
        with bind_caller(token=wrong), pytest.raises(AssertionAudienceMismatch) as asyn:
            await chain.get_token_async(mcp_scope(idp))
        for info in (sync, asyn):
            text = str(info.value)
            assert "blueprint" in text
            assert "OBO app" not in text
            assert f"api://{blueprint}/" in (info.value.fix or "")
            assert info.value.code is not None
            assert info.value.code.code == 500131
            if audience != "agent":
                assert "Foundry" in text
    finally:
        chain.close()


def test_doctor_asks_for_a_token_for_the_blueprint(idp: EntraEmulator) -> None:
    env = {
        "AZURE_TENANT_ID": idp.tenant_id,
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID": idp.blueprint.client_id,
        "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": idp.agent_identity.client_id,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.blueprint.secret or "",
    }
    consent = {c.name: c for c in run(env, scopes=mcp_scope(idp))}["consent"]
    assert consent.status == "skip"
    assert "blueprint" in consent.detail
    assert "agent app" not in consent.detail
    assert idp.blueprint.client_id in consent.detail


@pytest.mark.parametrize(
    ("audience", "hinted"),
    [("https://contoso.example/blueprint", True), ("https://graph.microsoft.com", False)],
)
def test_a_custom_uri_refusal_names_accepted_audiences(
    idp: EntraEmulator, audience: str, hinted: bool
) -> None:
    """As for ``OnBehalfOf``: a custom Application ID URI of the blueprint works once listed
    in ``accepted_audiences``, so the fix names it first; never for Microsoft's resources."""
    source = AgentIdentityOnBehalfOf(
        blueprint_client_id=idp.blueprint.client_id,
        agent_identity_id=idp.agent_identity.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.blueprint.secret,
        authority_host=idp.url,
        http_client=session(idp),
    )
    chain = TokenChain([source])
    token = bare_jwt(
        aud=audience,
        tid=idp.tenant_id,
        oid="00000000-0000-0000-0000-00000000a11c",
        azp=idp.frontend.client_id,
        scp="access_as_user",
        exp=time.time() + 3600,
    )
    try:
        with bind_caller(token=token), pytest.raises(AssertionAudienceMismatch) as info:
            chain.get_token(mcp_scope(idp))
    finally:
        chain.close()
    fix = info.value.fix or ""
    assert ("accepted_audiences" in fix) is hinted
    assert "blueprint" in fix
