"""The starts of blocking token calls are spaced by the CPU one costs (the loop-lag fix).

A cold burst started all at once put dozens of worker threads in the GIL's queue together and
the event loop waited behind them. ``WorkerPool.run`` books each call a slot on one schedule per
process, as wide as the CPU a call of that pool costs (learned from its worker's thread time),
so about one worker runs Python at a time. These tests pin the schedule's rules with a fake
clock and the pool's behaviour with counts, never times.
"""

from __future__ import annotations

import asyncio
import threading
import time
import types
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from _support.tokens import unsigned_jwt
from entra_passthrough import Caller, OnBehalfOf, Policy, TokenChain, _msal
from entra_passthrough._msal import WorkerPool, _GilSchedule


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bookings_are_spaced_by_cost_with_headroom() -> None:
    clock = FakeClock()
    schedule = _GilSchedule(clock)
    delays = [schedule.book(0.002) for _ in range(5)]
    step = 0.002 * _GilSchedule.HEADROOM
    assert delays == pytest.approx([0.0, step, 2 * step, 3 * step, 4 * step])


def test_an_idle_schedule_never_delays() -> None:
    clock = FakeClock()
    schedule = _GilSchedule(clock)
    for _ in range(10):
        assert schedule.book(0.002) == 0.0
        clock.now += 0.01  # calls further apart than their cost: nothing to space


def test_a_cheap_pool_is_not_held_back_by_its_own_calls() -> None:
    # a pool of blocking I/O or subprocesses costs its thread ~no CPU: slots of ~0 width
    schedule = _GilSchedule(FakeClock())
    assert all(schedule.book(0.0) == 0.0 for _ in range(100))


def test_no_call_waits_longer_than_max_delay() -> None:
    clock = FakeClock()
    schedule = _GilSchedule(clock)
    delays = [schedule.book(0.05) for _ in range(200)]
    assert max(delays) <= _GilSchedule.MAX_DELAY
    # past the bound the machine is saturated: calls start now, the schedule stops growing
    assert delays[-1] == 0.0
    booked = [d for d in delays if d > 0]
    assert len(booked) == int(_GilSchedule.MAX_DELAY / (0.05 * _GilSchedule.HEADROOM))


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def pool() -> Any:
    pool = WorkerPool(max_workers=4, name="test-schedule")
    executor = CountingExecutor()
    pool._executor = executor
    pool.schedule = _GilSchedule()  # this test's own timeline, not the process'
    yield pool, executor
    pool.close()


async def test_no_worker_is_woken_in_the_iteration_that_called(pool: Any) -> None:
    pool, executor = pool
    # Ten cold calls made in one loop iteration (asyncio.gather of a burst): none may wake a
    # worker while the loop is still running the others' first steps.
    tasks = [asyncio.ensure_future(pool.run(lambda: 1)) for _ in range(10)]
    await asyncio.sleep(0)  # every task's first step has run, and this one's continuation
    assert executor.submitted == 0
    assert await asyncio.gather(*tasks) == [1] * 10
    assert executor.submitted == 10


async def test_the_cost_is_learned_from_the_workers_cpu_time(pool: Any) -> None:
    pool, _ = pool
    pool.cost = 0.0

    def burn() -> None:
        start = time.thread_time()
        while time.thread_time() - start < 0.02:
            pass

    await pool.run(burn)
    # one sample of >= 20 ms of thread CPU moves the average by at least alpha x 20 ms
    assert pool.cost >= 0.02 * WorkerPool._ALPHA

    blocked = pool.cost
    event = threading.Event()
    for _ in range(20):  # a call that only waits costs its thread ~no CPU: the average falls
        await pool.run(event.wait, 0.001)
    assert pool.cost < blocked / 10


async def test_a_failing_call_is_still_measured_and_its_error_raised(pool: Any) -> None:
    pool, _ = pool
    pool.cost = 1.0

    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await pool.run(fail)
    assert pool.cost < 1.0


async def test_a_call_that_paced_itself_books_one_slot(pool: Any) -> None:
    pool, executor = pool
    clock = FakeClock()
    pool.schedule = _GilSchedule(clock)
    pool.cost = 0.0001
    await pool.pace()
    assert await pool.run(lambda: 2, paced=True) == 2
    assert executor.submitted == 1
    # one slot booked: the next call is due one slot after the first
    assert pool.schedule.book(0.0) == pytest.approx(0.0001 * _GilSchedule.HEADROOM)


