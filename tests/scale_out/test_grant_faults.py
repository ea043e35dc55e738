"""Consent grants in a real redis-server that dies and comes back under load: calls fail typed
while it is down (never the app identity), work again after it is back, and no refresh token is
ever redeemed twice - even when Redis dies between redeeming one and storing its successor."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from _support.consent import ConsentEnv, follow_link, platform_caller
from entra_passthrough import (
    AzureCredential,
    ConsentRequired,
    Policy,
    SourceUnavailable,
    TokenChain,
    TokenRequest,
)
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._broker import StandaloneBroker
from ._server import RedisServer, free_port


def _spy_refreshes(source: DelegatedConsent, redeemed: list[str], hook: Any = None) -> None:
    """Record every refresh token the source redeems at the emulator (our own method)."""
    original = source.client.refresh

    def refresh(refresh_token: str, *args: Any, **kwargs: Any) -> Any:
        redeemed.append(refresh_token)
        answer = original(refresh_token, *args, **kwargs)
        if hook is not None:
            hook()
        return answer

    source.client.refresh = refresh  # type: ignore[method-assign]


async def _consent(env: ConsentEnv, source: DelegatedConsent, user: str, chat_id: str) -> Any:
    u = env.idp.users[user]
    request = TokenRequest(scopes=(env.mcp_scope,), caller=platform_caller(chat_id, upn=u.upn))
    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(request)
    assert info.value.link is not None
    page = await follow_link(env, info.value.link)
    assert page.status_code == 200, page.text
    return request


async def test_killed_and_restarted_under_load_no_refresh_token_twice(
    consent_env: ConsentEnv, fresh_redis: RedisServer
) -> None:
    env = consent_env
    fresh_redis.start()
    keyring = Keyring.generate()
    stores = [RedisStore.from_url(fresh_redis.url, timeout=0.5) for _ in range(2)]
    broker: StandaloneBroker | None = None
    try:
        replicas = [env.make(store=s, keyring=keyring)[0] for s in stores]  # type: ignore[arg-type]
        broker = StandaloneBroker(env, RedisStore.from_url(fresh_redis.url), keyring)
        request = await _consent(env, replicas[1], "pat", "chat-pat-faults")
        redeemed: list[str] = []
        killed: list[bool] = []

        def kill_once() -> None:
            # Redis dies after Entra rotated the refresh token, before the new one is stored.
            if not killed:
                killed.append(True)
                fresh_redis.kill()

        _spy_refreshes(replicas[0], redeemed, kill_once)
        _spy_refreshes(replicas[1], redeemed)
        outcomes: Counter[str] = Counter()

        async def burst() -> list[Any]:
            results = await asyncio.gather(
                *(r.get_token_async(request) for r in replicas for _ in range(3)),
                return_exceptions=True,
            )
            for res in results:
                outcomes[type(res).__name__] += 1
            return results

        first = await replicas[0].get_token_async(request)  # redeems, then Redis dies
        assert first is not None  # the user still gets the token Entra issued
        assert killed
        down = await burst()
        assert all(isinstance(r, SourceUnavailable) for r in down), down
        fresh_redis.start()  # data kept (append-only file)
        for _ in range(3):
            after = await asyncio.wait_for(burst(), 60)
            assert all(getattr(r, "token", None) for r in after), after
        assert set(outcomes) == {"SourceUnavailable", "TokenResult"}
        assert len(redeemed) == len(set(redeemed)), "a refresh token was redeemed twice"
        assert len(redeemed) >= 4
    finally:
        for store in stores:
            await store.aclose()
        if broker is not None:
            await broker.aclose()


class _AppCredential:
    """The agent's own identity (an azure-identity style credential) that must never stand in."""

    def __init__(self) -> None:
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken("app-token", int(time.time()) + 3600)


