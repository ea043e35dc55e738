"""The shared cache's (L2) acquisition is written once: ``wrap`` (async) and ``wrap_sync``
(blocking) drive the same decision flow, so a rule added to one API cannot be forgotten in the
other (they were two copies, ``_fetch`` and ``_fetch_sync``). Both APIs, over a real
redis-server, go through that flow and count the same way: a miss (the holder acquires and
shares), then another replica's hit, then a wait for a held lease and the takeover after it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import Any

import pytest

from entra_passthrough import IdentityKind, TokenCache, TokenResult
from entra_passthrough._l2 import SharedTokenCache
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._server import RedisServer

KEY = ("obo", ("client", "tenant", "sha256-of-assertion"), ("api://mcp/.default",), None, ())
LEASE = 0.6


def _token(name: str) -> TokenResult:
    return TokenResult(name, time.time() + 3600, IdentityKind.USER, "obo")


def _counts(shared: SharedTokenCache) -> tuple[int, int, int, int]:
    return shared.hits, shared.misses, shared.waits, shared.takeovers


def test_the_copies_are_gone() -> None:
    twins = ("_fetch", "_fetch_sync", "_recheck", "_recheck_sync", "_write_sync", "_drop_sync")
    for twin in twins:
        assert not hasattr(SharedTokenCache, twin), twin


@pytest.mark.parametrize("api", ["async", "sync"])
async def test_both_apis_drive_the_one_flow(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, api: str
) -> None:
    flows: list[bool] = []
    flow = SharedTokenCache._fetch_flow

    def recorded(
        self: SharedTokenCache, *args: Any, **kwargs: Any
    ) -> Generator[Any, object, TokenResult | None]:
        flows.append(kwargs["on_loop"])
        return flow(self, *args, **kwargs)

    monkeypatch.setattr(SharedTokenCache, "_fetch_flow", recorded)
    store = RedisStore.from_url(redis_server.url, namespace=f"one-flow-{api}:")
    sync_store = store.sync()
    keyring = Keyring.generate()
    replicas = [
        SharedTokenCache(store, keyring, lease=LEASE, wait=LEASE * 4, sync_store=sync_store)
        for _ in range(2)
    ]
    acquired: list[str] = []

    async def get(shared: SharedTokenCache, name: str) -> TokenResult | None:
        cache = TokenCache(shared=shared)  # a fresh L1: every request reaches L2
        if api == "sync":

            def entra() -> TokenResult:
                acquired.append(name)
                return _token(name)

            # In a thread of its own: one that runs no event loop (it may wait for a lease).
            return await asyncio.to_thread(cache.get_or_acquire, KEY, entra)

        async def entra_async() -> TokenResult:
            acquired.append(name)
            return _token(name)

        return await cache.get_or_acquire_async(KEY, entra_async)

    try:
        first = await get(replicas[0], "first")
        assert first is not None
        assert first.token == "first"
        assert _counts(replicas[0]) == (0, 1, 0, 0)  # a miss: acquired and shared
        second = await get(replicas[1], "second")
        assert second is not None
        assert second.token == "first"  # the other replica's entry
        assert _counts(replicas[1]) == (1, 0, 0, 0)
        # No entry, and a lease nobody releases (its holder died): the next request waits for
        # it, then takes it over once it runs out, acquires and shares.
        digest = replicas[1]._hash(KEY)
        assert digest is not None
        assert await store.delete("ep:v1:tok:" + digest)
        assert await store.put("ep:v1:tokl:" + digest, b"1", ttl=LEASE, expect=None)
        third = await get(replicas[1], "third")
        assert third is not None
        assert third.token == "third"
        assert _counts(replicas[1]) == (1, 1, 1, 1)
        assert acquired == ["first", "third"]
        assert flows == [False, False, False]  # every acquisition went through the one flow
    finally:
        await store.aclose()
