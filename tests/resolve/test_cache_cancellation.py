"""TokenCache single-flight: a waiter that is cancelled (its client went away) cancels its own
wait only; the leader's token, or its error, still reaches the other waiters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from entra_passthrough import IdentityKind, SourceUnavailable, TokenCache, TokenResult


async def _leader_waiter_and_a_cancelled_waiter(
    acquire: Callable[[], Awaitable[TokenResult]], gate: asyncio.Event
) -> tuple[list[Any], asyncio.Task[Any]]:
    """Three requests for one key: the leader acquires, two wait on it; one waiter is cancelled
    while the acquisition is held at ``gate``, then the gate opens. Returns the leader's and the
    remaining waiter's outcomes (exceptions included) and the cancelled task."""
    cache = TokenCache()
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
    return list(results), gone


async def test_a_cancelled_waiter_does_not_break_the_leader_or_other_waiters() -> None:
    # A client that disconnects while waiting for another request's acquisition of the same
    # key cancels its own wait only: the leader and the other waiters still get the token.
    gate = asyncio.Event()
    calls = 0

    async def acquire() -> TokenResult:
        nonlocal calls
        calls += 1
        await gate.wait()
        return TokenResult("eyJ.t.s", time.time() + 3600, IdentityKind.USER, "src")

    (first, second), gone = await _leader_waiter_and_a_cancelled_waiter(acquire, gate)
    assert isinstance(first, TokenResult)
    assert isinstance(second, TokenResult)
    assert first.token == second.token == "eyJ.t.s"
    assert gone.cancelled()
    assert calls == 1


async def test_a_cancelled_waiter_does_not_stop_the_leaders_error_reaching_others() -> None:
    gate = asyncio.Event()

    async def acquire() -> TokenResult:
        await gate.wait()
        raise SourceUnavailable("down", source="src")

    results, gone = await _leader_waiter_and_a_cancelled_waiter(acquire, gate)
    assert [type(r) for r in results] == [SourceUnavailable, SourceUnavailable]
    assert gone.cancelled()
