"""The consent flow end to end: real MSAL, the emulator over HTTPS, the broker over HTTPS."""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import httpx2
import pytest

from _support.consent import (
    ConsentEnv,
    consent_link,
    follow_link,
    platform_caller,
    revoke_ticket,
    submit_form_post,
    verified_caller,
)
from entra_passthrough import ConsentRequired, TokenRequest, UserKey
from entra_passthrough._grants import grant_key
from entra_passthrough._jwt import decode_unverified


async def test_consent_then_silent_tokens_naming_the_user(consent_env: ConsentEnv) -> None:
    env = consent_env
    alice = env.idp.users["alice"]
    source, _ = env.make()
    caller = platform_caller("foundry-user-alice", upn=alice.upn)
    request = TokenRequest(scopes=(env.mcp_scope,), caller=caller)

    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(request)
    link = info.value.link
    assert link is not None
    assert link.startswith(f"{env.base}/start?t=")
    assert info.value.server_label == "mcp"
    assert info.value.source == "delegated"
    # the link is safe to show: no user id, no upn, no secret
    for secret in ("foundry-user-alice", alice.upn, alice.oid, env.app.secret):
        assert secret not in link
    for issued in env.idp.issued():
        assert issued not in link

    page = await follow_link(env, link)
    assert page.status_code == 200, page.text
    assert "You are signed in" in page.text
    assert "return to the chat" in page.text
    assert str(page.url).startswith(env.redirect_uri)

    result = await source.get_token_async(request)
    assert result is not None
    assert result.kind == "user"
    assert result.source == "delegated"
    claims = decode_unverified(result.token)
    assert claims["oid"] == alice.oid
    assert claims["aud"] == env.idp.mcp.client_id
    assert result.token not in repr(result)

    # the protected API sees alice
    async with httpx2.AsyncClient(verify=env.ssl_context()) as client:
        answer = await client.get(
            f"https://127.0.0.1:{env.port}/whoami",
            headers={"Authorization": f"Bearer {result.token}"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["oid"] == alice.oid
    assert answer.json()["upn"] == alice.upn

    # nothing readable in the store: hashed keys, sealed values
    store = source.grants.store
    for key, (value, _, _) in store._data.items():  # type: ignore[attr-defined]
        assert "foundry-user-alice" not in key
        assert alice.oid not in key
        for secret in env.idp.issued():
            assert secret.encode() not in value


async def test_verified_identity_key_and_cache_partition(consent_env: ConsentEnv) -> None:
    env = consent_env
    bob = env.idp.users["bob"]
    source, _ = env.make()
    caller = verified_caller(bob.tenant_id, bob.oid)
    request = TokenRequest(scopes=(env.mcp_scope,), caller=caller)
    partition = source.cache_partition(request)
    assert partition is not None
    assert bob.oid not in "".join(partition)
    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(request)
    assert info.value.link is not None
    # the verified key gives a login hint? no upn in verified claims: the user types it.
    async with env.browser() as browser:
        start = await browser.get(info.value.link, follow_redirects=False)
        assert start.status_code == 302
        authorize = start.headers["location"]
        assert "code_challenge_method=S256" in authorize
        assert "nonce=" in authorize
        assert f"domain_hint={bob.tenant_id}" in authorize
        authorize += "&" + urllib.parse.urlencode({"login_hint": bob.upn})
        page = await submit_form_post(browser, await browser.get(authorize))
    assert page.status_code == 200, page.text
    result = await source.get_token_async(request)
    assert result is not None
    assert decode_unverified(result.token)["oid"] == bob.oid


async def test_no_key_means_not_applicable(consent_env: ConsentEnv) -> None:
    source, _ = consent_env.make()
    from entra_passthrough import Caller, UnverifiedClaims

    forged = Caller(claims=UnverifiedClaims(tid="t", oid="o"))
    assert await source.get_token_async(TokenRequest(scopes=("x",), caller=forged)) is None
    assert await source.get_token_async(TokenRequest(scopes=("x",), caller=None)) is None
    assert source.cache_partition(TokenRequest(scopes=("x",), caller=forged)) is None


async def _consented(env: ConsentEnv, user: str, user_id: str):  # type: ignore[no-untyped-def]
    source, broker = env.make()
    u = env.idp.users[user]
    caller = platform_caller(user_id, upn=u.upn)
    request = TokenRequest(scopes=(env.mcp_scope,), caller=caller)
    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(request)
    assert info.value.link is not None
    page = await follow_link(env, info.value.link)
    assert page.status_code == 200, page.text
    return source, broker, request, page


async def test_fifty_concurrent_calls_make_one_refresh(consent_env: ConsentEnv) -> None:
    env = consent_env
    source, _, request, _ = await _consented(env, "pat", "foundry-user-pat")
    before = env.idp.stats()["grants"].get("refresh_token", 0)
    results = await asyncio.gather(*(source.get_token_async(request) for _ in range(50)))
    after = env.idp.stats()["grants"].get("refresh_token", 0)
    assert after - before == 1
    assert len({r.token for r in results if r is not None}) == 1


async def test_replicas_sharing_a_store_never_spend_a_refresh_token_twice(
    consent_env: ConsentEnv,
) -> None:
    env = consent_env
    source, _, request, _ = await _consented(env, "quinn", "foundry-user-quinn")
    replica, _ = env.make(store=source.grants.store, keyring=source.keyring)  # type: ignore[arg-type]
    env.make(store=source.grants.store, keyring=source.keyring)  # type: ignore[arg-type]
    before = env.idp.stats()["grants"].get("refresh_token", 0)
    results = await asyncio.gather(
        *(s.get_token_async(request) for s in (source, replica) for _ in range(20))
    )
    after = env.idp.stats()["grants"].get("refresh_token", 0)
    assert all(r is not None for r in results)
    assert after - before == 2  # one per replica: the lease serialised them
    found = await source.grants.get_grant(UserKey.from_caller(request.caller).hashed)  # type: ignore[union-attr]
    assert found is not None
    assert found[0].lease_owner is None


async def test_sign_out_then_consent_required(consent_env: ConsentEnv) -> None:
    env = consent_env
    source, _, request, page = await _consented(env, "alice", "foundry-user-alice-2")
    assert await source.get_token_async(request) is not None
    ticket = revoke_ticket(page.text)
    async with env.browser() as browser:
        # a cross-site POST is refused, and revokes nothing
        refused = await browser.post(
            f"{env.base}/revoke",
            data={"t": ticket},
            headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert refused.status_code == 400
        assert await source.get_token_async(request) is not None
        done = await browser.post(
            f"{env.base}/revoke",
            data={"t": ticket},
            headers={"Origin": f"https://127.0.0.1:{env.port}"},
        )
    assert done.status_code == 200  # the emulator's signed-out page after its logout
    assert "/oauth2/v2.0/logout" in str(done.url)
    with pytest.raises(ConsentRequired):
        await source.get_token_async(request)


async def test_revoked_at_entra_means_consent_required(consent_env: ConsentEnv) -> None:
    env = consent_env
    source, _, request, _ = await _consented(env, "rita", "foundry-user-rita")
    assert await source.get_token_async(request) is not None
    env.idp.revoke_refresh_tokens("rita")
    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(request)
    assert info.value.code is not None
    assert info.value.code.code == 50173
    key = UserKey.from_caller(request.caller)
    assert key is not None
    assert await source.grants.get_grant(key.hashed) is None


async def test_signout_link_page_has_no_side_effect(consent_env: ConsentEnv) -> None:
    env = consent_env
    source, _, request, _ = await _consented(env, "alice", "foundry-user-alice-3")
    key = UserKey.from_caller(request.caller)
    assert key is not None
    async with env.browser() as browser:
        page = await browser.get(source.signout_link(key))
    assert page.status_code == 200
    assert "Sign out" in page.text
    assert await source.grants.get_grant(key.hashed) is not None


async def test_unconsented_scope_asks_again_and_keeps_the_grant(consent_env: ConsentEnv) -> None:
    env = consent_env
    source, _, request, _ = await _consented(env, "alice", "foundry-user-alice-4")
    other = TokenRequest(
        scopes=(f"{env.idp.legacy_api.app_id_uri}/.default",), caller=request.caller
    )
    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(other)
    assert info.value.code is not None
    assert info.value.code.code == 65001
    assert info.value.link is not None
    # the grant still serves the scopes it covers
    assert await source.get_token_async(request) is not None


async def test_claims_challenge_goes_into_the_link(consent_env: ConsentEnv) -> None:
    env = consent_env
    source, _ = env.make()
    caller = platform_caller("claims-user", upn=env.idp.users["alice"].upn)
    claims = '{"access_token":{"acrs":{"essential":true,"value":"c1"}}}'
    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(
            TokenRequest(scopes=(env.mcp_scope,), caller=caller, claims=claims)
        )
    assert info.value.link is not None
    async with env.browser() as browser:
        start = await browser.get(info.value.link, follow_redirects=False)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(start.headers["location"]).query))
    assert query["claims"] == claims
    assert query["response_mode"] == "form_post"
    assert query["code_challenge_method"] == "S256"
    assert query["login_hint"] == env.idp.users["alice"].upn
    cookie = start.headers["set-cookie"]
    for attribute in ("HttpOnly", "Secure", "SameSite=none", "Path=/", "__Host-"):
        assert attribute.lower() in cookie.lower()
    assert start.headers["cache-control"] == "no-store"


async def test_a_cancelled_leader_does_not_fail_its_waiters(consent_env: ConsentEnv) -> None:
    env = consent_env
    source, _, request, _ = await _consented(env, "pat", "foundry-user-pat-2")
    env.idp.token_latency = 0.3
    try:
        leader = asyncio.create_task(source.get_token_async(request))
        for _ in range(1000):  # until the leader's flight is registered (bounded)
            if source._flights:
                break
            await asyncio.sleep(0.001)
        assert source._flights
        waiters = [asyncio.create_task(source.get_token_async(request)) for _ in range(5)]
        for _ in range(5):
            await asyncio.sleep(0)  # the waiters reach the shared flight
        leader.cancel()
        results = await asyncio.gather(*waiters)
    finally:
        env.idp.token_latency = 0.0
    assert all(r is not None for r in results)
    assert leader.cancelled()
    key = UserKey.from_caller(request.caller)
    assert key is not None
    found = await source.grants.get_grant(key.hashed)
    assert found is not None
    assert found[0].lease_owner is None


async def test_key_rotation_keeps_links_and_grants_working(consent_env: ConsentEnv) -> None:
    import base64

    from entra_passthrough import Keyring

    env = consent_env
    source, _, request, _ = await _consented(env, "alice", "foundry-user-alice-rot")
    old = source.keyring
    pending = await _pending_link(source, env)
    old_b64 = base64.urlsafe_b64encode(old.keys[old.current]).decode()
    new_b64 = base64.urlsafe_b64encode(b"n" * 32).decode()
    rotated = Keyring.from_string(f"new:{new_b64},{old.current}:{old_b64}")
    store = source.grants.store
    source2, _ = env.make(store=store, keyring=rotated)  # type: ignore[arg-type]
    # the grant sealed with the old key is still served, then re-sealed with the new one
    assert await source2.get_token_async(request) is not None
    key = UserKey.from_caller(request.caller)
    assert key is not None
    raw = await store.get(grant_key(source2.client.client_id, key.hashed))
    assert raw is not None
    assert raw.value.startswith(b"new.")
    # a link minted before the rotation still works
    page = await follow_link(env, pending)
    assert page.status_code == 200, page.text


async def _pending_link(source: Any, env: ConsentEnv) -> str:
    caller = platform_caller("foundry-user-bob-rot", upn=env.idp.users["bob"].upn)
    return await consent_link(source, env, caller)


async def test_a_cancelled_leader_still_finishes_its_refresh_once(consent_env: ConsentEnv) -> None:
    # The leader's refresh is already in flight at Entra when its task is cancelled (a client
    # went away): it must finish and store the rotated refresh token, and the waiters must
    # share it, not spend the same refresh token again.
    env = consent_env
    source, _, request, _ = await _consented(env, "pat", "foundry-user-pat-3")
    key = UserKey.from_caller(request.caller)
    assert key is not None
    env.idp.token_latency = 0.3
    before = env.idp.stats()["grants"].get("refresh_token", 0)
    arrived = env.idp.stats()["endpoints"]["token"]  # counted on arrival, before the latency
    try:
        leader = asyncio.create_task(source.get_token_async(request))
        for _ in range(1000):  # until the refresh request is at the emulator (bounded)
            if env.idp.stats()["endpoints"]["token"] > arrived:
                break
            await asyncio.sleep(0.002)
        assert not leader.done()
        waiters = [asyncio.create_task(source.get_token_async(request)) for _ in range(3)]
        for _ in range(5):
            await asyncio.sleep(0)
        leader.cancel()
        results = await asyncio.gather(*waiters)
    finally:
        env.idp.token_latency = 0.0
    assert leader.cancelled()
    assert all(r is not None for r in results)
    assert env.idp.stats()["grants"].get("refresh_token", 0) - before == 1
    assert len({r.token for r in results if r is not None}) == 1
    found = await source.grants.get_grant(key.hashed)
    assert found is not None
    assert found[0].lease_owner is None
