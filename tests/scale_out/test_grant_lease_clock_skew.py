"""The consent grant's refresh lease holds when the replicas' clocks disagree by minutes, over a
real redis-server with real MSAL against the emulator: two replicas (two ``DelegatedConsent``
over their own Redis clients), one clock a minute off, each refresh token redeemed exactly once
(counted at the emulator and per token). A lease's ``lease_until`` is written with the holder's
wall clock; a replica times another's lease on its own monotonic clock instead (issue 13: "a
refresh token is never redeemed twice").

The clocks: ``delegated.time`` is replaced by a view of the time module whose ``time()`` is
skewed for one instance (the ``DelegatedConsent`` whose method reads it): no minute is slept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
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
from ._server import RedisServer, free_port

SKEW = 60.0  # a replica's clock a minute off: a paused VM, a container without NTP
POST = 2.0  # the holder's POST at Entra (the emulator delays it)


class SkewedClocks:
    """``delegated``'s ``time`` module, with ``time()`` off by ``skews[id(source)]`` for the
    ``DelegatedConsent`` whose method calls it (every read of the wall clock in that module is
    in a method of the source: its frame's ``self``)."""

    def __init__(self) -> None:
        self.skews: dict[int, float] = {}

    def time(self) -> float:
        caller = sys._getframe(1).f_locals.get("self")
        return time.time() + self.skews.get(id(caller), 0.0)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@dataclass
class Two:
    holder: DelegatedConsent
    taker: DelegatedConsent
    request: TokenRequest
    key_hash: str
    redeemed: Counter[str]
    clocks: SkewedClocks

    async def owner(self) -> str | None:
        found = await self.taker.grants.get_grant(self.key_hash)
        assert found is not None
        return found[0].lease_owner


def _count_refreshes(source: DelegatedConsent, redeemed: Counter[str]) -> None:
    """Count each refresh token the source redeems at the emulator (by fingerprint)."""
    original = source.client.refresh

    def refresh(refresh_token: str, *args: Any, **kwargs: Any) -> Any:
        redeemed[fingerprint(refresh_token)] += 1
        return original(refresh_token, *args, **kwargs)

    source.client.refresh = refresh  # type: ignore[method-assign]


async def _poll(done: Callable[[], Any], *, tries: int = 1000) -> None:
    for _ in range(tries):  # bounded (~10 s)
        if await done():
            return
        await asyncio.sleep(0.01)
    pytest.fail("the state the test waits for never came")


@contextlib.asynccontextmanager
async def _two(
    env: ConsentEnv, server: RedisServer, monkeypatch: pytest.MonkeyPatch, chat_id: str
) -> AsyncIterator[Two]:
    """A holder and a taker (their own Redis clients, one namespace) and a user who consented;
    ``delegated``'s clock replaced by ``SkewedClocks`` (no skew yet)."""
    namespace = f"skew{free_port()}:"
    stores = [RedisStore.from_url(server.url, namespace=namespace) for _ in range(2)]
    keyring = Keyring.generate()
    clocks = SkewedClocks()
    try:
        holder = env.make(store=stores[0], keyring=keyring)[0]  # type: ignore[arg-type]
        taker = env.make(store=stores[1], keyring=keyring)[0]  # type: ignore[arg-type]
        request = await consent(env, taker, "quinn", chat_id)
        key = UserKey.from_caller(request.caller)
        assert key is not None
        redeemed: Counter[str] = Counter()
        _count_refreshes(holder, redeemed)
        _count_refreshes(taker, redeemed)
        monkeypatch.setattr(delegated, "time", clocks)
        yield Two(holder, taker, request, key.hashed, redeemed, clocks)
    finally:
        env.idp.clear_faults()
        for store in stores:
            await store.aclose()


def _refreshes(env: ConsentEnv) -> int:
    assert env.idp.wait_idle(10), "an earlier test's token request is still in flight"
    return int(env.idp.stats()["grants"].get("refresh_token", 0))


@pytest.mark.parametrize(
    ("holder_skew", "taker_skew"),
    [(0.0, SKEW), (-SKEW, 0.0), (SKEW, 0.0), (0.0, -SKEW)],
    ids=["taker-ahead", "holder-behind", "holder-ahead", "taker-behind"],
)
async def test_a_replica_whose_clock_is_off_waits_for_the_holder(
    consent_env: ConsentEnv,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    holder_skew: float,
    taker_skew: float,
) -> None:
    """The holder redeems the user's refresh token (Entra answers in 2 s); the taker, asked
    for the same user meanwhile, reads the holder's lease. With the taker's clock a minute
    ahead of the holder's (or the holder's behind), the lease's ``lease_until`` is a minute in
    the taker's past: the taker must still wait for the rotated grant, then redeem that one."""
    env = consent_env
    chat = f"chat-quinn-skew{int(holder_skew)}-{int(taker_skew)}"
    async with _two(env, redis_server, monkeypatch, chat) as two:
        two.clocks.skews = {id(two.holder): holder_skew, id(two.taker): taker_skew}
        before = _refreshes(env)
        env.idp.inject_fault("token", status=None, delay=POST)  # the holder's POST only
        from_holder = asyncio.ensure_future(two.holder.get_token_async(two.request))

        async def leased() -> bool:
            return await two.owner() is not None

        await _poll(leased)
        await asyncio.sleep(0.3)  # the holder's POST is at Entra
        from_taker = asyncio.ensure_future(two.taker.get_token_async(two.request))
        results = await asyncio.wait_for(
            asyncio.gather(from_holder, from_taker, return_exceptions=True), 60
        )
        assert [type(r).__name__ for r in results] == ["TokenResult", "TokenResult"], results
        twice = sum(n > 1 for n in two.redeemed.values())  # counts only: no token shown
        assert twice == 0, f"{twice} refresh token(s) redeemed twice"
        assert sum(two.redeemed.values()) == 2  # the holder's, then the taker's rotated one
        assert _refreshes(env) - before == 2  # as the emulator counted them
        assert await two.owner() is None  # released


async def test_a_lease_renewed_by_a_holder_whose_clock_is_behind_is_waited_for(
    consent_env: ConsentEnv, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica holds the lease with a clock a minute behind: every ``lease_until`` it
    writes is already past by ours. While it renews (a new version every few tenths of a
    lease) this replica waits; once it stops (it died), the lease is taken over a lease's length
    later, on this replica's own clock."""
    lease = 1.0
    env = consent_env
    async with _two(env, redis_server, monkeypatch, "chat-quinn-renewing") as two:
        monkeypatch.setattr(delegated, "LEASE_SECONDS", lease)
        owner = "0123456789abcdef:4242:0badcafe"  # another replica's lease
        store = two.holder.grants
        found = await store.get_grant(two.key_hash)
        assert found is not None
        grant, version = found
        renewals = 0

        async def renew() -> None:  # the holder: lease_until = its clock (ours - 60 s) + lease
            nonlocal grant, version, renewals
            held = dataclasses.replace(
                grant, lease_owner=owner, lease_until=time.time() - SKEW + lease
            )
            written = await store.put_grant(two.key_hash, held, expect=version)
            assert written is not None
            grant, version, renewals = held, written, renewals + 1

        await renew()
        call = asyncio.ensure_future(two.taker.get_token_async(two.request))
        renewing_until = time.monotonic() + 3 * lease
        while time.monotonic() < renewing_until:  # bounded: three leases
            await asyncio.sleep(lease / 3)
            assert not call.done(), "the lease of a live holder was taken over"
            await renew()
        assert sum(two.redeemed.values()) == 0
        stopped = time.monotonic()  # the holder dies: no renewal any more
        result = await asyncio.wait_for(call, 30)
        took = time.monotonic() - stopped
        assert isinstance(result, TokenResult)
        assert renewals >= 4
        assert lease * 0.9 <= took < lease + 5, f"taken over {took:.1f} s after the last renewal"
        assert sum(two.redeemed.values()) == 1
        assert await two.owner() is None


async def test_a_dead_holders_lease_from_a_clock_ahead_is_taken_over_a_lease_later(
    consent_env: ConsentEnv, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder whose clock was an hour ahead died holding the lease: its ``lease_until`` is an
    hour away by ours. The lease is taken over a lease's length after this replica first read
    it, not an hour later: a clock ahead delays a takeover by nothing."""
    lease = 1.0
    env = consent_env
    async with _two(env, redis_server, monkeypatch, "chat-quinn-ahead") as two:
        monkeypatch.setattr(delegated, "LEASE_SECONDS", lease)
        store = two.holder.grants
        found = await store.get_grant(two.key_hash)
        assert found is not None
        dead = dataclasses.replace(
            found[0], lease_owner="fedcba9876543210:4242:0badcafe", lease_until=time.time() + 3600
        )
        assert await store.put_grant(two.key_hash, dead, expect=found[1]) is not None
        started = time.monotonic()
        result = await asyncio.wait_for(two.taker.get_token_async(two.request), 30)
        took = time.monotonic() - started
        assert isinstance(result, TokenResult)
        assert lease * 0.9 <= took < lease + 5, f"taken over after {took:.1f} s"
        assert sum(two.redeemed.values()) == 1
