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
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from entra_passthrough import _msal
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


async def test_a_slot_beyond_the_callers_wait_is_refused_before_submitting(pool: Any) -> None:
    pool, executor = pool
    clock = FakeClock()
    pool.schedule = _GilSchedule(clock)
    pool.cost = 0.5 / _GilSchedule.HEADROOM  # slots 0.5 s wide
    pool.schedule.book(pool.cost)  # the next free slot is 0.5 s away
    with pytest.raises(TimeoutError):
        await pool.run(lambda: 1, wait_at_most=0.25)
    assert executor.submitted == 0  # nothing left running in a worker


def test_one_schedule_per_process() -> None:
    # the GIL is per process: every pool books on the same timeline
    a = WorkerPool(max_workers=1, name="a")
    b = WorkerPool(max_workers=1, name="b")
    assert a.schedule is b.schedule is _msal._SCHEDULE
