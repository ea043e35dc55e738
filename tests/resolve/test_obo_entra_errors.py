"""Entra answers mapped by OnBehalfOf: consent via idp.grant_consent, MFA claims, CAE."""

from __future__ import annotations

import pytest

from entra_passthrough import (
    ConsentRequired,
    InteractionRequired,
    TokenChain,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import decode, make_obo, mcp_scope, obo_posts


def test_sync_retry_after_grant_consent_makes_a_real_post(idp: EntraEmulator) -> None:
    chain = TokenChain([make_obo(idp)])
    token = idp.user_token("carol", audience=idp.agent.client_id, extra_claims={"uti": "sync"})
    try:
        with bind_caller(token=token):
            with pytest.raises(ConsentRequired) as info:
                chain.get_token(mcp_scope(idp))
            assert info.value.code is not None
            assert info.value.code.code == 65001
            assert info.value.link is not None
            idp.grant_consent(
                "carol", idp.agent.client_id, [f"{idp.mcp.app_id_uri}/access_as_user"]
            )
            before = obo_posts(idp)
            result = chain.get_token(mcp_scope(idp))
            assert obo_posts(idp) - before == 1
        assert decode(result.token)["oid"] == idp.users["carol"].oid
    finally:
        idp.revoke_consent("carol", idp.agent.client_id)
        chain.close()


async def test_mfa_challenge_carries_claims(idp: EntraEmulator) -> None:
    chain = TokenChain([make_obo(idp)])
    dave = idp.user_token("dave", audience=idp.agent.client_id)
    with bind_caller(token=dave), pytest.raises(InteractionRequired) as info:
        await chain.get_token_async(mcp_scope(idp))
    assert info.value.claims is not None
    assert "capolids" in info.value.claims
    chain.close()


async def test_client_capabilities_get_their_own_msal_app(idp: EntraEmulator) -> None:
    obo = make_obo(idp)
    chain = TokenChain([obo])
    with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
        plain = await chain.get_token_async(mcp_scope(idp))
        cae = await chain.get_token_async(mcp_scope(idp), client_capabilities=["CP1"])
    assert plain.cache_key != cae.cache_key
    assert len(obo.msal_apps()) == 2
    assert decode(cae.token)["oid"] == idp.users["alice"].oid
    chain.close()