def test_threads_that_waited_for_a_shared_app_build_are_spread_again() -> None:
    # The first request of a tenant builds its MSAL app (discovery, a GET); the burst's other
    # workers wait for it on a lock and would all resume at once: each that waited takes a new
    # slot (after_wait), the builder does not.
    building = threading.Event()
    release = threading.Event()
    waited: list[str] = []

    def factory(tenant: str, capabilities: tuple[str, ...]) -> object:
        building.set()
        release.wait(5)
        return object()

    apps = _msal.AppPool(
        factory, max_apps=4, after_wait=lambda: waited.append(threading.current_thread().name)
    )
    entered = threading.Semaphore(0)

    class CountingLock:  # the build's lock, counting the threads that reach it
        def __init__(self) -> None:
            self._lock = threading.Lock()

        def __enter__(self) -> None:
            entered.release()
            self._lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self._lock.release()

    apps._locks[("t", ())] = CountingLock()  # type: ignore[assignment]
    results: list[object] = []
    builder = threading.Thread(target=lambda: results.append(apps.get("t", ())), name="builder")
    builder.start()
    assert building.wait(5)
    waiters = [
        threading.Thread(target=lambda: results.append(apps.get("t", ())), name=f"w{i}")
        for i in range(3)
    ]
    for t in waiters:
        t.start()
    for _ in range(4):  # the builder and the three waiters have reached the build's lock
        assert entered.acquire(timeout=5)
    release.set()
    for t in [builder, *waiters]:
        t.join(5)
    assert len(results) == 4
    assert len({id(r) for r in results}) == 1  # built once
    assert sorted(waited) == ["w0", "w1", "w2"]
    apps.get("t", ())  # built: no wait, no new slot
    assert len(waited) == 3


def test_a_respaced_worker_waits_at_most_a_tenth_of_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The respace wait is scheduling, not network: under a short deadline it takes a tenth of
    what is left (a user-set 2 s deadline keeps 1.8 s for the POST), never the whole slot."""
    from entra_passthrough._http import deadline

    slept: list[float] = []
    # ``_msal``'s view of ``time`` only: another thread of this process sleeping meanwhile must
    # not be recorded (or held up)
    msal_time = types.SimpleNamespace(
        **{name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    )
    msal_time.sleep = slept.append
    monkeypatch.setattr(_msal, "time", msal_time)
    pool = WorkerPool(max_workers=1, name="respace")
    clock = FakeClock()
    pool.schedule = _GilSchedule(clock)
    pool.cost = 0.2  # slots of 0.3 s (the clock stands still)
    pool.respace()  # due now: no wait at all
    with deadline(2.0):
        pool.respace()  # due in 0.3 s; 2 s left: at most 0.2 s
    pool.respace()  # due in 0.6 s, no deadline set: the whole slot
    assert slept[0] == pytest.approx(0.2, abs=0.01)
    assert slept[1] == pytest.approx(0.6)
    assert len(slept) == 2


def test_one_schedule_per_process() -> None:
    # the GIL is per process: every pool books on the same timeline
    a = WorkerPool(max_workers=1, name="a")
    b = WorkerPool(max_workers=1, name="b")
    assert a.schedule is b.schedule is _msal._SCHEDULE


@pytest.mark.parametrize("tracing", [False, True])
async def test_a_cold_burst_decodes_no_claims_in_the_iteration_that_made_it(
    tracing: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncio.gather of a burst runs every call's first step in one loop iteration: decoding
    # each new caller's claims there (the preflight, the entry's cap) would be one long
    # iteration. Each call decodes them when its slot comes. With a tracer provider configured
    # the acquisition's span starts in that iteration too, and its user hash decoded the
    # claims (for sign-in hints it does not use).
    if tracing:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        monkeypatch.setattr(trace, "_TRACER_PROVIDER", TracerProvider())
    source = OnBehalfOf(
        client_id="11111111-1111-1111-1111-111111111111",
        tenant_id="t1",
        client_secret="super-secret-value-123",
        authority_host="https://127.0.0.1:9",  # nothing listens; no call gets that far
    )
    chain = TokenChain([source], policy=Policy.USER_ONLY)
    source._pool.schedule = _GilSchedule()  # this test's own timeline
    source._pool.cost = 10.0  # every slot but the first is 1 s away (MAX_DELAY)
    callers = [
        Caller.from_token(unsigned_jwt(aud="11111111-1111-1111-1111-111111111111", tid="t1"))
        for _ in range(20)
    ]
    tasks = [
        asyncio.ensure_future(chain.get_token_async(["api://mcp/.default"], caller=c))
        for c in callers
    ]
    try:
        await asyncio.sleep(0)
        decoded = 0
        for caller in callers:
            try:
                object.__getattribute__(caller, "claims")
                decoded += 1
            except AttributeError:
                pass
        assert decoded == 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        chain.close()
