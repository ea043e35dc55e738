"""Stalled token requests never hold healthy users back, however many there are.

Each source has a pool of ``max_workers`` threads. When that many requests stalled (an endpoint
that accepts and answers only at the deadline, one tenant's endpoint among several), a healthy
user's request queued behind them until one ended: it waited out their deadline, or failed
with "the deadline passed before Entra answered" although it was never sent. Now a call that
would queue behind stalled calls runs on an overflow thread, one per stalled call. A burst of
healthy calls that merely outnumbers the workers queues as before. Counts and generous bounds,
no timings."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from entra_passthrough import Caller, OnBehalfOf, Timeouts, TokenChain
from entra_passthrough._msal import WorkerPool
from entra_passthrough.testing import EntraEmulator

#: Generous: a stalled call is released only after the test's checks (or this bound).
BOUND = 30.0


@pytest.fixture
def quick_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WorkerPool, "STALL_AFTER", 0.2)
    monkeypatch.setattr(WorkerPool, "STALL_CHECK", 0.02)


def _overflow_threads() -> int:
    return sum(1 for t in threading.enumerate() if "-overflow" in t.name)


async def test_calls_behind_a_pool_of_stalled_calls_run_beside_them(quick_stalls: None) -> None:
    pool = WorkerPool(max_workers=2, name="stall-test")
    release = threading.Event()
    overlapping: list[int] = []
    healthy_running = 0
    lock = threading.Lock()

    def stalled() -> str:
        release.wait(BOUND)
        return "stalled"

    def healthy() -> str:
        nonlocal healthy_running
        with lock:
            healthy_running += 1
            overlapping.append(healthy_running)
        threading.Event().wait(0.05)
        with lock:
            healthy_running -= 1
        return "healthy"

    try:
        stalls = [asyncio.ensure_future(pool.run(stalled, paced=True)) for _ in range(2)]
        await asyncio.sleep(0.3)  # both workers hold a call older than STALL_AFTER
        answers = await asyncio.wait_for(
            asyncio.gather(*(pool.run(healthy, paced=True) for _ in range(5))), BOUND / 2
        )
        assert answers == ["healthy"] * 5
        assert not any(s.done() for s in stalls)  # they still hold both workers
        assert max(overlapping) <= 2  # one overflow thread per stalled call, no more
        release.set()
        assert await asyncio.gather(*stalls) == ["stalled", "stalled"]
    finally:
        release.set()
        pool.close()


async def test_a_burst_larger_than_the_pool_queues_without_overflow(quick_stalls: None) -> None:
    pool = WorkerPool(max_workers=2, name="burst-test")
    seen: list[str] = []

    def short() -> None:
        seen.append(threading.current_thread().name)
        threading.Event().wait(0.01)

    try:
        await asyncio.wait_for(
            asyncio.gather(*(pool.run(short, paced=True) for _ in range(12))), BOUND
        )
        assert len(seen) == 12
        assert not [name for name in seen if "-overflow" in name]
    finally:
        pool.close()


async def test_a_queued_call_whose_caller_gives_up_is_dropped(quick_stalls: None) -> None:
    pool = WorkerPool(max_workers=1, name="drop-test")
    release = threading.Event()
    started = threading.Event()
    ran: list[str] = []

    def block() -> None:
        started.set()
        release.wait(BOUND)

    try:
        first = asyncio.ensure_future(pool.run(block, paced=True))
        # Running (a paced call may wait for its slot first), and not stalled yet: the next
        # call queues behind it. A fixed sleep here let the next call find the worker free
        # when the first was still waiting for its slot, after another test's bookings.
        for _ in range(int(BOUND / 0.005)):
            if started.is_set():
                break
            await asyncio.sleep(0.005)
        assert started.is_set()
        with pytest.raises(TimeoutError):
            await pool.run(ran.append, "late", paced=True, wait_at_most=0.1)
        release.set()
        await first
        await pool.run(ran.append, "next", paced=True)
        assert ran == ["next"]  # the call whose caller gave up never ran
    finally:
        release.set()
        pool.close()


# -- end to end: the emulator stalls two users' token requests; a third user is answered ------


@pytest.fixture
def idp() -> Iterator[EntraEmulator]:
    with EntraEmulator() as emulator:
        yield emulator


async def test_a_healthy_user_is_answered_while_every_worker_waits_on_a_stalled_request(
    idp: EntraEmulator, quick_stalls: None
) -> None:
    http = idp.msal_http_client()
    source = OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.agent.secret,
        authority_host=idp.url,
        http_client=http,
        max_workers=2,
        timeouts=Timeouts(deadline=BOUND),
    )
    chain = TokenChain([source])
    scopes = [f"{idp.mcp.app_id_uri}/.default"]

    def caller(user: str) -> Caller:
        return Caller.from_token(idp.user_token(user, audience=idp.agent.client_id))

    try:
        await chain.get_token_async(scopes, caller=caller("alice"))  # discovery, warm
        idp.inject_fault("token", status=None, delay=BOUND / 2, count=2)  # answered late
        stalled = [
            asyncio.ensure_future(chain.get_token_async(scopes, caller=caller(user)))
            for user in ("bob", "alice")
        ]
        await asyncio.sleep(0.5)  # both workers wait on Entra, past STALL_AFTER
        healthy = await asyncio.wait_for(
            chain.get_token_async(scopes, caller=caller("bob")), BOUND / 3
        )
        assert healthy.token
        assert not any(s.done() for s in stalled)
        assert _overflow_threads() >= 1
        for each in stalled:
            each.cancel()
        await asyncio.gather(*stalled, return_exceptions=True)
    finally:
        idp.clear_faults()
        chain.close()
        http.close()
