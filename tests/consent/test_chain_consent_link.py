"""[OnBehalfOf, DelegatedConsent], the hosted agent's chain: a user who never consented to the
agent is refused by OBO (AADSTS65001, a consent request whose link is Entra's own authorize page)
and has no grant yet. The link the chain raises is the consent broker's: the sign-in that stores
the grant the fallback then uses. Real MSAL, the emulator over HTTPS."""

from __future__ import annotations

import pytest

from _support.consent import ConsentEnv
from entra_passthrough import Caller, ConsentRequired, OnBehalfOf, Policy, TokenChain


async def test_the_consent_fallbacks_link_is_the_one_the_chain_raises(
    consent_env: ConsentEnv,
) -> None:
    env = consent_env
    delegated, _ = env.make()
    http = env.idp.msal_http_client()
    obo = OnBehalfOf(
        client_id=env.idp.agent.client_id,
        client_secret=env.idp.agent.secret,
        tenant_id=env.idp.tenant_id,
        authority_host=env.idp.url,
        http_client=http,
    )
    chain = TokenChain([obo, delegated], policy=Policy.USER_ONLY)
    carol = env.idp.user_token("carol", audience=env.idp.agent.client_id)  # never consented
    caller = Caller.from_headers(
        [
            (b"authorization", f"Bearer {carol}".encode()),
            (b"x-agent-user-id", b"foundry-user-carol"),
        ]
    )
    try:
        with pytest.raises(ConsentRequired) as info:
            await chain.get_token_async([env.mcp_scope], caller=caller)
    finally:
        chain.close()
        http.close()
    assert info.value.source == "delegated"
    assert info.value.link is not None
    assert info.value.link.startswith(f"{env.base}/start?t=")
