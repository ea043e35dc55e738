"""CpuGate: at most ``slots`` workers run outside a network wait at once; never a deadlock."""

from __future__ import annotations

import threading
import time

from entra_passthrough._http import CpuGate, network_wait


def test_one_worker_runs_at_a_time_and_waits_give_the_slot_up() -> None:
    gate = CpuGate(1, regain=5.0)
    running = 0
    peak = 0
    lock = threading.Lock()
    waited_together = threading.Barrier(6, timeout=10)

    def busy() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.005)  # MSAL's Python work (a sleep lets the others try to run now)
        with lock:
            running -= 1

    def worker() -> None:
        with gate.hold():
            busy()
            with network_wait():
                waited_together.wait()  # all six wait on the "network" at the same time
            busy()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert peak == 1


def test_a_slot_holder_blocked_on_a_lock_never_deadlocks() -> None:
    """A holds the slot and waits for a lock B holds; B, back from the network, cannot regain
    the slot in time and goes on without it."""
    gate = CpuGate(1, regain=0.05)
    shared = threading.Lock()
    b_waiting = threading.Event()
    done: list[str] = []

    def b() -> None:
        with gate.hold(), shared:
            with network_wait():
                b_waiting.set()
                time.sleep(0.05)  # the network
            done.append("b")

    def a() -> None:
        b_waiting.wait(5)
        with gate.hold(), shared:  # takes the slot B gave up, then blocks on B's lock
            done.append("a")

    threads = [threading.Thread(target=b), threading.Thread(target=a)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert done == ["b", "a"]
