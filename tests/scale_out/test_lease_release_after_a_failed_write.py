"""A holder whose fencing check the store failed (a lost reply, a moment's outage) keeps the
token for its own caller and does not share it; it used to leave its lease in place too, so the
other replicas' callers waiting on that lease waited it out (10 s by default) before acquiring.
The lease is now released in the background: they acquire at once. Over a real redis-server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from entra_passthrough import IdentityKind, TokenCache, TokenResult
from entra_passthrough._l2 import SharedTokenCache
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._server import RedisServer

KEY = ("obo", ("client", "tenant", "sha256-of-assertion"), ("api://mcp/.default",), None, ())
LEASE = 6.0


def _fail_the_fencing_check(store: RedisStore) -> list[str]:
    """The first compare-and-set renewal of a lease (the holder's check right before it writes)
    fails as a lost reply would."""
    put = store.put
    failed: list[str] = []

    async def spied(key: str, value: bytes, **kw: Any) -> str | None:
        if key.startswith("ep:v1:tokl:") and isinstance(kw.get("expect"), str) and not failed:
            failed.append(key)
            raise ConnectionError("the reply was lost")
        return await put(key, value, **kw)

    store.put = spied  # type: ignore[method-assign]
    return failed


async def test_the_other_replicas_do_not_wait_out_the_lease(redis_server: RedisServer) -> None:
    keyring = Keyring.generate()
    store_a = RedisStore.from_url(redis_server.url, namespace="release:", timeout=1.0)
    store_b = RedisStore.from_url(redis_server.url, namespace="release:", timeout=1.0)
    failed = _fail_the_fencing_check(store_a)
    shared_b = SharedTokenCache(store_b, keyring, lease=LEASE, wait=LEASE * 4)
    a = TokenCache(shared=SharedTokenCache(store_a, keyring, lease=LEASE))
    b = TokenCache(shared=shared_b)
    go = asyncio.Event()
    calls: list[str] = []

    async def entra(name: str, wait: bool) -> TokenResult:
        calls.append(name)
        if wait:
            await go.wait()
        return TokenResult(f"token-{name}", time.time() + 3600, IdentityKind.USER, "obo")

    try:
        first = asyncio.ensure_future(a.get_or_acquire_async(KEY, lambda: entra("a", True)))
        for _ in range(500):  # bounded: until A holds the lease
            if calls:
                break
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(b.get_or_acquire_async(KEY, lambda: entra("b", False)))
        await asyncio.sleep(0.3)  # B waits on A's lease
        go.set()
        got_a = await asyncio.wait_for(first, LEASE * 4)
        assert failed  # A's check failed: it kept its token and shared nothing
        assert got_a is not None
        assert got_a.token == "token-a"
        # A's lease is released (then taken by B), well before it would have run out: polled,
        # bounded by half the lease, whose TTL alone would keep it the whole lease.
        released = False
        for _ in range(int(LEASE / 2 / 0.02)):
            if not (calls[1:] == [] and redis_server.client().keys("release:ep:v1:tokl:*")):
                released = True
                break
            await asyncio.sleep(0.02)
        assert released
        got_b = await asyncio.wait_for(second, LEASE * 4)
        assert got_b is not None
        assert got_b.token == "token-b"  # B acquired: A's result was not shared
        assert calls == ["a", "b"]
    finally:
        await store_a.aclose()
        await store_b.aclose()
