"""A platform user's grant is never served to a request whose token names another account.

A Foundry request carries the platform user id (``x-agent-user-id``, the grant's key) and a
token naming the user. A grant stored under a platform id was served to a request with that id
whatever account its token named: a header that did not come from the ingress, or someone
else's token, got the account's token. Such a request is now refused (a typed error; nothing
served from the store or the cache); the same account, or the platform id alone, is served.

The emulator over HTTPS, the broker on uvicorn, real MSAL; the sign-in through the broker.
"""

from __future__ import annotations

import time

import pytest

from _support.consent import ConsentEnv, consent_link, follow_link
from entra_passthrough import (
    Caller,
    ConsentRequired,
    TokenAcquisitionError,
    TokenChain,
    UnverifiedClaims,
)
from entra_passthrough._jwt import decode_unverified
from entra_passthrough.testing import User


def _foundry_caller(platform_id: str, user: User) -> Caller:
    claims = UnverifiedClaims(
        tid=user.tenant_id, oid=user.oid, upn=user.upn, aud="https://ai.azure.com"
    )
    return Caller(user_id=platform_id, claims=claims)


async def test_a_grant_is_served_only_to_its_own_account(consent_env: ConsentEnv) -> None:
    env = consent_env
    source, _ = env.make()
    chain = TokenChain([source])
    alice, guest = env.idp.users["alice"], env.idp.users["guest"]
    platform_id = f"mismatch-{time.monotonic_ns()}"
    try:
        page = await follow_link(
            env, await consent_link(source, env, _foundry_caller(platform_id, alice))
        )
        assert page.status_code == 200

        served = await chain.get_token_async(
            [env.mcp_scope], caller=_foundry_caller(platform_id, alice)
        )
        assert decode_unverified(served.token)["oid"] == alice.oid

        # The same platform id with a token naming another account: refused, from the store
        # and from the cache alike (alice's token is cached under that platform id now).
        for _ in range(2):
            with pytest.raises(TokenAcquisitionError) as info:
                await chain.get_token_async(
                    [env.mcp_scope], caller=_foundry_caller(platform_id, guest)
                )
            assert not isinstance(info.value, ConsentRequired)
            assert "another account" in str(info.value)
            assert info.value.fix
            assert served.token not in str(info.value)

        # A token naming only part of an account (an oid, or a tenant) is held to that part.
        for claims in (
            UnverifiedClaims(oid=guest.oid, aud="https://ai.azure.com"),
            UnverifiedClaims(tid=guest.tenant_id, aud="https://ai.azure.com"),
        ):
            with pytest.raises(TokenAcquisitionError, match="another account"):
                await chain.get_token_async(
                    [env.mcp_scope], caller=Caller(user_id=platform_id, claims=claims)
                )
        own = UnverifiedClaims(oid=alice.oid.upper(), aud="https://ai.azure.com")
        served_part = await chain.get_token_async(
            [env.mcp_scope], caller=Caller(user_id=platform_id, claims=own)
        )
        assert decode_unverified(served_part.token)["oid"] == alice.oid

        # The platform id alone (no token naming anyone) is trusted as before.
        alone = await chain.get_token_async([env.mcp_scope], caller=Caller(user_id=platform_id))
        assert decode_unverified(alone.token)["oid"] == alice.oid
    finally:
        chain.close()
