"""OnBehalfOf with real MSAL against the emulator: audiences, counts, isolation, consent."""

from __future__ import annotations

import asyncio

import msal
import pytest
import requests

from entra_passthrough import (
    AssertionAudienceMismatch,
    AssertionExpired,
    ConsentRequired,
    IdentityKind,
    SourceUnavailable,
    TenantNotAllowed,
    TokenChain,
    bind_caller,
)
from entra_passthrough.testing import FOUNDRY_AUDIENCE, EntraEmulator

from .conftest import decode, make_obo, mcp_scope, obo_posts, session, token_posts


async def test_obo_token_is_for_the_mcp_app_and_the_user(idp: EntraEmulator) -> None:
    chain = TokenChain([make_obo(idp)])
    alice = idp.users["alice"]
    with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
        result = await chain.get_token_async(mcp_scope(idp))
    claims = decode(result.token)
    assert claims["aud"] == idp.mcp.client_id
    assert claims["oid"] == alice.oid
    assert claims["tid"] == alice.tenant_id
    assert "access_as_user" in claims["scp"].split()
    assert "roles" not in claims
    assert result.kind is IdentityKind.USER
    assert result.source == "obo"
    chain.close()


async def test_obo_accepts_the_app_id_uri_audience(idp: EntraEmulator) -> None:
    chain = TokenChain([make_obo(idp)])
    token = idp.user_token("bob", audience=idp.agent.app_id_uri, version=1)
    with bind_caller(token=token):
        result = chain.get_token(mcp_scope(idp))
    assert decode(result.token)["oid"] == idp.users["bob"].oid
    chain.close()


async def test_64_concurrent_cold_requests_make_one_post(idp: EntraEmulator) -> None:
    idp.token_latency = 0.05
    chain = TokenChain([make_obo(idp)])
    token = idp.user_token("alice", audience=idp.agent.client_id)
    before = obo_posts(idp)

    async def one() -> str:
        with bind_caller(token=token):
            return (await chain.get_token_async(mcp_scope(idp))).token

    tokens = await asyncio.gather(*(one() for _ in range(64)))
    assert obo_posts(idp) - before == 1
    assert len(set(tokens)) == 1
    chain.close()


async def test_two_users_never_get_each_others_token(idp: EntraEmulator) -> None:
    chain = TokenChain([make_obo(idp)])
    users = {name: idp.user_token(name, audience=idp.agent.client_id) for name in ("alice", "bob")}

    async def one(name: str) -> tuple[str, str]:
        with bind_caller(token=users[name]):
            result = await chain.get_token_async(mcp_scope(idp))
        return name, decode(result.token)["oid"]

    outcomes = await asyncio.gather(*(one(n) for _ in range(16) for n in ("alice", "bob")))
    for name, oid in outcomes:
        assert oid == idp.users[name].oid
    chain.close()


async def test_consent_then_immediate_retry_succeeds(idp: EntraEmulator) -> None:
    # Contrast: a plain MSAL app (default http_cache) answers the retry from its cache.
    plain = msal.ConfidentialClientApplication(
        idp.agent.client_id,
        client_credential=idp.agent.secret,
        authority=f"{idp.url}/{idp.tenant_id}",
        instance_discovery=False,
        http_client=session(idp),
    )
    carol_token = idp.user_token("carol", audience=idp.agent.client_id)
    chain = TokenChain([make_obo(idp, consent_redirect_uri="http://localhost/callback")])
    try:
        first = plain.acquire_token_on_behalf_of(carol_token, mcp_scope(idp))
        assert 65001 in first["error_codes"]

        with bind_caller(token=carol_token):
            before = obo_posts(idp)
            with pytest.raises(ConsentRequired) as info:
                await chain.get_token_async(mcp_scope(idp))
            assert obo_posts(idp) - before == 1
            link = info.value.link
            assert link is not None
            assert carol_token not in str(info.value)
            assert "prompt=consent" in link
            assert "login_hint=carol" in link
            # The user follows the link and accepts (headless: emulator_consent=accept).
            answer = requests.get(
                link + "&emulator_consent=accept",
                verify=idp.ca_file,
                allow_redirects=False,
                timeout=10,
            )
            assert answer.status_code == 302
            assert answer.headers["location"].startswith("http://localhost/callback?code=")

            before = obo_posts(idp)
            result = await chain.get_token_async(mcp_scope(idp))  # immediately
            assert obo_posts(idp) - before == 1  # a real POST, not MSAL's cached 400
        assert decode(result.token)["oid"] == idp.users["carol"].oid

        before = obo_posts(idp)
        stale = plain.acquire_token_on_behalf_of(carol_token, mcp_scope(idp))
        assert obo_posts(idp) == before  # MSAL served its cached 400: no request
        assert 65001 in stale["error_codes"]
    finally:
        idp.revoke_consent("carol", idp.agent.client_id)
        chain.close()


