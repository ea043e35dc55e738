"""The shared (L2) token cache over a real redis-server: one acquisition per key across
replicas, L1 hits cost no round trip, a dead holder is taken over, a dead Redis is bypassed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from entra_passthrough import IdentityKind, SourceUnavailable, TokenCache, TokenResult
from entra_passthrough._l2 import SharedTokenCache
from entra_passthrough._store import Keyring, MemoryStore
from entra_passthrough.redis import RedisStore

from ._server import RedisServer, free_port

KEY = ("obo", ("client", "tenant", "sha256-of-assertion"), ("api://mcp/.default",), None, ())


class Entra:
    """Counts acquisitions; each one takes ``delay`` seconds and returns a fresh token."""

    def __init__(self, delay: float = 0.05, lifetime: float = 3600.0) -> None:
        self.calls = 0
        self.delay = delay
        self.lifetime = lifetime

    async def acquire(self) -> TokenResult:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return TokenResult(
            token=f"eyJ.token-{self.calls}.sig",
            expires_on=time.time() + self.lifetime,
            kind=IdentityKind.USER,
            source="obo",
        )


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[list[RedisStore]]:
    made = [RedisStore.from_url(redis_server.url, namespace=f"sc{free_port()}:")]
    made += [RedisStore.from_url(redis_server.url, namespace=made[0].namespace) for _ in range(3)]
    yield made
    for store in made:
        await store.aclose()


def replicas(stores: list[RedisStore], keyring: Keyring, **options: float) -> list[TokenCache]:
    return [TokenCache(shared=SharedTokenCache(s, keyring, **options)) for s in stores]


async def test_a_cold_burst_over_four_replicas_makes_one_acquisition(
    stores: list[RedisStore],
) -> None:
    caches = replicas(stores, Keyring.generate())
    entra = Entra(delay=0.2)
    results = await asyncio.gather(
        *(caches[i % 4].get_or_acquire_async(KEY, entra.acquire) for i in range(64))
    )
    assert entra.calls == 1
    assert len({r.token for r in results if r is not None}) == 1
    # every replica now has it in L1: more calls make no acquisition and read no L2
    assert all(c.get(KEY) is not None for c in caches)


async def test_l1_hits_make_no_round_trip_to_redis(
    stores: list[RedisStore], redis_server: RedisServer
) -> None:
    cache = replicas(stores[:1], Keyring.generate())[0]
    entra = Entra(delay=0)
    await cache.get_or_acquire_async(KEY, entra.acquire)
    admin = redis_server.client()
    try:
        before = int(admin.info("stats")["total_commands_processed"])
        for _ in range(200):
            await cache.get_or_acquire_async(KEY, entra.acquire)
        after = int(admin.info("stats")["total_commands_processed"])
    finally:
        admin.close()
    assert after - before == 1  # the INFO command itself
    assert entra.calls == 1


async def test_another_replica_is_served_from_l2_and_nothing_readable_is_stored(
    stores: list[RedisStore], redis_server: RedisServer
) -> None:
    keyring = Keyring.generate()
    first, second = replicas(stores[:2], keyring)
    entra = Entra(delay=0)
    token = await first.get_or_acquire_async(KEY, entra.acquire, cap=time.time() + 600)
    again = await second.get_or_acquire_async(KEY, entra.acquire)
    assert entra.calls == 1
    assert token is not None
    assert again is not None
    assert again.token == token.token
    assert again.expires_on == pytest.approx(token.expires_on)  # capped by the assertion
    admin = redis_server.client()
    try:
        names = [k for k in admin.scan_iter(match=f"{stores[0].namespace}*")]
        dump = b"".join(names + [admin.get(k) or b"" for k in names])
        ttl = max(admin.pttl(k) for k in names)
    finally:
        admin.close()
    for visible in (b"token-1", b"eyJ", b"tenant", b"client", b"assertion", b"mcp"):
        assert visible not in dump
    assert 0 < ttl <= 600_000  # the cap, not the token's hour


async def test_another_keyring_reads_nothing(stores: list[RedisStore]) -> None:
    first = replicas(stores[:1], Keyring.generate())[0]
    other = replicas(stores[1:2], Keyring.generate())[0]
    entra = Entra(delay=0)
    await first.get_or_acquire_async(KEY, entra.acquire)
    await other.get_or_acquire_async(KEY, entra.acquire)
    assert entra.calls == 2


async def test_a_dead_holder_is_taken_over_after_its_lease(stores: list[RedisStore]) -> None:
    keyring = Keyring.generate()
    shared = SharedTokenCache(stores[0], keyring, lease=0.5)
    digest = shared._hash(KEY)
    assert digest is not None
    # A replica took the lease and died before writing or releasing it.
    assert await stores[0].put(f"ep:v1:tokl:{digest}", b"1", ttl=0.5, expect=None)
    cache = TokenCache(shared=SharedTokenCache(stores[1], keyring, lease=0.5))
    entra = Entra(delay=0)
    result = await asyncio.wait_for(cache.get_or_acquire_async(KEY, entra.acquire), 10)
    assert result is not None
    assert entra.calls == 1
    assert cache.shared is not None
    assert cache.shared.takeovers == 1  # type: ignore[attr-defined]


async def test_a_failing_acquisition_releases_the_lease_and_is_not_stored(
    stores: list[RedisStore],
) -> None:
    keyring = Keyring.generate()
    first, second = replicas(stores[:2], keyring)

    async def refuse() -> TokenResult:
        raise RuntimeError("entra said no")

    with pytest.raises(RuntimeError):
        await first.get_or_acquire_async(KEY, refuse)
    entra = Entra(delay=0)
    assert await asyncio.wait_for(second.get_or_acquire_async(KEY, entra.acquire), 5)
    assert entra.calls == 1


async def test_redis_down_goes_straight_to_entra_and_skips_l2_for_a_while() -> None:
    store = RedisStore.from_url(f"redis://:pw@127.0.0.1:{free_port()}/0", timeout=0.5)
    shared = SharedTokenCache(store, Keyring.generate(), retry_after=60)
    caches = [TokenCache(shared=shared), TokenCache(shared=shared)]
    entra = Entra(delay=0)
    for cache in caches:
        assert await cache.get_or_acquire_async(KEY, entra.acquire) is not None
    assert entra.calls == 2
    assert shared.failures == 1  # the second cache did not try Redis again
    await store.aclose()


async def test_redis_killed_mid_run_l1_serves_then_reconnects(fresh_redis: RedisServer) -> None:
    fresh_redis.start()
    keyring = Keyring.generate()
    store = RedisStore.from_url(fresh_redis.url, timeout=0.5)
    shared = SharedTokenCache(store, keyring, retry_after=0)
    cache = TokenCache(shared=shared)
    entra = Entra(delay=0)
    other_key = (*KEY[:2], ("api://other/.default",), None, ())
    try:
        first = await cache.get_or_acquire_async(KEY, entra.acquire)
        fresh_redis.kill()
        assert await cache.get_or_acquire_async(KEY, entra.acquire) == first  # L1
        assert await cache.get_or_acquire_async(other_key, entra.acquire) is not None
        assert entra.calls == 2  # the miss went to Entra, no error
        fresh_redis.start()  # data kept (append-only file)
        replica = TokenCache(shared=SharedTokenCache(store, keyring))
        again = await replica.get_or_acquire_async(KEY, entra.acquire)
        assert again is not None
        assert first is not None
        assert again.token == first.token  # read from Redis after the restart
        assert entra.calls == 2
    finally:
        await store.aclose()


async def test_a_full_redis_still_returns_the_token() -> None:
    server = RedisServer().start()
    store = RedisStore.from_url(server.url)
    try:
        admin = server.client()
        admin.set("ballast", b"z" * 3_000_000)
        admin.config_set("maxmemory", "2mb")  # now over it: every write is refused
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            admin.set("probe", b"x")
        admin.close()
        shared = SharedTokenCache(store, Keyring.generate())
        entra = Entra(delay=0)
        assert await TokenCache(shared=shared).get_or_acquire_async(KEY, entra.acquire)
        assert entra.calls == 1
        assert shared.failures >= 1
    finally:
        await store.aclose()
        server.stop()


async def test_the_shared_cache_works_over_any_token_store() -> None:
    keyring, store = Keyring.generate(), MemoryStore()
    caches = [TokenCache(shared=SharedTokenCache(store, keyring)) for _ in range(4)]
    entra = Entra(delay=0.05)
    await asyncio.gather(
        *(caches[i % 4].get_or_acquire_async(KEY, entra.acquire) for i in range(32))
    )
    assert entra.calls == 1


async def test_a_slow_redis_costs_one_timeout_then_entra_serves(fresh_redis: RedisServer) -> None:
    fresh_redis.start()
    store = RedisStore.from_url(fresh_redis.url, timeout=0.3)
    shared = SharedTokenCache(store, Keyring.generate(), retry_after=60)
    caches = [TokenCache(shared=shared) for _ in range(3)]
    entra = Entra(delay=0)
    # Paused, Redis answers nothing (CLIENT UNPAUSE included) until the pause ends: the admin
    # waits it out. 4 s: the calls below take about 2 x 0.6 s, with room for a loaded machine.
    admin = redis.Redis.from_url(fresh_redis.url, socket_timeout=30)
    try:
        assert await store.ping()
        admin.client_pause(4000, all=True)
        for cache in caches:
            assert await cache.get_or_acquire_async(KEY, entra.acquire) is not None
        assert entra.calls == 3  # each went to Entra, none waited for Redis again
        assert shared.failures == 1
        with pytest.raises(SourceUnavailable, match="did not answer in time"):
            await store.get("k")  # the grant store's view of the same: a typed error
        admin.client_unpause()
        assert await store.put("k", b"v", ttl=10) is not None  # and it recovers by itself
    finally:
        admin.close()
        await store.aclose()


async def test_shared_token_cache_from_env(redis_server: RedisServer) -> None:
    from entra_passthrough.redis import shared_token_cache

    env = {
        "ENTRA_PASSTHROUGH_REDIS_URL": redis_server.url,
        "ENTRA_PASSTHROUGH_REDIS_NAMESPACE": f"env{free_port()}:",
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": "k1:" + "B" * 43,
    }
    caches = [shared_token_cache(env, max_entries=100) for _ in range(2)]
    entra = Entra(delay=0)
    try:
        for cache in caches:
            assert cache.max_entries == 100
            assert await cache.get_or_acquire_async(KEY, entra.acquire) is not None
        assert entra.calls == 1  # the second replica read the first one's entry
    finally:
        for cache in caches:
            assert isinstance(cache.shared, SharedTokenCache)
            assert isinstance(cache.shared.store, RedisStore)
            await cache.shared.store.aclose()


async def test_a_refused_password_goes_straight_to_entra(redis_server: RedisServer) -> None:
    url = f"redis://:wrong-password-1@127.0.0.1:{redis_server.port}/0"
    store = RedisStore.from_url(url)
    shared = SharedTokenCache(store, Keyring.generate())
    entra = Entra(delay=0)
    try:
        assert await TokenCache(shared=shared).get_or_acquire_async(KEY, entra.acquire)
        assert entra.calls == 1
        assert shared.failures == 1
    finally:
        await store.aclose()


async def _refreshed(cache: TokenCache) -> None:
    for _ in range(500):  # bounded: the background refresh is a task on this loop
        if cache.stats().refreshing == 0:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the background refresh never finished")


async def test_a_refresh_done_by_one_replica_serves_the_others(stores: list[RedisStore]) -> None:
    now = [1_000_000.0]

    def clock() -> float:
        return now[0]

    keyring = Keyring.generate()
    first, second = (
        TokenCache(clock=clock, shared=SharedTokenCache(s, keyring, clock=clock))
        for s in stores[:2]
    )
    calls = 0

    async def acquire() -> TokenResult:
        nonlocal calls
        calls += 1
        return TokenResult(f"token-{calls}", now[0] + 600, IdentityKind.USER, "obo")

    await first.get_or_acquire_async(KEY, acquire)
    await second.get_or_acquire_async(KEY, acquire)
    assert calls == 1
    now[0] += 400  # past the refresh point (half the life), still usable
    await first.get_or_acquire_async(KEY, acquire)  # serves the cached one, refreshes behind
    await _refreshed(first)
    assert calls == 2
    await second.get_or_acquire_async(KEY, acquire)
    await _refreshed(second)
    assert calls == 2  # the second replica took the first one's refreshed token from L2
    fresh = second.get(KEY)
    assert fresh is not None
    assert fresh.token == "token-2"


async def test_a_replica_waits_for_the_lease_holder_with_a_bound(stores: list[RedisStore]) -> None:
    keyring = Keyring.generate()
    frozen = SharedTokenCache(stores[0], keyring, lease=30, wait=0.3, clock=lambda: 1e6)
    digest = frozen._hash(KEY)
    assert digest is not None
    # A live but stuck holder (lease 30 s): the waiter gives up after `wait` of real time,
    # even though the token clock does not move.
    assert await stores[1].put(f"ep:v1:tokl:{digest}", b"1", ttl=30, expect=None)

    async def acquire() -> TokenResult:
        return TokenResult("t", 1e6 + 600, IdentityKind.USER, "obo")

    result = await asyncio.wait_for(
        TokenCache(shared=frozen).get_or_acquire_async(KEY, acquire), 10
    )
    assert result is not None
    assert frozen.waits == 1


def _count_renewals(stores: list[RedisStore]) -> list[int]:
    """Wrap each store's put: counts compare-and-set writes of a lease (its renewals)."""
    renewals = [0]
    for store in stores:
        put = store.put

        async def counting(key: str, value: bytes, *, put: Any = put, **kw: Any) -> str | None:
            if key.startswith("ep:v1:tokl:") and isinstance(kw.get("expect"), str):
                renewals[0] += 1
            return await put(key, value, **kw)  # type: ignore[no-any-return]

        store.put = counting  # type: ignore[method-assign]
    return renewals


async def test_a_slow_holder_keeps_its_lease_while_it_acquires(stores: list[RedisStore]) -> None:
    """Entra answers after more than the lease's length: the holder renews its lease while it
    acquires, so the other replicas keep waiting and a cold burst still makes one acquisition
    (a lease runs out only when its holder died)."""
    caches = replicas(stores, Keyring.generate(), lease=3.0)
    renewals = _count_renewals(stores)
    calls = 0

    async def slow() -> TokenResult:
        nonlocal calls
        calls += 1
        for _ in range(240):  # bounded (12 s): until the lease was renewed past its length
            if renewals[0] >= 4:
                break
            await asyncio.sleep(0.05)
        return TokenResult("slow-token", time.time() + 3600, IdentityKind.USER, "obo")

    results = await asyncio.gather(
        *(caches[i % 4].get_or_acquire_async(KEY, slow) for i in range(16))
    )
    assert calls == 1
    assert renewals[0] >= 4
    assert {r.token for r in results if r is not None} == {"slow-token"}
