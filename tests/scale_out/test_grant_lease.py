"""The refresh lease on a consent grant outlives a redemption that waits for a worker, over a real
redis-server with real MSAL against the emulator: a redemption queued behind a busy pool keeps
its lease (renewed), and one whose lease was taken over meanwhile does not POST. Either way a
refresh token is never redeemed twice (issue 13). The lease is shortened for the test."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from _support.consent import ConsentEnv
from entra_passthrough import TokenRequest, TokenResult, UserKey
from entra_passthrough._jwt import fingerprint
from entra_passthrough._sources import delegated
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._broker import consent
from ._server import AclUser, RedisServer, free_port

LEASE = 1.5  # renewed every 0.5 s; the pool is held for several leases


def _spy_refreshes(source: DelegatedConsent, redeemed: Counter[str]) -> None:
    """Count each refresh token the source redeems at the emulator (by fingerprint)."""
    original = source.client.refresh

    def refresh(refresh_token: str, *args: Any, **kwargs: Any) -> Any:
        redeemed[fingerprint(refresh_token)] += 1
        return original(refresh_token, *args, **kwargs)

    source.client.refresh = refresh  # type: ignore[method-assign]


class BusyPool:
    """Every worker of a source's pool held by another job (other users' slow redemptions)
    until ``release``."""

    def __init__(self, source: DelegatedConsent) -> None:
        self.gate = threading.Event()
        self.started = 0
        self._lock = threading.Lock()
        pool = source.client.pool
        self.jobs = [asyncio.ensure_future(pool.run(self._hold)) for _ in range(pool.max_workers)]
        self.workers = pool.max_workers

    def _hold(self) -> None:
        with self._lock:
            self.started += 1
        self.gate.wait(60)  # bounded

    async def held(self) -> None:
        await _apoll(lambda: self.started == self.workers)
        assert self.started == self.workers

    async def release(self) -> None:
        self.gate.set()
        await asyncio.gather(*self.jobs)


async def _apoll(done: Callable[[], bool], *, tries: int = 1500) -> None:
    for _ in range(tries):  # bounded (~15 s)
        if done():
            return
        await asyncio.sleep(0.01)


@dataclass
class Two:
    a: DelegatedConsent
    b: DelegatedConsent
    request: TokenRequest
    key_hash: str
    redeemed: Counter[str]

    async def lease(self) -> tuple[str | None, float]:
        found = await self.b.grants.get_grant(self.key_hash)
        assert found is not None
        return found[0].lease_owner, found[0].lease_until

    async def wait_for_lease(self, lapsed: bool) -> None:
        for _ in range(1500):  # bounded (~15 s)
            owner, until = await self.lease()
            if owner is not None and (until < time.time()) == lapsed:
                return
            await asyncio.sleep(0.01)
        pytest.fail("the grant's lease never reached the expected state")


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delegated, "LEASE_SECONDS", LEASE)


@contextlib.asynccontextmanager
async def _two(env: ConsentEnv, url_a: str, url_b: str, chat_id: str) -> AsyncIterator[Two]:
    """Replicas A and B (their own stores, one Redis, one namespace) and a user who consented."""
    namespace = f"lease{free_port()}:"
    stores = [RedisStore.from_url(url, namespace=namespace) for url in (url_a, url_b)]
    keyring = Keyring.generate()
    try:
        a = env.make(store=stores[0], keyring=keyring)[0]  # type: ignore[arg-type]
        b = env.make(store=stores[1], keyring=keyring)[0]  # type: ignore[arg-type]
        request = await consent(env, b, "quinn", chat_id)
        key = UserKey.from_caller(request.caller)
        assert key is not None
        redeemed: Counter[str] = Counter()
        _spy_refreshes(a, redeemed)
        _spy_refreshes(b, redeemed)
        yield Two(a, b, request, key.hashed, redeemed)
    finally:
        for store in stores:
            await store.aclose()


async def test_a_redemption_queued_past_its_lease_keeps_it(
    consent_env: ConsentEnv, redis_server: RedisServer, short_lease: None
) -> None:
    """A leases the grant, then its redemption waits for a worker for longer than the lease:
    A renews the lease meanwhile, so B, asked for the same user then, waits for A's rotated
    grant instead of redeeming the same refresh token."""
    async with _two(consent_env, redis_server.url, redis_server.url, "chat-quinn-q") as two:
        busy = BusyPool(two.a)
        await busy.held()
        from_a = asyncio.ensure_future(two.a.get_token_async(two.request))
        await two.wait_for_lease(lapsed=False)
        await asyncio.sleep(LEASE * 1.5)  # queued past the lease A took
        from_b = asyncio.ensure_future(two.b.get_token_async(two.request))
        await asyncio.wait({from_b}, timeout=3.0)  # without renewals B redeems at once
        await busy.release()
        results = await asyncio.wait_for(asyncio.gather(from_a, from_b, return_exceptions=True), 60)
        twice = sum(n > 1 for n in two.redeemed.values())  # counts only: no token shown
        assert twice == 0, f"{twice} refresh token(s) redeemed twice"
        assert [type(r).__name__ for r in results] == ["TokenResult", "TokenResult"]
        assert sum(two.redeemed.values()) == 2  # A's refresh, then B's with the rotated one
        assert await two.lease() == (None, 0.0)  # released


async def test_a_redemption_whose_lease_was_taken_over_does_not_post(
    consent_env: ConsentEnv,
    redis_server: RedisServer,
    acl_user: AclUser,
    short_lease: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A's redemption waits for a worker while the store refuses A's renewals: the lease runs
    out and B takes it, redeems and rotates. When A's worker comes, A's extension of the lease
    (compare-and-set) finds B's record: A does not POST the old refresh token, reads the grant
    again and refreshes with the rotated one."""
    async with _two(consent_env, acl_user.url, redis_server.url, "chat-quinn-t") as two:
        # A's job waits for the busy workers: not moved to a spare thread after 2 s (B now
        # waits a whole lease from its first read of A's, and the spare thread would run A's
        # extension while the store still refuses it).
        two.a.client.pool.STALL_AFTER = 30.0
        busy = BusyPool(two.a)
        await busy.held()
        from_a = asyncio.ensure_future(two.a.get_token_async(two.request))
        await two.wait_for_lease(lapsed=False)
        acl_user.refuse_scripts()  # A's renewals (compare-and-set scripts) now fail
        try:
            await two.wait_for_lease(lapsed=True)
            from_b: TokenResult | None = await asyncio.wait_for(
                two.b.get_token_async(two.request), 30
            )
        finally:
            acl_user.allow_scripts()
        assert from_b is not None
        await busy.release()
        result = await asyncio.wait_for(from_a, 60)
        assert result is not None
        twice = sum(n > 1 for n in two.redeemed.values())  # counts only: no token shown
        assert twice == 0, f"{twice} refresh token(s) redeemed twice"
        assert sum(two.redeemed.values()) == 2  # B's, then A's with B's rotated token
        assert "did not redeem the refresh token" in caplog.text


@pytest.fixture
def acl_user(redis_server: RedisServer) -> Any:
    user = AclUser(redis_server)
    yield user
    user.close()
