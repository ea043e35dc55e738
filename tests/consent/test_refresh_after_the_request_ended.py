"""Refresh-ahead of a delegated (consent) token started by a request that has since ended.

``CallerMiddleware`` ends a request's ``Caller`` when its response completes; the background
refresh a request starts runs after that. It acquired with that ended ``Caller``, for which
``DelegatedConsent`` does not apply (no one to act for): the refresh got nothing, and every
request from half the token's life on started another one (each through the shared cache's
lease) until the token ran out and one request waited for Entra. The acquisition now acts for
a copy of the caller taken while the request was active. Real components: the emulator, the
consent broker on loopback HTTPS, MSAL behind ``DelegatedConsent``."""

from __future__ import annotations

import time

import pytest

from _support.consent import ConsentEnv, follow_link, platform_caller
from entra_passthrough import ConsentRequired, Policy, TokenCache, TokenChain, TokenResult
from entra_passthrough._jwt import decode_unverified


class _Clock:
    """The cache's clock, moved into a token's refresh window without waiting for it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def _request(chain: TokenChain, env: ConsentEnv, user_id: str, upn: str) -> TokenResult:
    """One request of the user, as ``CallerMiddleware`` runs it: its own ``Caller``, ended as
    soon as the request returns (before any background work it started runs)."""
    caller = platform_caller(user_id, upn=upn)
    try:
        return await chain.get_token_async([env.mcp_scope], caller=caller)
    finally:
        caller.end()


async def test_a_refresh_started_by_an_ended_request_still_refreshes(
    consent_env: ConsentEnv,
) -> None:
    env = consent_env
    source, _ = env.make()
    clock = _Clock()
    cache = TokenCache(clock=clock)
    chain = TokenChain([source], policy=Policy.USER_ONLY, cache=cache)
    alice = env.idp.users["alice"]
    user_id = "refresh-after-end-alice"
    with pytest.raises(ConsentRequired) as needed:
        await _request(chain, env, user_id, alice.upn)
    assert needed.value.link is not None
    assert (await follow_link(env, needed.value.link)).status_code == 200
    posts = env.idp.stats()["grants"].get("refresh_token", 0)
    first = await _request(chain, env, user_id, alice.upn)
    assert env.idp.stats()["grants"].get("refresh_token", 0) - posts == 1
    # Into the refresh window (the last 300 s of an hour-long token, before its usable end).
    clock.offset = first.expires_on - time.time() - 200
    served = await _request(chain, env, user_id, alice.upn)
    assert served.token == first.token  # the request that starts the refresh does not wait
    await cache.wait_refreshes_async()
    refreshed = cache.stats()
    renewed = await _request(chain, env, user_id, alice.upn)
    assert renewed.fingerprint != first.fingerprint, "the refresh did not replace the token"
    assert decode_unverified(renewed.token)["oid"] == alice.oid
    assert env.idp.stats()["grants"].get("refresh_token", 0) - posts == 2
    assert refreshed.refreshes == 1
    assert refreshed.refresh_failures == 0
