"""The sync API (``TokenChain.get_token``, threads) over the shared cache: the blocking twin
of RedisStore, one acquisition per key across replicas, and a dead Redis bypassed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from entra_passthrough import (
    ConfigurationError,
    IdentityKind,
    TokenCache,
    TokenResult,
)
from entra_passthrough._caller import Caller
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore, SharedTokenCache, SyncRedisStore

from ._server import RedisServer, free_port, obo_chain

KEY = ("obo", ("client", "tenant", "sha256-of-assertion"), ("api://mcp/.default",), None, ())


class Entra:
    def __init__(self, delay: float = 0.05) -> None:
        self.calls = 0
        self.delay = delay
        self._lock = threading.Lock()

    def acquire(self) -> TokenResult:
        with self._lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.delay)  # Entra's latency, so that the callers overlap
        return TokenResult(f"token-{n}", time.time() + 3600, IdentityKind.USER, "obo")


@pytest.fixture
def sync_stores(redis_server: RedisServer) -> Iterator[list[SyncRedisStore]]:
    namespace = f"sync{free_port()}:"
    made = [RedisStore.from_url(redis_server.url, namespace=namespace).sync() for _ in range(4)]
    yield made
    for store in made:
        store.close()


def test_the_blocking_twin_is_a_store_with_cas(sync_stores: list[SyncRedisStore]) -> None:
    store = sync_stores[0]
    v1 = store.put("k", b"a", ttl=60, expect=None)
    assert v1 is not None
    assert store.put("k", b"b", ttl=60, expect=None) is None
    v2 = store.put("k", b"b", ttl=60, expect=v1)
    assert v2 is not None
    entry = sync_stores[1].get("k")  # another replica's client sees it
    assert entry is not None
    assert entry.value == b"b"
    assert entry.version == v2
    assert not store.delete("k", expect=v1)
    assert store.delete("k", expect=v2)
    assert store.get("k") is None


def test_threads_of_four_replicas_make_one_acquisition(
    sync_stores: list[SyncRedisStore], redis_server: RedisServer
) -> None:
    keyring = Keyring.generate()
    async_store = RedisStore.from_url(redis_server.url)  # unused by the sync path
    caches = [
        TokenCache(shared=SharedTokenCache(async_store, keyring, sync_store=s)) for s in sync_stores
    ]
    entra = Entra(delay=0.2)
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(
            pool.map(lambda i: caches[i % 4].get_or_acquire(KEY, entra.acquire), range(16))
        )
    assert entra.calls == 1
    assert len({r.token for r in results if r is not None}) == 1


def test_without_a_blocking_store_the_sync_api_is_l1_only(redis_server: RedisServer) -> None:
    keyring = Keyring.generate()
    store = RedisStore.from_url(redis_server.url, namespace=f"l1only{free_port()}:")
    caches = [TokenCache(shared=SharedTokenCache(store, keyring)) for _ in range(2)]
    entra = Entra(delay=0)
    for cache in caches:
        assert cache.get_or_acquire(KEY, entra.acquire) is not None
    assert entra.calls == 2


def test_a_dead_redis_is_bypassed_by_the_sync_api() -> None:
    store = RedisStore.from_url(f"redis://:pw@127.0.0.1:{free_port()}/0", timeout=0.5)
    shared = SharedTokenCache(store, Keyring.generate(), sync_store=store.sync(), retry_after=60)
    entra = Entra(delay=0)
    try:
        for cache in (TokenCache(shared=shared), TokenCache(shared=shared)):
            assert cache.get_or_acquire(KEY, entra.acquire) is not None
        assert entra.calls == 2
        assert shared.failures == 1
    finally:
        store.sync().close()


def test_a_store_built_from_a_client_has_no_blocking_twin() -> None:
    import redis.asyncio

    store = RedisStore(redis.asyncio.Redis(port=free_port()))
    with pytest.raises(ConfigurationError, match="blocking twin"):
        store.sync()


def test_sync_chains_with_real_obo_make_one_post(
    consent_env: Any, redis_server: RedisServer
) -> None:
    idp = consent_env.idp
    keyring = Keyring.generate()
    namespace = f"syncobo{free_port()}:"
    stores = [RedisStore.from_url(redis_server.url, namespace=namespace) for _ in range(2)]
    sessions = [idp.msal_http_client() for _ in stores]
    chains = [
        obo_chain(
            idp,
            session,
            TokenCache(shared=SharedTokenCache(store, keyring, sync_store=store.sync())),
        )
        for store, session in zip(stores, sessions, strict=True)
    ]
    caller = Caller.from_token(idp.user_token("alice", audience=idp.agent.client_id))
    scopes = [f"{idp.mcp.app_id_uri}/.default"]
    before = idp.stats()["grants"].get("on_behalf_of", 0)
    try:
        tokens = {chain.get_token(scopes, caller=caller).token for chain in chains * 3}
    finally:
        for chain in chains:
            chain.close()
        for store in stores:
            store.sync().close()
        for session in sessions:
            session.close()
    assert idp.stats()["grants"].get("on_behalf_of", 0) - before == 1
    assert len(tokens) == 1


def test_a_slow_holder_keeps_its_lease_in_the_sync_api_too(
    sync_stores: list[SyncRedisStore], redis_server: RedisServer
) -> None:
    """Threads: the holder renews its lease from a thread of its own while it acquires."""
    keyring = Keyring.generate()
    async_store = RedisStore.from_url(redis_server.url)  # unused by the sync path
    renewals = [0]
    for store in sync_stores:
        put = store.put

        def counting(key: str, value: bytes, *, put: Any = put, **kw: Any) -> str | None:
            if key.startswith("ep:v1:tokl:") and isinstance(kw.get("expect"), str):
                renewals[0] += 1
            return put(key, value, **kw)  # type: ignore[no-any-return]

        store.put = counting  # type: ignore[method-assign]
    caches = [
        TokenCache(shared=SharedTokenCache(async_store, keyring, lease=3.0, sync_store=s))
        for s in sync_stores
    ]
    calls = [0]

    def slow() -> TokenResult:
        calls[0] += 1
        for _ in range(240):  # bounded (12 s): until the lease was renewed past its length
            if renewals[0] >= 4:
                break
            time.sleep(0.05)
        return TokenResult("slow-token", time.time() + 3600, IdentityKind.USER, "obo")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: caches[i % 4].get_or_acquire(KEY, slow), range(8)))
    assert calls[0] == 1
    assert renewals[0] >= 4  # the lease (3 s) was renewed while the holder acquired
    assert {r.token for r in results if r is not None} == {"slow-token"}


async def test_delegated_consent_sync_api_over_redis(
    consent_env: Any, redis_server: RedisServer
) -> None:
    """``DelegatedConsent.get_token`` and ``TokenChain.get_token`` (threads) over a RedisStore
    the async API uses too: every call served (its grant-store calls go through the store's
    blocking twin: the asyncio connections belong to the loop that opened them, and the sync
    driver runs each call on a loop of its own), a dead Redis a typed error."""
    import asyncio

    from entra_passthrough import Policy, SourceUnavailable, TokenChain

    from ._broker import StandaloneBroker, consent

    env = consent_env
    keyring = Keyring.generate()
    namespace = f"dsync{free_port()}:"
    store = RedisStore.from_url(redis_server.url, namespace=namespace, timeout=0.5)
    source = env.make(store=store, keyring=keyring)[0]
    broker_store = RedisStore.from_url(redis_server.url, namespace=namespace)
    broker = StandaloneBroker(env, broker_store, keyring)
    try:
        request = await consent(env, source, "rita", "chat-rita-sync")
        chain = TokenChain([source], policy=Policy.USER_ONLY)

        def calls() -> list[bool]:
            served = [source.get_token(request) is not None for _ in range(3)]
            return [*served, chain.get_token([env.mcp_scope], caller=request.caller) is not None]

        assert await asyncio.to_thread(calls) == [True] * 4
        assert await source.get_token_async(request) is not None  # the async API still works
        assert await asyncio.to_thread(calls) == [True] * 4
        dead = RedisStore.from_url(f"redis://:pw@127.0.0.1:{free_port()}/0", timeout=0.5)
        down = env.make(store=dead, keyring=keyring)[0]
        with pytest.raises(SourceUnavailable, match="cannot be reached"):
            await asyncio.to_thread(down.get_token, request)
        await dead.aclose()
    finally:
        await store.aclose()
        await broker.aclose()
