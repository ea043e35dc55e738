"""TokenCache: single-flight (async, threads), errors not cached, bounded, refresh ahead."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from entra_passthrough import (
    EntraError,
    IdentityKind,
    TokenCache,
    TokenChain,
    TokenResult,
    bind_caller,
)

from ._fakes import FakeSource, make_jwt

SCOPES = ["api://mcp/.default"]


def result(token: str = "t", lifetime: float = 3600.0) -> TokenResult:
    return TokenResult(
        token=token, expires_on=time.time() + lifetime, kind=IdentityKind.APP, source="s"
    )


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_async_single_flight_one_acquisition_for_64_waiters() -> None:
    source = FakeSource("obo", IdentityKind.USER, needs_caller=True)
    source.gate = asyncio.Event()
    chain = TokenChain([source])
    with bind_caller(token=make_jwt()):
        tasks = [asyncio.create_task(chain.get_token_async(SCOPES)) for _ in range(64)]
        for _ in range(5):
            await asyncio.sleep(0)
        source.gate.set()
        results = await asyncio.gather(*tasks)
    assert source.calls == 1
    assert len({r.token for r in results}) == 1
    assert chain.cache.stats().misses == 1


def test_sync_single_flight_across_threads() -> None:
    source = FakeSource("obo", IdentityKind.USER, needs_caller=True, delay=0.2)
    chain = TokenChain([source])
    token = make_jwt()
    barrier = threading.Barrier(16)

    def work() -> str:
        with bind_caller(token=token):
            barrier.wait()
            return chain.get_token(SCOPES).token

    with ThreadPoolExecutor(16) as pool:
        tokens = list(pool.map(lambda _: work(), range(16)))
    assert source.calls == 1
    assert len(set(tokens)) == 1


async def test_error_reaches_all_waiters_and_is_not_cached() -> None:
    source = FakeSource("mi", IdentityKind.APP, error=EntraError("down", aadsts=50000))
    source.gate = asyncio.Event()
    chain = TokenChain([source], policy="app_only")
    tasks = [asyncio.create_task(chain.get_token_async(SCOPES)) for _ in range(10)]
    for _ in range(5):
        await asyncio.sleep(0)
    source.gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, EntraError) for o in outcomes)
    assert source.calls == 1
    source.error = None
    ok = await chain.get_token_async(SCOPES)
    assert ok.kind is IdentityKind.APP
    assert source.calls == 2


async def test_cancelled_leader_hands_over_to_a_waiter() -> None:
    cache = TokenCache()
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def slow() -> TokenResult:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return result(f"t{calls}")

    leader = asyncio.create_task(cache.get_or_acquire_async("k", slow))
    await started.wait()
    waiter = asyncio.create_task(cache.get_or_acquire_async("k", slow))
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    release.set()
    got = await waiter
    assert got is not None
    assert got.token == "t2"


def test_bounded_lru() -> None:
    cache = TokenCache(max_entries=3)
    for i in range(5):
        cache.get_or_acquire(f"k{i}", lambda i=i: result(f"t{i}"))
    cache.get("k2")  # touch: k2 becomes most recent
    cache.get_or_acquire("k5", lambda: result("t5"))
    assert len(cache) == 3
    assert cache.get("k0") is None
    assert cache.get("k3") is None  # least recently used after k2 was touched
    assert cache.get("k2") is not None
    assert cache.stats().evictions == 3


def test_none_is_not_cached() -> None:
    cache = TokenCache()
    calls = []
    assert cache.get_or_acquire("k", lambda: calls.append(1)) is None  # type: ignore[func-returns-value]
    assert cache.get_or_acquire("k", lambda: calls.append(1)) is None  # type: ignore[func-returns-value]
    assert len(calls) == 2


async def test_entry_capped_at_assertion_expiry() -> None:
    source = FakeSource("obo", IdentityKind.USER, needs_caller=True, lifetime=3600)
    chain = TokenChain([source])
    exp = time.time() + 600
    with bind_caller(token=make_jwt(exp=exp)):
        got = await chain.get_token_async(SCOPES)
    assert got.expires_on <= exp


def test_refresh_ahead_serves_cached_then_refreshes_once() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    calls: list[int] = []

    def acquire() -> TokenResult:
        calls.append(1)
        return result(f"t{len(calls)}", lifetime=3600)

    first = cache.get_or_acquire("k", acquire)
    assert first is not None
    assert first.token == "t1"
    clock.offset = 1000  # 2600 s left: not yet in the window (min(300, 1800))
    assert cache.get_or_acquire("k", acquire).token == "t1"  # type: ignore[union-attr]
    clock.offset = 3400  # 200 s left: inside the refresh window
    refreshed = cache.get_or_acquire("k", acquire)
    assert refreshed is not None
    assert refreshed.token == "t2"
    assert len(calls) == 2


def test_get_in_the_refresh_window_leaves_the_refresh_to_the_next_acquirer() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    cache.get_or_acquire("k", lambda: result("t1"))
    clock.offset = 3400  # inside the refresh window
    got = cache.get("k")
    assert got is not None
    assert got.token == "t1"
    refreshed = cache.get_or_acquire("k", lambda: result("t2"))
    assert refreshed is not None
    assert refreshed.token == "t2"


def test_sync_refresh_interrupted_by_a_base_exception_can_be_retried() -> None:
    class Interrupted(BaseException):
        pass

    clock = Clock()
    cache = TokenCache(clock=clock)
    cache.get_or_acquire("k", lambda: result("t1"))
    clock.offset = 3400  # inside the refresh window

    def interrupted() -> TokenResult:
        raise Interrupted

    with pytest.raises(Interrupted):
        cache.get_or_acquire("k", interrupted)
    refreshed = cache.get_or_acquire("k", lambda: result("t2"))
    assert refreshed is not None
    assert refreshed.token == "t2"


def test_refresh_failure_serves_the_still_valid_token() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    cache.get_or_acquire("k", lambda: result("t1"))
    clock.offset = 3400

    def failing() -> TokenResult:
        raise EntraError("down")

    got = cache.get_or_acquire("k", failing)
    assert got is not None
    assert got.token == "t1"


def test_expired_entry_is_not_served() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    cache.get_or_acquire("k", lambda: result("t1", lifetime=100))
    clock.offset = 95  # within the expiry skew (min(30, lifetime/10) = 10 s)
    assert cache.get("k") is None
    got = cache.get_or_acquire("k", lambda: result("t2", lifetime=100))
    assert got is not None
    assert got.token == "t2"


async def test_concurrent_refresh_only_one_leader() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    await cache.get_or_acquire_async("k", _async_result("t1"))
    clock.offset = 3400
    gate = asyncio.Event()
    calls = 0

    async def refresh() -> TokenResult:
        nonlocal calls
        calls += 1
        await gate.wait()
        return result("t2")

    leader = asyncio.create_task(cache.get_or_acquire_async("k", refresh))
    await asyncio.sleep(0)
    others = [await cache.get_or_acquire_async("k", refresh) for _ in range(5)]
    assert all(o is not None and o.token == "t1" for o in others)  # no waiting
    gate.set()
    got = await leader
    assert got is not None
    assert got.token == "t2"
    assert calls == 1


def _async_result(token: str):  # type: ignore[no-untyped-def]
    async def acquire() -> TokenResult:
        return result(token)

    return acquire


async def test_hit_path_hashes_the_assertion_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import entra_passthrough._caller as caller_module

    real = caller_module.sha256_hex
    count = 0

    def counting(value: str) -> str:
        nonlocal count
        count += 1
        return real(value)

    monkeypatch.setattr(caller_module, "sha256_hex", counting)
    source = FakeSource("obo", IdentityKind.USER, needs_caller=True)
    chain = TokenChain([source])
    with bind_caller(token=make_jwt()):
        for _ in range(200):
            await chain.get_token_async(SCOPES)
    assert count == 1
    assert source.calls == 1
    assert chain.cache.stats().hits == 199


async def test_sync_call_inside_the_loop_does_not_deadlock_on_an_async_leader() -> None:
    cache = TokenCache()
    gate = asyncio.Event()

    async def slow() -> TokenResult:
        await gate.wait()
        return result("async-leader")

    leader = asyncio.create_task(cache.get_or_acquire_async("k", slow))
    await asyncio.sleep(0)
    # A sync caller in the loop's own thread must not wait for the leader (it never could).
    got = cache.get_or_acquire("k", lambda: result("sync-own"))
    assert got is not None
    assert got.token == "sync-own"
    gate.set()
    assert (await leader) is not None
