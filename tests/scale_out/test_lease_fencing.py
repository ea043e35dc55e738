"""The shared cache's lease under store faults, over a real redis-server: a renewal that the
store fails is retried (one acquisition per key across replicas still holds), and a holder that
lost its lease does not write: the new holder's result wins (fencing)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from entra_passthrough import IdentityKind, TokenCache, TokenResult
from entra_passthrough._l2 import SharedTokenCache
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore, SyncRedisStore

from ._server import AclUser, RedisServer, free_port

KEY = ("obo", ("client", "tenant", "sha256-of-assertion"), ("api://mcp/.default",), None, ())
LEASE = 6.0  # renewals every 2 s; a refused one is retried every 0.3 s: ~4 s of slack for a
# loaded machine (at 3 s, a loop stalled for ~2 s on a busy CI host could lose the lease by chance)


def _token(name: str) -> TokenResult:
    return TokenResult(name, time.time() + 3600, IdentityKind.USER, "obo")


class Renewals:
    """Spies on a store's lease renewals (compare-and-set writes of a lease key): their
    outcomes, in order ("ok", "lost" or "failed")."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def ok_after_failure(self) -> int:
        if "failed" not in self.outcomes:
            return 0
        return self.outcomes[self.outcomes.index("failed") :].count("ok")

    def spy_async(self, store: RedisStore) -> None:
        put = store.put

        async def spied(key: str, value: bytes, **kw: Any) -> str | None:
            if not (key.startswith("ep:v1:tokl:") and isinstance(kw.get("expect"), str)):
                return await put(key, value, **kw)
            try:
                version = await put(key, value, **kw)
            except Exception:
                self.outcomes.append("failed")
                raise
            self.outcomes.append("lost" if version is None else "ok")
            return version

        store.put = spied  # type: ignore[method-assign]

    def spy_sync(self, store: SyncRedisStore) -> None:
        put = store.put

        def spied(key: str, value: bytes, **kw: Any) -> str | None:
            if not (key.startswith("ep:v1:tokl:") and isinstance(kw.get("expect"), str)):
                return put(key, value, **kw)
            try:
                version = put(key, value, **kw)
            except Exception:
                self.outcomes.append("failed")
                raise
            self.outcomes.append("lost" if version is None else "ok")
            return version

        store.put = spied  # type: ignore[method-assign]


def _poll(done: Callable[[], bool], *, tries: int = 1500) -> None:
    for _ in range(tries):  # bounded (~15 s)
        if done():
            return
        time.sleep(0.01)


async def _apoll(done: Callable[[], bool], *, tries: int = 1500) -> None:
    for _ in range(tries):  # bounded (~15 s)
        if done():
            return
        await asyncio.sleep(0.01)


@pytest.fixture
def acl_user(redis_server: RedisServer) -> Iterator[AclUser]:
    user = AclUser(redis_server)
    yield user
    user.close()


@pytest.fixture
async def two_stores(
    redis_server: RedisServer, acl_user: AclUser
) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    namespace = f"fence{free_port()}:"
    stores = (
        RedisStore.from_url(acl_user.url, namespace=namespace),
        RedisStore.from_url(redis_server.url, namespace=namespace),
    )
    yield stores
    for store in stores:
        await store.aclose()


async def test_a_refused_renewal_is_retried_and_no_second_replica_acquires(
    two_stores: tuple[RedisStore, RedisStore], acl_user: AclUser
) -> None:
    """Replica A acquires slowly; the store refuses one renewal of its lease. A keeps the lease
    (it retries), so replica B, arriving meanwhile, waits for A's token instead of acquiring
    the same one a second time; the refusal is counted."""
    keyring = Keyring.generate()
    a = SharedTokenCache(two_stores[0], keyring, lease=LEASE)
    b = SharedTokenCache(two_stores[1], keyring, lease=LEASE)
    renewals = Renewals()
    renewals.spy_async(two_stores[0])
    calls: list[str] = []
    b_call: list[asyncio.Future[TokenResult | None]] = []

    async def acquire_b() -> TokenResult:
        calls.append("B")
        return _token("token-B")

    async def acquire_a() -> TokenResult:
        calls.append("A")
        acl_user.refuse_scripts()
        await _apoll(lambda: "failed" in renewals.outcomes)
        acl_user.allow_scripts()
        b_call.append(
            asyncio.ensure_future(TokenCache(shared=b).get_or_acquire_async(KEY, acquire_b))
        )
        # until A renewed its lease twice after the refusal (its lease outlived its length)
        # or B acquired (A's lease ran out)
        await _apoll(lambda: renewals.ok_after_failure() >= 2 or len(calls) > 1)
        return _token("token-A")

    result = await TokenCache(shared=a).get_or_acquire_async(KEY, acquire_a)
    assert "failed" in renewals.outcomes
    from_b = await asyncio.wait_for(b_call[0], 20)
    assert calls == ["A"]  # one acquisition across the two replicas
    assert result is not None
    assert from_b is not None
    assert from_b.token == "token-A"
    assert a.failures >= 1  # the refused renewal took the failure path (counted, logged)
    assert a.fenced == 0


