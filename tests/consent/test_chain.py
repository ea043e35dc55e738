"""DelegatedConsent inside a TokenChain: consent errors propagate, results are cached."""

from __future__ import annotations

import logging

import pytest

from _support.consent import ConsentEnv, follow_link, platform_caller
from entra_passthrough import (
    Caller,
    ConsentRequired,
    PolicyViolation,
    TokenChain,
    UnverifiedClaims,
)
from entra_passthrough._jwt import decode_unverified


async def test_chain_consent_then_cached(
    consent_env: ConsentEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = consent_env
    caplog.set_level(logging.DEBUG)
    source, _ = env.make()
    chain = TokenChain([source])
    alice = env.idp.users["alice"]
    caller = platform_caller("chain-alice", upn=alice.upn)
    with pytest.raises(ConsentRequired) as info:
        await chain.get_token_async([env.mcp_scope], caller=caller)
    assert info.value.link is not None
    page = await follow_link(env, info.value.link)
    assert page.status_code == 200
    before = env.idp.stats()["grants"].get("refresh_token", 0)
    first = await chain.get_token_async([env.mcp_scope], caller=caller)
    second = await chain.get_token_async([env.mcp_scope], caller=caller)
    assert first.token == second.token
    assert env.idp.stats()["grants"].get("refresh_token", 0) - before == 1
    assert decode_unverified(first.token)["oid"] == alice.oid
    # another platform user is another cache partition: no token of alice's
    with pytest.raises(ConsentRequired):
        await chain.get_token_async([env.mcp_scope], caller=platform_caller("chain-mallory"))
    # MSAL's own token cache stayed empty (neutralised)
    assert not list(source.client.app().token_cache.search("RefreshToken"))
    # nothing secret in any log line
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in env.idp.issued():
        assert secret not in text
    assert env.app.secret not in text


async def test_chain_explains_when_no_key(consent_env: ConsentEnv) -> None:
    source, _ = consent_env.make()
    chain = TokenChain([source])
    forged = Caller(claims=UnverifiedClaims(tid="t", oid="o"), presented=True)
    with pytest.raises(PolicyViolation, match="unverified token claims are never used"):
        await chain.get_token_async([consent_env.mcp_scope], caller=forged)


def test_sync_twin_from_a_worker_thread(consent_env: ConsentEnv) -> None:
    env = consent_env
    source, _ = env.make()
    chain = TokenChain([source])
    with pytest.raises(ConsentRequired):
        chain.get_token([env.mcp_scope], caller=platform_caller("sync-user"))


async def test_an_app_source_listed_first_never_stands_in_for_an_identified_user(
    consent_env: ConsentEnv,
) -> None:
    # user_or_app with the managed identity listed before DelegatedConsent: a caller known by
    # the platform's user id got the app's token and the grant was never asked for. User
    # sources are asked first; the app answers only a request with no user.
    from entra_passthrough import IdentityKind, ManagedIdentity, Policy

    env = consent_env
    source, _ = env.make()
    mi = ManagedIdentity.from_env(env.idp.mi_env())
    chain = TokenChain([mi, source], policy=Policy.USER_OR_APP)
    try:
        alice = env.idp.users["alice"]
        caller = platform_caller("app-first-alice", upn=alice.upn)
        # A scope both kinds can serve: the managed identity would answer it too.
        resource = [f"{env.idp.mcp.app_id_uri}/.default"]
        with pytest.raises(ConsentRequired) as info:  # no grant yet: the link, not the app
            await chain.get_token_async(resource, caller=caller)
        assert info.value.link is not None
        page = await follow_link(env, info.value.link)
        assert page.status_code == 200
        served = await chain.get_token_async(resource, caller=caller)
        assert served.kind is IdentityKind.USER
        assert decode_unverified(served.token)["oid"] == alice.oid
        nobody = await chain.get_token_async(resource, caller=None)
        assert nobody.kind is IdentityKind.APP  # the stand-in, for a request with no user
    finally:
        chain.close()
