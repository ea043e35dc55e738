"""A sync acquisition made on a thread that runs an event loop (a sync helper or a sync httpx
client with ``EntraAuth`` called from async code) never waits for the shared cache's lease:
a task of that very loop may hold it, and it can neither finish nor renew the lease while the
loop is blocked. It used to poll the lease with ``time.sleep`` until the lease ran out (the
whole loop frozen that long), then fence the loop's own holder out. Now it reads L2 once and
acquires on its own, writing nothing (the holder's write is not overwritten, and the holder's
fencing holds); as the in-process cache does (docs/sources-and-policy.md). Real redis-server."""

from __future__ import annotations

import asyncio
import time

from entra_passthrough import IdentityKind, TokenCache, TokenResult
from entra_passthrough._l2 import SharedTokenCache
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._server import RedisServer

KEY = ("obo", ("client", "tenant", "sha256-of-assertion"), ("api://mcp/.default",), None, ())
LEASE = 6.0


async def test_the_sync_call_does_not_wait_for_its_loops_lease(redis_server: RedisServer) -> None:
    keyring = Keyring.generate()
    store = RedisStore.from_url(redis_server.url, namespace="sync-on-loop:")
    sync_store = store.sync()
    shared = SharedTokenCache(store, keyring, lease=LEASE, wait=LEASE * 3, sync_store=sync_store)
    cache = TokenCache(shared=shared)
    calls: list[str] = []

    async def entra_async() -> TokenResult:
        calls.append("async")
        await asyncio.sleep(0.5)
        return TokenResult("token-async", time.time() + 3600, IdentityKind.USER, "obo")

    def entra_sync() -> TokenResult:
        calls.append("sync")
        return TokenResult("token-sync", time.time() + 3600, IdentityKind.USER, "obo")

    try:
        leader = asyncio.ensure_future(cache.get_or_acquire_async(KEY, entra_async))
        for _ in range(500):  # bounded: until the loop's task holds the lease
            if calls:
                break
            await asyncio.sleep(0.01)
        assert redis_server.client().keys("sync-on-loop:ep:v1:tokl:*")
        start = time.monotonic()
        got = cache.get_or_acquire(KEY, entra_sync)  # blocking, on the loop's thread
        blocked = time.monotonic() - start
        assert blocked < LEASE / 3, f"the loop was blocked {blocked:.1f} s on its own lease"
        assert got is not None
        assert got.token == "token-sync"
        first = await asyncio.wait_for(leader, LEASE * 2)
        assert first is not None
        assert first.token == "token-async"
        assert calls == ["async", "sync"]
        # The loop's holder kept its lease and shared its token: the sync call wrote nothing.
        assert shared.fenced == 0
        other = TokenCache(shared=SharedTokenCache(store, keyring, lease=LEASE))

        async def never() -> TokenResult:
            raise AssertionError("the holder's token is in L2")

        shared_token = await other.get_or_acquire_async(KEY, never)
        assert shared_token is not None
        assert shared_token.token == "token-async"
    finally:
        await store.aclose()
