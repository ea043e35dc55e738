"""TokenCache: single-flight (async, threads), errors not cached, bounded, refresh ahead."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from entra_passthrough import (
    EntraError,
    IdentityKind,
    Throttled,
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


async def test_cancelled_leader_hands_its_acquisition_over_to_the_waiter() -> None:
    """The request leading the acquisition goes away: the acquisition runs on, and the waiter
    gets its token (one call to the source, not a second one by a waiter taking over)."""
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
    assert got.token == "t1"
    assert calls == 1
    assert cache.get("k") is got


async def test_an_acquisition_cancelled_itself_is_taken_over_by_a_waiter() -> None:
    """The acquisition itself is cancelled (not its leader): a waiter takes over."""
    cache = TokenCache()
    started = asyncio.Event()
    calls = 0

    async def cancelled_once() -> TokenResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            started.set()
            await asyncio.sleep(0.05)
            raise asyncio.CancelledError
        return result(f"t{calls}")

    leader = asyncio.create_task(cache.get_or_acquire_async("k", cancelled_once))
    await started.wait()
    waiter = asyncio.create_task(cache.get_or_acquire_async("k", cancelled_once))
    with pytest.raises(asyncio.CancelledError):
        await leader
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


def test_refresh_ahead_serves_cached_then_refreshes_once_in_the_background() -> None:
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
    # the request that starts the refresh gets the cached token, it does not wait for it
    assert cache.get_or_acquire("k", acquire).token == "t1"  # type: ignore[union-attr]
    assert cache.wait_refreshes(10)
    got = cache.get("k")
    assert got is not None
    assert got.token == "t2"
    assert len(calls) == 2
    assert cache.stats().refreshes == 1


def test_a_refresh_the_source_declines_is_not_tried_again_on_the_next_request() -> None:
    """A background refresh whose source answers ``None`` (it does not apply now): the next
    attempt comes after half of what is left, as after a failure, not on every request until
    the token runs out (each one through the shared cache's lease)."""
    clock = Clock()
    cache = TokenCache(clock=clock)
    calls: list[int] = []

    def declines() -> TokenResult | None:
        calls.append(1)
        return None

    cache.get_or_acquire("k", lambda: result("t1", lifetime=3600))
    clock.offset = 3400  # 200 s left: inside the refresh window
    for _ in range(20):
        assert cache.get_or_acquire("k", declines).token == "t1"  # type: ignore[union-attr]
        assert cache.wait_refreshes(10)
    assert len(calls) == 1
    clock.offset = 3500  # past half of what was left (85 s of 170): tried once more
    assert cache.get_or_acquire("k", declines).token == "t1"  # type: ignore[union-attr]
    assert cache.wait_refreshes(10)
    assert len(calls) == 2
    assert cache.stats().refresh_failures == 0


def test_sync_request_never_waits_for_the_refresh_it_started() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    cache.get_or_acquire("k", lambda: result("t1"))
    clock.offset = 3400
    release = threading.Event()
    started = threading.Event()

    def blocked() -> TokenResult:
        started.set()
        assert release.wait(10)
        return result("t2")

    try:
        for _ in range(20):  # every request while the refresh hangs: the cached token
            got = cache.get_or_acquire("k", blocked)
            assert got is not None
            assert got.token == "t1"
        assert started.wait(10)
        assert cache.stats().refreshing == 1
        assert cache.stats().refreshes == 1  # one refresh for 20 requests
    finally:
        release.set()
    assert cache.wait_refreshes(10)
    assert cache.get("k").token == "t2"  # type: ignore[union-attr]


def test_get_in_the_refresh_window_leaves_the_refresh_to_the_next_acquirer() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    cache.get_or_acquire("k", lambda: result("t1"))
    clock.offset = 3400  # inside the refresh window
    got = cache.get("k")
    assert got is not None
    assert got.token == "t1"
    assert cache.stats().refreshes == 0
    assert cache.get_or_acquire("k", lambda: result("t2")).token == "t1"  # type: ignore[union-attr]
    assert cache.wait_refreshes(10)
    assert cache.get("k").token == "t2"  # type: ignore[union-attr]


def test_sync_refresh_interrupted_by_a_base_exception_can_be_retried() -> None:
    class Interrupted(BaseException):
        pass

    clock = Clock()
    cache = TokenCache(clock=clock)
    cache.get_or_acquire("k", lambda: result("t1"))
    clock.offset = 3400  # inside the refresh window

    def interrupted() -> TokenResult:
        raise Interrupted

    # raised in the refresh's own thread: contained there (no unhandled thread exception)
    assert cache.get_or_acquire("k", interrupted).token == "t1"  # type: ignore[union-attr]
    assert cache.wait_refreshes(10)
    clock.offset = 3560  # past the retry delay (half of what was left)
    assert cache.get_or_acquire("k", lambda: result("t2")).token == "t1"  # type: ignore[union-attr]
    assert cache.wait_refreshes(10)
    assert cache.get("k").token == "t2"  # type: ignore[union-attr]


def test_refresh_failure_serves_the_still_valid_token_and_backs_off() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    cache.get_or_acquire("k", lambda: result("t1"))
    clock.offset = 3400
    calls = 0

    def failing() -> TokenResult:
        nonlocal calls
        calls += 1
        raise EntraError("down")

    for _ in range(10):
        got = cache.get_or_acquire("k", failing)
        assert got is not None
        assert got.token == "t1"
        assert cache.wait_refreshes(10)
    # one attempt, not one per request: the next is due after half of what is left
    assert calls == 1
    assert cache.stats().refresh_failures == 1
    clock.offset = 3560
    assert cache.get_or_acquire("k", failing).token == "t1"  # type: ignore[union-attr]
    assert cache.wait_refreshes(10)
    assert calls == 2


def test_while_the_provider_throttles_a_token_is_served_to_its_own_expiry() -> None:
    # A refresh refused by throttling (or an outage) says nothing about the token: it is served
    # past the skew, to its expiry less a margin, instead of Throttled for every request of the
    # key during the skew's last seconds (30 s for an hour-long token).
    clock = Clock()
    cache = TokenCache(clock=clock)
    cache.get_or_acquire("k", lambda: result("t1"))  # expires at +3600, usable to +3570
    clock.offset = 3400

    def throttled() -> TokenResult:
        raise Throttled("token request refused", retry_after=60.0, status=429)

    assert cache.get_or_acquire("k", throttled).token == "t1"  # type: ignore[union-attr]
    assert cache.wait_refreshes(10)
    assert cache.stats().refresh_failures == 1
    clock.offset = 3580  # past the skew
    assert cache.get_or_acquire("k", throttled).token == "t1"  # type: ignore[union-attr]
    assert cache.wait_refreshes(10)
    clock.offset = 3596  # within the margin of its expiry: acquired, and the error stands
    with pytest.raises(Throttled):
        cache.get_or_acquire("k", throttled)

    # A later failure of another kind brings the skew back.
    again = TokenCache(clock=clock)
    clock.offset = 0
    again.get_or_acquire("k", lambda: result("t1"))
    clock.offset = 3400
    assert again.get_or_acquire("k", throttled).token == "t1"  # type: ignore[union-attr]
    assert again.wait_refreshes(10)
    clock.offset = 3500  # the retry is due: refused for good this time

    def refused_now() -> TokenResult:
        raise EntraError("refused")

    assert again.get_or_acquire("k", refused_now).token == "t1"  # type: ignore[union-attr]
    assert again.wait_refreshes(10)
    clock.offset = 3580
    with pytest.raises(EntraError):
        again.get_or_acquire("k", refused_now)

    # Any other failure (the user's consent revoked, a bad credential) keeps the skew.
    other = TokenCache(clock=clock)
    clock.offset = 0
    other.get_or_acquire("k", lambda: result("t1"))
    clock.offset = 3400

    def refused() -> TokenResult:
        raise EntraError("refused")

    assert other.get_or_acquire("k", refused).token == "t1"  # type: ignore[union-attr]
    assert other.wait_refreshes(10)
    clock.offset = 3580
    with pytest.raises(EntraError):
        other.get_or_acquire("k", refused)


def test_capped_entry_is_served_to_the_cap_and_never_refreshed() -> None:
    """A downstream token outlives its assertion: any token acquired later for the same
    assertion ends at the same cap, so a refresh ahead or an early refetch is a wasted POST."""
    clock = Clock()
    cache = TokenCache(clock=clock)
    cap = time.time() + 600
    calls: list[int] = []

    def acquire() -> TokenResult:
        calls.append(1)
        return result(f"t{len(calls)}", lifetime=3600)  # expires well after the cap

    stored = cache.get_or_acquire("k", acquire, cap=cap)
    assert stored is not None
    assert stored.expires_on == cap
    for offset in (0, 300, 450, 550, 590, 599):  # refresh window, then the expiry margin
        clock.offset = offset
        got = cache.get_or_acquire("k", acquire, cap=cap)
        assert got is not None
        assert got.token == "t1"
        assert cache.peek("k") is got
    assert cache.wait_refreshes(10)
    assert len(calls) == 1
    assert cache.stats().refreshes == 0
    clock.offset = 601  # past the assertion's expiry: never served
    assert cache.get("k") is None


def test_token_the_identity_provider_capped_is_served_to_its_expiry_not_refreshed() -> None:
    """An identity provider that caps the token at the assertion itself answers ``expires_in``
    in whole seconds: the token ends up to a second short of the cap. A refresh would bring the
    same capped token back (and again, at half the time left each time): it is served to its
    own expiry instead, one acquisition per assertion."""
    clock = Clock()
    cache = TokenCache(clock=clock)
    cap = time.time() + 600.5
    calls: list[int] = []

    def acquire() -> TokenResult:
        calls.append(1)
        now = clock()
        expires_in = math.floor(cap - now)  # the assertion's remaining life, rounded down
        return TokenResult(f"t{len(calls)}", now + expires_in, IdentityKind.USER, "s")

    stored = cache.get_or_acquire("k", acquire, cap=cap)
    assert stored is not None
    assert cap - 2 < stored.expires_on < cap
    for offset in (0, 300, 450, 550, 590, 598):  # refresh window, then the expiry margin
        clock.offset = offset
        got = cache.get_or_acquire("k", acquire, cap=cap)
        assert got is not None
        assert got.token == "t1"
    assert cache.wait_refreshes(10)
    assert len(calls) == 1
    assert cache.stats().refreshes == 0
    clock.offset = stored.expires_on - time.time() + 0.01  # past the token's own expiry
    assert cache.get("k") is None


def test_a_refresh_that_gained_nothing_is_not_repeated() -> None:
    """An identity provider that caps its tokens at the assertion, on a clock this host's runs
    a minute behind: every token ends a minute before the cap as this host reads it, so the cap
    does not show. The first refresh ahead brings the same end back; after it the token is
    served to its own end, not refreshed again at half the time left each time."""
    clock = Clock()
    cache = TokenCache(clock=clock)
    cap = time.time() + 3600
    calls: list[int] = []

    def acquire() -> TokenResult:
        calls.append(1)
        return TokenResult(f"t{len(calls)}", cap - 60, IdentityKind.USER, "s")

    offset = 0.0
    while offset < 3540:  # a call every 5 s over the token's life
        clock.offset = offset
        got = cache.get_or_acquire("k", acquire, cap=cap)
        assert got is not None
        assert cache.wait_refreshes(10)
        offset += 5
    assert len(calls) == 2  # the first token, and the one refresh that showed it gains nothing
    clock.offset = 3540 - 0.5  # half a second before its end: still served
    assert cache.get("k") is not None
    clock.offset = 3540 + 0.01
    assert cache.get("k") is None


@pytest.mark.parametrize(
    "cap_after", [3600 + 60, 7200], ids=["a-minute-before-its-cap", "an-hour-before-its-cap"]
)
def test_entry_that_expires_before_its_cap_is_still_refreshed_ahead(cap_after: int) -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    cap = time.time() + cap_after  # the token (3600 s) ends before its assertion
    n = 0

    def acquire() -> TokenResult:
        nonlocal n
        n += 1
        return result(f"t{n}", lifetime=3600)

    cache.get_or_acquire("k", acquire, cap=cap)
    clock.offset = 3400
    assert cache.get_or_acquire("k", acquire, cap=cap).token == "t1"  # type: ignore[union-attr]
    assert cache.wait_refreshes(10)
    assert cache.get("k").token == "t2"  # type: ignore[union-attr]


async def test_chain_makes_one_acquisition_over_a_capped_lifetime() -> None:
    clock = Clock()
    source = FakeSource("obo", IdentityKind.USER, needs_caller=True, lifetime=3600)
    chain = TokenChain([source], cache=TokenCache(clock=clock))
    exp = time.time() + 60
    with bind_caller(token=make_jwt(exp=exp)):
        for step in range(60):  # one call a second over the assertion's whole life
            clock.offset = step
            got = await chain.get_token_async(SCOPES)
            assert got.expires_on == exp
        await chain.cache.wait_refreshes_async()
    assert source.calls == 1


def test_expired_entry_is_not_served() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    cache.get_or_acquire("k", lambda: result("t1", lifetime=100))
    clock.offset = 95  # within the expiry skew (min(30, lifetime/10) = 10 s)
    assert cache.get("k") is None
    got = cache.get_or_acquire("k", lambda: result("t2", lifetime=100))
    assert got is not None
    assert got.token == "t2"


async def test_concurrent_refresh_only_one_leader_and_no_request_waits() -> None:
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

    # the gate is never set while these run: a request that waited would hang here
    got = [await cache.get_or_acquire_async("k", refresh) for _ in range(6)]
    assert all(o is not None and o.token == "t1" for o in got)
    await asyncio.sleep(0)
    assert cache.stats().refreshing == 1
    gate.set()
    await cache.wait_refreshes_async()
    assert cache.get("k").token == "t2"  # type: ignore[union-attr]
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


def test_expired_entries_of_callers_who_left_are_dropped_as_new_ones_come() -> None:
    """Under churn (a new assertion per user per hour) each caller leaves an entry that no
    lookup ever removes: before, the cache filled with dead tokens up to ``max_entries`` (15
    MiB at the default) and ``stats().size`` counted them. Each store now drops up to two
    expired entries from the least recently used end."""
    clock = Clock()
    cache = TokenCache(clock=clock, max_entries=1000)
    for i in range(100):
        cache.get_or_acquire(("old", i), lambda: result("t", lifetime=60))
    assert cache.stats().size == 100
    clock.offset = 120  # every old entry has expired; nobody looks them up again
    for i in range(50):
        cache.get_or_acquire(("new", i), lambda: result("t", lifetime=3600))
    assert cache.stats().size == 50
    assert cache.stats().evictions == 0  # dropped as expired, not evicted at the bound
    # A usable entry at the least recently used end is never dropped (nor anything behind it).
    cache.get_or_acquire(("new", 50), lambda: result("t", lifetime=3600))
    assert cache.stats().size == 51
    assert cache.get(("new", 0)) is not None