@pytest.mark.parametrize("case", ["foundry", "expired", "guest-tenant"])
async def test_unusable_assertions_make_zero_posts(idp: EntraEmulator, case: str) -> None:
    chain = TokenChain([make_obo(idp)])
    if case == "foundry":
        token = idp.user_token("alice", audience=FOUNDRY_AUDIENCE)
        expected: type[Exception] = AssertionAudienceMismatch
    elif case == "expired":
        token = idp.user_token("alice", audience=idp.agent.client_id, lifetime=-60)
        expected = AssertionExpired
    else:
        token = idp.user_token("guest", audience=idp.agent.client_id)
        expected = TenantNotAllowed
    before = token_posts(idp)
    with bind_caller(token=token) as caller:
        if case == "expired":
            caller.not_after = None  # keep the caller active: the assertion itself is expired
        with pytest.raises(expected) as info:
            await chain.get_token_async(mcp_scope(idp))
    assert token_posts(idp) == before
    assert token not in str(info.value)
    if case == "foundry":
        assert "Foundry" in str(info.value)
    chain.close()


async def test_guest_tenant_allowed_uses_the_callers_tenant(idp: EntraEmulator) -> None:
    chain = TokenChain([make_obo(idp, allowed_tenants=[idp.tenant_id, idp.second_tenant_id])])
    with bind_caller(token=idp.user_token("guest", audience=idp.agent.client_id)):
        result = await chain.get_token_async(mcp_scope(idp))
    claims = decode(result.token)
    assert claims["tid"] == idp.second_tenant_id
    assert claims["oid"] == idp.users["guest"].oid
    chain.close()


async def test_msal_cache_does_not_grow_with_users(idp: EntraEmulator) -> None:
    obo = make_obo(idp)
    chain = TokenChain([obo])
    for i in range(200):
        token = idp.user_token(
            "alice" if i % 2 else "bob",
            audience=idp.agent.client_id,
            extra_claims={"uti": f"distinct-{i}"},
        )
        with bind_caller(token=token):
            await chain.get_token_async(mcp_scope(idp))
    assert len(chain.cache) == 200  # our cache: one entry per assertion (bounded LRU)
    apps = obo.msal_apps()
    assert len(apps) == 1
    cache = apps[0].token_cache
    for kind in (
        msal.TokenCache.CredentialType.ACCESS_TOKEN,
        msal.TokenCache.CredentialType.REFRESH_TOKEN,
        msal.TokenCache.CredentialType.ID_TOKEN,
        msal.TokenCache.CredentialType.ACCOUNT,
    ):
        assert list(cache.search(kind)) == []
    # MSAL's http_cache keeps no POST answers either.
    http_cache = apps[0].http_client._expiring_mapping._mapping
    assert not [k for k in http_cache if isinstance(k, str) and k.startswith("POST ")]
    chain.close()


async def test_cache_bounded_and_errors_not_cached(idp: EntraEmulator) -> None:
    from entra_passthrough import Timeouts, TokenCache

    # No transport retry or negative cache here (tests/faults covers those): this is the
    # token cache's rule that an error is shared by one acquisition and never cached.
    no_retry = Timeouts(retries=0, negative_ttl=0)
    chain = TokenChain([make_obo(idp, timeouts=no_retry)], cache=TokenCache(max_entries=3))
    tokens = [
        idp.user_token("alice", audience=idp.agent.client_id, extra_claims={"uti": f"b{i}"})
        for i in range(5)
    ]
    for token in tokens:
        with bind_caller(token=token):
            chain.get_token(mcp_scope(idp))
    assert len(chain.cache) == 3

    idp.inject_fault("token", status=503, count=1)
    token = idp.user_token("bob", audience=idp.agent.client_id, extra_claims={"uti": "fault"})
    idp.token_latency = 0.05
    before = obo_posts(idp) + idp.stats()["endpoints"]["token"]

    async def one() -> object:
        with bind_caller(token=token):
            try:
                return await chain.get_token_async(mcp_scope(idp))
            except Exception as exc:
                return exc

    outcomes = await asyncio.gather(*(one() for _ in range(8)))
    assert all(isinstance(o, SourceUnavailable) for o in outcomes)
    assert "HTTP 503" in str(outcomes[0])
    assert len({id(o) for o in outcomes}) == 1  # one acquisition, its error shared
    assert idp.stats()["endpoints"]["token"] + obo_posts(idp) - before == 1
    with bind_caller(token=token):
        ok = await chain.get_token_async(mcp_scope(idp))  # not cached: a new, successful try
    assert decode(ok.token)["oid"] == idp.users["bob"].oid
    chain.close()


async def test_event_loop_not_blocked_during_cold_obos(idp: EntraEmulator) -> None:
    idp.token_latency = 0.2
    chain = TokenChain([make_obo(idp)])
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    async def one(i: int) -> None:
        token = idp.user_token("alice", audience=idp.agent.client_id, extra_claims={"uti": f"l{i}"})
        with bind_caller(token=token):
            await chain.get_token_async(mcp_scope(idp))

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = ticks
    await asyncio.gather(*(one(i) for i in range(20)))
    during = ticks - start
    stop.set()
    await task
    # 20 OBOs at 0.2 s each on 8 workers take >= 0.6 s; a blocked loop would not tick at all.
    assert during >= 10
    chain.close()


async def test_unreachable_entra_is_typed(idp: EntraEmulator) -> None:
    chain = TokenChain([make_obo(idp, authority_host="https://127.0.0.1:9")])  # nothing there
    token = idp.user_token("alice", audience=idp.agent.client_id, extra_claims={"uti": "down"})
    with bind_caller(token=token), pytest.raises(SourceUnavailable) as info:
        await chain.get_token_async(mcp_scope(idp))
    assert token not in str(info.value)
    assert idp.agent.secret not in str(info.value)
    chain.close()
