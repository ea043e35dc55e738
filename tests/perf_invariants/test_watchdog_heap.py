"""The deadline watchdog holds about the attempts in flight, not every attempt armed within the
last deadline's length: attempts end long before their deadline (a 30 s deadline, answers in
tens of milliseconds), and their finished watches are dropped as new ones are armed."""

from __future__ import annotations

import time

from entra_passthrough import _http


def test_finished_watches_do_not_pile_up_behind_the_next_deadline() -> None:
    watchdog = _http._Watchdog()
    for _ in range(1000):  # sequential attempts, each over before the next
        watchdog.arm(time.monotonic() + 60).finish()
    assert len(watchdog._heap) <= 1


def test_a_long_attempt_at_the_top_does_not_keep_the_finished_ones_behind_it() -> None:
    watchdog = _http._Watchdog()
    stuck = watchdog.arm(time.monotonic() + 30)  # due first, still running
    live = [watchdog.arm(time.monotonic() + 60) for _ in range(10)]
    for _ in range(1000):
        watchdog.arm(time.monotonic() + 60).finish()
    heap = watchdog._heap
    assert len(heap) < 2 * _http._Watchdog.COMPACT_FROM
    kept = {id(entry[2]) for entry in heap}
    assert {id(w) for w in (stuck, *live)} <= kept  # every attempt in flight is still watched
    assert heap[0][2] is stuck  # and the next to come due is still first
    for watch in (stuck, *live):
        watch.finish()
