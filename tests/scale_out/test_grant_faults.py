"""Consent grants in a real redis-server that dies and comes back under load: calls fail typed
while it is down (never the app identity), work again after it is back, and no refresh token is
ever redeemed twice - even when Redis dies between redeeming one and storing its successor."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from azure.core.credentials import AccessToken

from _support.consent import ConsentEnv, platform_caller
from entra_passthrough import (
    AzureCredential,
    ConsentRequired,
    Policy,
    SourceUnavailable,
    TokenChain,
)
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore, SharedTokenCache

from ._broker import StandaloneBroker, consent
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


@dataclass
class _Replicas:
    replicas: list[DelegatedConsent]
    redeemed: list[str]  # every refresh token either replica redeemed
    killed: list[bool]  # non-empty once replica 0's first refresh killed Redis


@contextlib.asynccontextmanager
async def _two_replicas(env: ConsentEnv, server: RedisServer) -> AsyncIterator[_Replicas]:
    """Two replicas over one real Redis, and a broker; the first refresh token replica 0
    redeems kills Redis right after Entra answered, before the successor is stored."""
    keyring = Keyring.generate()
    # A killed server refuses connections at once, so the timeout only bounds a slow answer: a
    # loaded CI machine's fsync (appendfsync always) took more than 0.5 s after the restart.
    stores = [RedisStore.from_url(server.url, timeout=3.0) for _ in range(2)]
    broker: StandaloneBroker | None = None
    try:
        replicas = [env.make(store=s, keyring=keyring)[0] for s in stores]  # type: ignore[arg-type]
        broker = StandaloneBroker(env, RedisStore.from_url(server.url), keyring)
        found = _Replicas(replicas, [], [])

        def kill_once() -> None:
            if not found.killed:
                found.killed.append(True)
                server.kill()

        _spy_refreshes(replicas[0], found.redeemed, kill_once)
        _spy_refreshes(replicas[1], found.redeemed)
        yield found
    finally:
        for store in stores:
            await store.aclose()
        if broker is not None:
            await broker.aclose()


async def test_killed_and_restarted_under_load_no_refresh_token_twice(
    consent_env: ConsentEnv, fresh_redis: RedisServer
) -> None:
    env = consent_env
    fresh_redis.start()
    async with _two_replicas(env, fresh_redis) as two:
        replicas, redeemed, killed = two.replicas, two.redeemed, two.killed
        request = await consent(env, replicas[1], "pat", "chat-pat-faults")
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
        request = await consent(env, source, "quinn", "chat-quinn-lost")
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
    async with _two_replicas(env, fresh_redis) as two:
        replicas, redeemed, killed = two.replicas, two.redeemed, two.killed
        user_a = await consent(env, replicas[1], "rita", "chat-rita-outage")
        user_b = await consent(env, replicas[1], "pat", "chat-pat-outage")
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


def _documented_acl() -> list[str]:
    """The least-privilege ACL line docs/scale-out.md gives, as ACL SETUSER arguments."""
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs" / "scale-out.md"
    line = next(x for x in docs.read_text().splitlines() if x.startswith("ACL SETUSER agent "))
    return line.split()[3:]  # after "ACL SETUSER agent"


async def test_the_documented_acl_serves_grants_and_the_shared_cache(
    consent_env: ConsentEnv, redis_server: RedisServer
) -> None:
    """The ACL docs/scale-out.md gives is enough for everything the library does: consent
    through the broker, a refresh (its lease is a compare-and-set script), the shared cache's
    lease, write and release, async and blocking; a user without the scripting commands gets a
    typed error naming the ACL, never the app identity."""
    from entra_passthrough import Caller, TokenCache

    from ._server import obo_chain

    env = consent_env
    admin = redis_server.client()
    try:
        admin.execute_command("SCRIPT", "FLUSH")  # the scripts are loaded by this user
        args = _documented_acl()
        admin.execute_command("ACL", "SETUSER", "agent", *args)
        no_scripts = [a for a in args if not a.startswith(("+eval", "+script"))]
        admin.execute_command("ACL", "SETUSER", "agent-ro", *no_scripts)
    finally:
        admin.close()
    password = next(a for a in args if a.startswith(">"))[1:]
    url = f"redis://agent:{password}@127.0.0.1:{redis_server.port}/0"
    keyring = Keyring.generate()
    store, l2 = RedisStore.from_url(url), RedisStore.from_url(url)
    limited = RedisStore.from_url(url.replace("agent:", "agent-ro:"))
    broker = StandaloneBroker(env, RedisStore.from_url(url), keyring)
    shared = SharedTokenCache(l2, keyring, sync_store=l2.sync())
    chain = obo_chain(env.idp, env.idp.msal_http_client(), TokenCache(shared=shared))
    try:
        source = env.make(store=store, keyring=keyring)[0]  # type: ignore[arg-type]
        broker = StandaloneBroker(env, broker.store, keyring)  # env.make took the slot
        request = await consent(env, source, "pat", "chat-pat-acl")
        assert await source.get_token_async(request) is not None  # lease, refresh, write
        scopes = [f"{env.idp.mcp.app_id_uri}/.default"]
        for name in ("alice", "bob"):
            caller = Caller.from_token(env.idp.user_token(name, audience=env.idp.agent.client_id))
            assert await chain.get_token_async(scopes, caller=caller) is not None
        caller = Caller.from_token(env.idp.user_token("alice", audience=env.idp.agent.client_id))
        assert await asyncio.to_thread(chain.get_token, scopes, caller=caller) is not None
        assert (shared.misses, shared.failures) == (3, 0)
        without = env.make(store=limited, keyring=keyring)[0]  # type: ignore[arg-type]
        app = _AppCredential()
        fallback = TokenChain([without, AzureCredential(app)], policy=Policy.USER_OR_APP)
        with pytest.raises(SourceUnavailable, match="ACL does not allow"):
            await fallback.get_token_async([env.mcp_scope], caller=request.caller)
        assert app.calls == 0
    finally:
        chain.close()
        for made in (store, l2, limited):
            await made.aclose()
        await broker.aclose()


async def test_a_full_or_slow_grant_store_fails_typed_before_any_refresh(
    consent_env: ConsentEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis full (maxmemory, noeviction) or slow (every client paused): a call fails with the
    typed error that says which, the app identity never stands in, and no refresh token is
    redeemed (taking the refresh lease is a write: it fails first)."""
    env = consent_env
    server = RedisServer().start()
    keyring = Keyring.generate()
    store = RedisStore.from_url(server.url, timeout=0.5)
    broker = StandaloneBroker(env, RedisStore.from_url(server.url), keyring)
    # Paused, Redis answers none (CLIENT UNPAUSE included) until the pause ends: a long timeout.
    admin = redis.Redis.from_url(server.url, socket_timeout=30)
    try:
        source = env.make(store=store, keyring=keyring)[0]  # type: ignore[arg-type]
        broker = StandaloneBroker(env, broker.store, keyring)
        request = await consent(env, source, "quinn", "chat-quinn-full")
        redeemed: list[str] = []
        _spy_refreshes(source, redeemed)
        app = _AppCredential()
        chain = TokenChain([source, AzureCredential(app)], policy=Policy.USER_OR_APP)
        admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")
        try:
            with pytest.raises(SourceUnavailable, match="did not answer in time"):
                await chain.get_token_async([env.mcp_scope], caller=request.caller)
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        # Full: over maxmemory (noeviction) by far, so no freed buffer lets a write through.
        admin.set("ballast", b"z" * 3_000_000)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "2mb")
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            admin.set("probe", b"x")
        with pytest.raises(SourceUnavailable, match="full"):
            await chain.get_token_async([env.mcp_scope], caller=request.caller)
        assert (redeemed, app.calls) == ([], 0)
        admin.config_set("maxmemory", "0")  # room again: served, the grant untouched
        assert await chain.get_token_async([env.mcp_scope], caller=request.caller) is not None
        assert len(redeemed) == 1
    finally:
        admin.close()
        await store.aclose()
        await broker.aclose()
        server.stop()