async def test_grant_store_down_never_falls_back_to_the_app_identity(
    consent_env: ConsentEnv,
) -> None:
    env = consent_env
    dead = RedisStore.from_url(f"redis://:pw@127.0.0.1:{free_port()}/0", timeout=0.5)
    source, _ = env.make(store=dead, keyring=Keyring.generate())  # type: ignore[arg-type]
    app = _AppCredential()
    chain = TokenChain([source, AzureCredential(app)], policy=Policy.USER_OR_APP)
    try:
        with pytest.raises(SourceUnavailable, match="store is unavailable"):
            await chain.get_token_async([env.mcp_scope], caller=platform_caller("chat-down"))
        assert app.calls == 0
    finally:
        await dead.aclose()


async def test_restarted_with_its_data_lost_asks_for_consent_again(
    consent_env: ConsentEnv, fresh_redis: RedisServer
) -> None:
    env = consent_env
    fresh_redis.start()
    keyring = Keyring.generate()
    store = RedisStore.from_url(fresh_redis.url, timeout=0.5)
    source, _ = env.make(store=store, keyring=keyring)  # type: ignore[arg-type]
    broker = StandaloneBroker(env, RedisStore.from_url(fresh_redis.url), keyring)
    try:
        request = await _consent(env, source, "quinn", "chat-quinn-lost")
        assert await source.get_token_async(request) is not None
        fresh_redis.kill()
        fresh_redis.wipe()
        fresh_redis.start()
        with pytest.raises(ConsentRequired):  # the grant is gone: ask, never guess
            await source.get_token_async(request)
    finally:
        await store.aclose()
        await broker.aclose()


async def test_after_an_outage_longer_than_the_lease_the_holder_writes_back_first(
    consent_env: ConsentEnv, fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica 0 redeems user A's refresh token, then Redis dies before it stores the successor.
    Redis stays down longer than the refresh lease. Afterwards replica 1 is asked for user A
    first (the lease has run out) and replica 0 only for user B: replica 1 must honour the lease
    while replica 0, whose first store call writes back every rotated grant it holds, puts A's
    successor in place; A's redeemed refresh token is never redeemed again."""
    from entra_passthrough._sources import delegated

    env = consent_env
    fresh_redis.start()
    keyring = Keyring.generate()
    stores = [RedisStore.from_url(fresh_redis.url, timeout=0.5) for _ in range(2)]
    broker: StandaloneBroker | None = None
    try:
        replicas = [env.make(store=s, keyring=keyring)[0] for s in stores]  # type: ignore[arg-type]
        broker = StandaloneBroker(env, RedisStore.from_url(fresh_redis.url), keyring)
        user_a = await _consent(env, replicas[1], "rita", "chat-rita-outage")
        user_b = await _consent(env, replicas[1], "pat", "chat-pat-outage")
        redeemed: list[str] = []
        killed: list[bool] = []

        def kill_once() -> None:
            if not killed:
                killed.append(True)
                fresh_redis.kill()

        _spy_refreshes(replicas[0], redeemed, kill_once)
        _spy_refreshes(replicas[1], redeemed)
        monkeypatch.setattr(delegated, "LEASE_SECONDS", 0.5)  # the lease A's refresh takes
        assert await replicas[0].get_token_async(user_a) is not None  # redeemed; Redis died
        assert killed
        monkeypatch.setattr(delegated, "LEASE_SECONDS", 20.0)
        lease_over = time.time() + 0.6
        while time.time() < lease_over:  # bounded: the outage outlasts A's lease
            with pytest.raises(SourceUnavailable):  # replica 1 sees the outage
                await replicas[1].get_token_async(user_a)
            await asyncio.sleep(0.1)
        fresh_redis.start()  # data kept: A's record still holds the redeemed refresh token
        first = asyncio.create_task(replicas[1].get_token_async(user_a))
        await asyncio.wait({first}, timeout=2.0)  # without the fix it redeems at once
        assert await replicas[0].get_token_async(user_b) is not None  # writes A's back first
        assert (await asyncio.wait_for(first, 60)) is not None
        twice = sum(n > 1 for n in Counter(redeemed).values())  # counts only: no token shown
        assert twice == 0, f"{twice} refresh token(s) redeemed twice"
    finally:
        for store in stores:
            await store.aclose()
        if broker is not None:
            await broker.aclose()
