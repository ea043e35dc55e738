"""A token the resource refused (401 invalid_token) is dropped from the shared cache too, over a
real redis-server with real OBO (MSAL against the emulator): the retry and every other replica
get a new token, a newer token another replica wrote is never dropped, and a replica whose
store failed the drop still never serves the refused token again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from entra_passthrough import Caller, EntraAuth, TokenCache, TokenChain, bind_caller
from entra_passthrough._jwt import fingerprint
from entra_passthrough._l2 import SharedTokenCache
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._server import RedisServer, free_port, obo_chain


def _obo_posts(idp: Any) -> int:
    return int(idp.stats()["grants"].get("on_behalf_of", 0))


@dataclass
class Replica:
    chain: TokenChain
    shared: SharedTokenCache
    cache: TokenCache


@dataclass
class Replicas:
    made: list[Replica]
    scopes: list[str]


def _replicas(
    idp: Any, stores: list[RedisStore], keyring: Keyring, **options: float
) -> tuple[list[Replica], list[Any]]:
    sessions = [idp.msal_http_client() for _ in stores]
    made = []
    for store, session in zip(stores, sessions, strict=True):
        shared = SharedTokenCache(store, keyring, sync_store=store.sync(), **options)
        cache = TokenCache(shared=shared)
        made.append(Replica(obo_chain(idp, session, cache), shared, cache))
    return made, sessions


@pytest.fixture
async def three(consent_env: Any, redis_server: RedisServer) -> AsyncIterator[Replicas]:
    """Three replicas (OBO chains, shared cache with the blocking twin) on one Redis."""
    idp = consent_env.idp
    namespace = f"inv{free_port()}:"
    stores = [RedisStore.from_url(redis_server.url, namespace=namespace) for _ in range(3)]
    made, sessions = _replicas(idp, stores, Keyring.generate())
    yield Replicas(made, [f"{idp.mcp.app_id_uri}/.default"])
    for replica in made:
        replica.chain.close()
    for session in sessions:
        session.close()
    for store in stores:
        await store.aclose()


def _caller(idp: Any, name: str) -> Caller:
    return Caller.from_token(idp.user_token(name, audience=idp.agent.client_id))


async def test_after_a_401_no_replica_is_served_the_refused_token(
    consent_env: Any, three: Replicas
) -> None:
    """Replica A's request is refused (401 invalid_token): EntraAuth invalidates and retries
    with a new token, not the refused one from L2; replicas B (async) and C (sync API, blocking
    twin) are served A's new token, never the refused one. (Tokens are compared by their
    fingerprints: a failing assertion shows no token.)"""
    idp = consent_env.idp
    a, b, c = three.made
    seen: list[str] = []
    rejected: set[str] = set()

    def resource(request: httpx2.Request) -> httpx2.Response:
        token = fingerprint(request.headers.get("authorization", "").removeprefix("Bearer "))
        seen.append(token)
        if len(seen) == 1:  # the first token it sees is revoked (or signed by a rolled key)
            rejected.add(token)
        if token in rejected:
            return httpx2.Response(
                401, headers={"www-authenticate": 'Bearer error="invalid_token"'}
            )
        return httpx2.Response(200, json={"ok": True})

    auth = EntraAuth(a.chain, scopes=three.scopes, origins=["https://api.example"])
    token = idp.user_token("alice", audience=idp.agent.client_id)
    before = _obo_posts(idp)
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(resource), auth=auth) as client:
        with bind_caller(token=token):
            response = await client.get("https://api.example/me")
    await a.cache.wait_refreshes_async()
    assert len(seen) == 2
    assert seen[0] != seen[1], "the retry re-sent the refused token (served from L2)"
    assert response.status_code == 200
    caller = Caller.from_token(token)
    from_b = await b.chain.get_token_async(three.scopes, caller=caller)
    from_c = await asyncio.to_thread(c.chain.get_token, three.scopes, caller=caller)
    for result in (from_b, from_c):
        assert result.fingerprint not in rejected
        assert result.fingerprint == seen[1]  # A's new token, shared through L2
    assert _obo_posts(idp) - before == 2  # the first token and the retry's: B and C from L2
    assert a.shared.invalidated == 1


async def test_a_newer_token_another_replica_wrote_is_not_dropped(
    consent_env: Any, three: Replicas
) -> None:
    """A and B hold token 1. B (sync API: the blocking twin) is refused first, drops token 1
    from L2 and writes token 2. A is refused token 1 later: L2 now holds token 2, which A's
    invalidation must leave in place (compare-and-delete), so A and C are served token 2."""
    idp = consent_env.idp
    a, b, c = three.made
    caller = _caller(idp, "bob")
    before = _obo_posts(idp)
    first = await a.chain.get_token_async(three.scopes, caller=caller)
    from_b = await b.chain.get_token_async(three.scopes, caller=caller)
    assert from_b.fingerprint == first.fingerprint
    held_by_a = a.cache.get(first.cache_key)
    assert held_by_a is not None

    def refused_at_b() -> Any:  # a thread with no event loop: the blocking twin drops it
        held = b.cache.get(first.cache_key)
        assert held is not None
        b.chain.invalidate(held)
        return b.chain.get_token(three.scopes, caller=caller)

    second = await asyncio.to_thread(refused_at_b)
    assert second.fingerprint != first.fingerprint
    a.chain.invalidate(held_by_a)  # token 1 again, now refused at A
    await a.cache.wait_refreshes_async()
    from_a = await a.chain.get_token_async(three.scopes, caller=caller)
    from_c = await c.chain.get_token_async(three.scopes, caller=caller)
    assert from_a.fingerprint == second.fingerprint
    assert from_c.fingerprint == second.fingerprint
    assert _obo_posts(idp) - before == 2
    assert (b.shared.invalidated, a.shared.invalidated) == (1, 0)


async def test_a_store_that_fails_the_drop_never_gets_the_refused_token_served_again(
    consent_env: Any, fresh_redis: RedisServer
) -> None:
    """Redis is down when A invalidates (the drop fails, counted) and back with its data (the
    refused token still in L2) when A acquires again: A never serves the refused token, and
    its new token replaces it in L2 for the others."""
    idp = consent_env.idp
    fresh_redis.start()
    stores = [RedisStore.from_url(fresh_redis.url, timeout=3.0) for _ in range(2)]
    # retry_after=0: A tries L2 again at once after the failed drop (the worst case)
    (a, b), sessions = _replicas(idp, stores, Keyring.generate(), retry_after=0)
    scopes = [f"{idp.mcp.app_id_uri}/.default"]
    caller = _caller(idp, "alice")
    try:
        first = await a.chain.get_token_async(scopes, caller=caller)
        fresh_redis.kill()
        a.chain.invalidate(first)
        await a.cache.wait_refreshes_async()
        assert a.shared.failures >= 1
        assert a.shared.invalidated == 0
        fresh_redis.start()  # data kept: L2 still holds the refused token
        again = await a.chain.get_token_async(scopes, caller=caller)
        assert again.fingerprint != first.fingerprint
        from_b = await b.chain.get_token_async(scopes, caller=caller)
        assert from_b.fingerprint == again.fingerprint
    finally:
        for replica in (a, b):
            replica.chain.close()
        for session in sessions:
            session.close()
        for store in stores:
            await store.aclose()