async def test_a_holder_that_lost_its_lease_does_not_overwrite_the_new_holders_token(
    fresh_redis: RedisServer,
) -> None:
    """Redis is killed and restarted with its data lost while replica A acquires: its lease is
    gone, replica B takes a lease of its own and acquires (A's request is already on its way:
    two acquisitions cannot be helped). A finishes last: its token goes to its caller, but L2
    keeps B's, and a third replica is served B's."""
    fresh_redis.start()
    keyring = Keyring.generate()
    store_a = RedisStore.from_url(fresh_redis.url, timeout=0.3)
    a = SharedTokenCache(store_a, keyring, lease=1.5)
    renewals = Renewals()
    renewals.spy_async(store_a)
    later: list[RedisStore] = []

    async def acquire_b() -> TokenResult:
        return _token("token-B")

    async def acquire_a() -> TokenResult:
        fresh_redis.kill()
        fresh_redis.wipe()
        await _apoll(lambda: "failed" in renewals.outcomes)
        fresh_redis.start()
        later.append(RedisStore.from_url(fresh_redis.url))
        b = TokenCache(shared=SharedTokenCache(later[0], keyring, lease=1.5))
        from_b = await b.get_or_acquire_async(KEY, acquire_b)
        assert from_b is not None
        assert from_b.token == "token-B"
        return _token("token-A")

    try:
        result = await TokenCache(shared=a).get_or_acquire_async(KEY, acquire_a)
        assert result is not None
        assert result.token == "token-A"  # A's caller is served what A acquired
        later.append(RedisStore.from_url(fresh_redis.url))

        async def refuse() -> TokenResult:
            raise AssertionError("a third replica must be served from L2")

        c = TokenCache(shared=SharedTokenCache(later[-1], keyring))
        from_c = await c.get_or_acquire_async(KEY, refuse)
        assert from_c is not None
        assert from_c.token == "token-B"  # B's token stayed in L2: A did not overwrite it
        assert a.fenced == 1
    finally:
        for store in (store_a, *later):
            await store.aclose()


def test_sync_a_refused_renewal_is_retried_and_no_second_replica_acquires(
    redis_server: RedisServer, acl_user: AclUser
) -> None:
    """The same through the blocking twin (threads, the sync API)."""
    namespace = f"fences{free_port()}:"
    sync_a = RedisStore.from_url(acl_user.url, namespace=namespace).sync()
    sync_b = RedisStore.from_url(redis_server.url, namespace=namespace).sync()
    keyring = Keyring.generate()
    unused = RedisStore.from_url(redis_server.url)  # the async store, unused by the sync path
    a = SharedTokenCache(unused, keyring, lease=LEASE, sync_store=sync_a)
    b = SharedTokenCache(unused, keyring, lease=LEASE, sync_store=sync_b)
    renewals = Renewals()
    renewals.spy_sync(sync_a)
    calls: list[str] = []
    from_b: list[TokenResult | None] = []

    def acquire_b() -> TokenResult:
        calls.append("B")
        return _token("token-B")

    def replica_b() -> None:
        from_b.append(TokenCache(shared=b).get_or_acquire(KEY, acquire_b))

    thread_b = threading.Thread(target=replica_b)

    def acquire_a() -> TokenResult:
        calls.append("A")
        acl_user.refuse_scripts()
        _poll(lambda: "failed" in renewals.outcomes)
        acl_user.allow_scripts()
        thread_b.start()
        _poll(lambda: renewals.ok_after_failure() >= 2 or len(calls) > 1)
        return _token("token-A")

    try:
        assert TokenCache(shared=a).get_or_acquire(KEY, acquire_a) is not None
        thread_b.join(20)
        assert not thread_b.is_alive()
        assert "failed" in renewals.outcomes
        assert calls == ["A"]
        assert [r.token for r in from_b if r is not None] == ["token-A"]
        assert a.failures >= 1
    finally:
        sync_a.close()
        sync_b.close()
