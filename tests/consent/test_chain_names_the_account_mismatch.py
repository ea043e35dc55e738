"""[OnBehalfOf, DelegatedConsent], the hosted agent's chain: bob's Foundry token with carol's
platform user id (carol has consented under it). Refused, never served from carol's grant; the
error the chain raised was OBO's audience refusal, whose fix is "use DelegatedConsent" (already
in the chain), and DelegatedConsent's own refusal ("the consent stored for this platform user
belongs to another account") was dropped. The refusal specific to this user is now the one
raised. Real MSAL, the emulator over HTTPS, the broker's sign-in."""

from __future__ import annotations

import time

import pytest

from _support.consent import ConsentEnv, consent_link, follow_link
from entra_passthrough import (
    AssertionNotUsable,
    Caller,
    ConsentRequired,
    OnBehalfOf,
    Policy,
    TokenAcquisitionError,
    TokenChain,
)
from entra_passthrough._jwt import decode_unverified
from entra_passthrough.testing import FOUNDRY_AUDIENCE


def _foundry_request(token: str, platform_id: str) -> Caller:
    return Caller.from_headers(
        [
            (b"authorization", f"Bearer {token}".encode()),
            (b"x-agent-user-id", platform_id.encode()),
        ]
    )


async def test_the_account_mismatch_is_the_refusal_the_chain_raises(
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
    platform_id = f"foundry-carol-{time.monotonic_ns()}"
    carol = env.idp.user_token("alice", audience=FOUNDRY_AUDIENCE)
    bob = env.idp.user_token("guest", audience=FOUNDRY_AUDIENCE)
    try:
        # carol consents under her platform id (through the broker), and is then served.
        with pytest.raises(ConsentRequired):
            await chain.get_token_async(
                [env.mcp_scope], caller=_foundry_request(carol, platform_id)
            )
        link = await consent_link(delegated, env, _foundry_request(carol, platform_id))
        assert (await follow_link(env, link)).status_code == 200
        served = await chain.get_token_async(
            [env.mcp_scope], caller=_foundry_request(carol, platform_id)
        )
        assert decode_unverified(served.token)["oid"] == env.idp.users["alice"].oid

        # bob's Foundry token with carol's platform id: refused, and the refusal says why.
        with pytest.raises(TokenAcquisitionError) as info:
            await chain.get_token_async([env.mcp_scope], caller=_foundry_request(bob, platform_id))
    finally:
        chain.close()
        http.close()
    refused = info.value
    assert not isinstance(refused, (ConsentRequired, AssertionNotUsable)), repr(refused)
    assert refused.source == "delegated"
    assert "another account" in str(refused)
    assert refused.fix
    assert "x-agent-user-id" in refused.fix
    for secret in (served.token, carol, bob):
        assert secret not in str(refused)
