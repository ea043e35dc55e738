"""TokenCache single-flight: a waiter that is cancelled (its client went away) cancels its own
wait only; the leader's token, or its error, still reaches the other waiters."""

from __future__ import annotations

from entra_passthrough import IdentityKind


async def test_a_cancelled_waiter_does_not_break_the_leader_or_other_waiters() -> None:
    # A client that disconnects while waiting for another request's acquisition of the same
    # key cancels its own wait only: the leader and the other waiters still get the token.
    import asyncio
    import time

    from entra_passthrough import TokenCache, TokenResult

    cache = TokenCache()
    gate = asyncio.Event()
    calls = 0

    async def acquire() -> TokenResult:
        nonlocal calls
        calls += 1
        await gate.wait()
        return TokenResult("eyJ.t.s", time.time() + 3600, IdentityKind.USER, "src")

    leader = asyncio.create_task(cache.get_or_acquire_async("k", acquire))
    await asyncio.sleep(0)
    gone = asyncio.create_task(cache.get_or_acquire_async("k", acquire))
    other = asyncio.create_task(cache.get_or_acquire_async("k", acquire))
    for _ in range(5):
        await asyncio.sleep(0)
    gone.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    first, second = await asyncio.gather(leader, other)
    assert first is not None
    assert second is not None
    assert first.token == second.token == "eyJ.t.s"
    assert gone.cancelled()
    assert calls == 1


async def test_a_cancelled_waiter_does_not_stop_the_leaders_error_reaching_others() -> None:
    import asyncio

    from entra_passthrough import SourceUnavailable, TokenCache, TokenResult

    cache = TokenCache()
    gate = asyncio.Event()

    async def acquire() -> TokenResult:
        await gate.wait()
        raise SourceUnavailable("down", source="src")

    leader = asyncio.create_task(cache.get_or_acquire_async("k", acquire))
    await asyncio.sleep(0)
    gone = asyncio.create_task(cache.get_or_acquire_async("k", acquire))
    other = asyncio.create_task(cache.get_or_acquire_async("k", acquire))
    for _ in range(5):
        await asyncio.sleep(0)
    gone.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(leader, other, return_exceptions=True)
    assert [type(r) for r in results] == [SourceUnavailable, SourceUnavailable]
    assert gone.cancelled()
