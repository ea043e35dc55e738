"""Round trips, cold burst, the users/concurrency sweep and event-loop health.

Every alternative is built fresh for each measurement (empty caches), the alternatives run in the
same process one after another in a rotated order per round, and the figures are token POSTs
counted by the emulator plus per-call latency relative to ONE raw OBO round trip measured in the
same round (the floor: what a single Entra round trip costs on this machine right now).
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx2

from ._emu import Emulator
from ._patterns import Pattern
from ._util import percentile, summary

Factory = Callable[[Emulator], Pattern]
OURS_NAME = "entra-passthrough"
OURS_IN_BURST = "entra-passthrough, Caller decoded in the burst"


async def _drive(
    pattern: Pattern, calls: Sequence[str], concurrency: int
) -> tuple[list[float], float]:
    """Run ``calls`` (one assertion per call) through ``pattern`` with at most ``concurrency``
    in flight. Returns per-call latencies and the wall time."""
    latencies: list[float] = []
    queue = iter(calls)

    async def worker() -> None:
        for assertion in queue:
            t0 = time.perf_counter()
            token = await pattern.token(assertion)
            latencies.append(time.perf_counter() - t0)
            if not token:
                raise RuntimeError(f"{pattern.name} returned an empty token")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(calls)))))
    return latencies, time.perf_counter() - t0


def workload(assertions: Sequence[str], calls_per_user: int, seed: int) -> list[str]:
    """Each user makes ``calls_per_user`` calls, users interleaved in a seeded random order."""
    calls = [a for a in assertions for _ in range(calls_per_user)]
    random.Random(seed).shuffle(calls)
    return calls


async def floor_round_trip(emu: Emulator, assertion: str, samples: int = 5) -> float:
    """Median time of one OBO POST with a warm keep-alive connection: the physical floor."""
    data = emu.obo_form(assertion)
    times = []
    async with httpx2.AsyncClient(verify=emu.ca_file, trust_env=False, timeout=60) as client:
        r = await client.post(emu.token_endpoint, data=data)  # connect + warm
        r.raise_for_status()
        for _ in range(samples):
            t0 = time.perf_counter()
            r = await client.post(emu.token_endpoint, data=data)
            times.append(time.perf_counter() - t0)
            r.raise_for_status()
    return float(summary(times)["median"])


async def measure(
    emu: Emulator, factory: Factory, calls: Sequence[str], concurrency: int
) -> dict[str, Any]:
    pattern = factory(emu)
    pattern.prepare(sorted(set(calls)))
    try:
        before = emu.obo_posts()
        latencies, wall = await _drive(pattern, calls, concurrency)
        posts = emu.obo_posts() - before
    finally:
        await pattern.aclose()
    return {
        "posts": posts,
        "wall_s": wall,
        "latency_median_s": summary(latencies)["median"],
        "latency_mean_s": sum(latencies) / len(latencies),
        "latency_p99_s": percentile(latencies, 99),
        "calls": len(calls),
    }


async def interleaved(
    emu: Emulator,
    factories: Sequence[Factory],
    make_calls: Callable[[int], tuple[list[str], str]],
    concurrency: int,
    rounds: int,
) -> dict[str, Any]:
    """Run every alternative once per round, order rotated per round; a floor per round.

    ``make_calls(round) -> (calls, floor_assertion)``.
    """
    per: dict[str, list[dict[str, Any]]] = {}
    floors: list[float] = []
    for r in range(rounds):
        calls, floor_assertion = make_calls(r)
        floors.append(await floor_round_trip(emu, floor_assertion))
        order = list(factories[r % len(factories) :]) + list(factories[: r % len(factories)])
        for factory in order:
            res = await measure(emu, factory, calls, concurrency)
            res["floor_s"] = floors[-1]
            per.setdefault(getattr(factory, "name", factory.__name__), []).append(res)
    out: dict[str, Any] = {"rounds": rounds, "floor_round_trip_s": summary(floors), "patterns": {}}
    for name, runs in per.items():
        out["patterns"][name] = {
            "posts": summary([x["posts"] for x in runs]),
            "wall_s": summary([x["wall_s"] for x in runs]),
            "latency_median_s": summary([x["latency_median_s"] for x in runs]),
            "latency_mean_s": summary([x["latency_mean_s"] for x in runs]),
            # mean time a call waited for its token, over the same round's round-trip floor
            "mean_latency_ratio_to_round_trip": summary(
                [x["latency_mean_s"] / x["floor_s"] for x in runs]
            ),
            # per-call latency over the same round's single-round-trip floor
            "latency_ratio_to_round_trip": summary(
                [x["latency_median_s"] / x["floor_s"] for x in runs]
            ),
            "wall_ratio_to_round_trip": summary([x["wall_s"] / x["floor_s"] for x in runs]),
            "calls": runs[0]["calls"],
        }
    return out


async def round_trips(
    emu: Emulator,
    factories: Sequence[Factory],
    pool: Sequence[str],
    *,
    users: int,
    calls_per_user: int,
    concurrency: int,
    rounds: int,
) -> dict[str, Any]:
    """U users x C calls at concurrency K. Fresh assertions per round (no cross-round reuse)."""
    need = users * rounds + rounds
    if len(pool) < need:
        raise ValueError(f"need {need} assertions, have {len(pool)}")

    def make(r: int) -> tuple[list[str], str]:
        base = r * (users + 1)
        assertions = list(pool[base : base + users])
        return workload(assertions, calls_per_user, seed=r), pool[base + users]

    res = await interleaved(emu, factories, make, concurrency, rounds)
    res.update(users=users, calls_per_user=calls_per_user, concurrency=concurrency, minimum=users)
    return res


async def cold_burst(
    emu: Emulator, factories: Sequence[Factory], pool: Sequence[str], *, calls: int, rounds: int
) -> dict[str, Any]:
    """``calls`` concurrent calls for ONE user with an empty cache. Physical minimum: 1 POST."""

    def make(r: int) -> tuple[list[str], str]:
        return [pool[2 * r]] * calls, pool[2 * r + 1]

    res = await interleaved(emu, factories, make, calls, rounds)
    res.update(users=1, calls_per_user=calls, concurrency=calls, minimum=1)
    return res


async def sweep(
    emu: Emulator,
    factories: Sequence[Factory],
    pool: Sequence[str],
    *,
    users_axis: Sequence[int],
    concurrency_axis: Sequence[int],
    calls_per_user: int,
    fixed_users: int,
    fixed_concurrency: int,
) -> dict[str, Any]:
    """Token POSTs as users grow (K fixed) and as concurrency grows (U fixed): the chart data."""
    out: dict[str, Any] = {"by_users": {}, "by_concurrency": {}}
    for u in users_axis:
        calls = workload(pool[:u], calls_per_user, seed=u)
        for factory in factories:
            res = await measure(emu, factory, calls, fixed_concurrency)
            out["by_users"].setdefault(factory.name, []).append([u, res["posts"]])  # type: ignore[attr-defined]
    for k in concurrency_axis:
        calls = workload(pool[:fixed_users], calls_per_user, seed=k)
        for factory in factories:
            res = await measure(emu, factory, calls, k)
            out["by_concurrency"].setdefault(factory.name, []).append([k, res["posts"]])  # type: ignore[attr-defined]
    out.update(
        calls_per_user=calls_per_user,
        fixed_users=fixed_users,
        fixed_concurrency=fixed_concurrency,
    )
    return out


# --- event-loop health ---------------------------------------------------------------------------


def settle_gc() -> None:
    """A full garbage collection, run before every measured burst and every idle floor (by
    ``Ticker`` on entry; where a timer starts before the ``Ticker``, call it first and enter
    ``Ticker(settle=False)``: a full collection walks the whole heap, however little is
    garbage).

    The patterns run one after another in one process. Without it, a full (generation 2)
    collection, 30-40 ms in the bench process and run under the GIL whichever thread triggers
    it, falls on whichever burst runs when the survivors of the earlier ones cross its
    threshold: a stall of the loop that the burst did not cause. Collections a burst does
    cause still count, and are reported with it (``Ticker.gc_pauses``)."""
    gc.collect()


class Ticker:
    """Measures event-loop lag: how late a 1 ms sleep wakes up; ``gc_pauses`` lists the
    garbage collections made meanwhile, in any thread, as (generation, ms)."""

    interval = 0.001

    def __init__(self, *, settle: bool = True) -> None:
        self.settle = settle
        self.lags: list[float] = []
        self.gc_pauses: list[tuple[int, float]] = []
        self._gc_start: float | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif self._gc_start is not None:  # not a collection already under way on entry
            pause = (time.perf_counter() - self._gc_start) * 1e3
            self.gc_pauses.append((info["generation"], pause))
            self._gc_start = None

    def gc_figures(self) -> dict[str, float]:
        """The longest collection during the run (ms) and how many were full ones."""
        return {
            "gc_max_ms": max((ms for _, ms in self.gc_pauses), default=0.0),
            "gc_full": float(sum(1 for gen, _ in self.gc_pauses if gen == 2)),
        }

    async def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, time.perf_counter() - t0 - self.interval))

    async def __aenter__(self) -> Ticker:
        if self.settle:
            settle_gc()
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            if self._task is not None:
                await self._task
        finally:
            gc.callbacks.remove(self._on_gc)


async def loop_lag(
    emu: Emulator,
    factories: Sequence[Factory],
    pool: Sequence[str],
    *,
    users: int,
    rounds: int,
) -> dict[str, Any]:
    """Max and p99 loop lag while ``users`` cold users acquire at once.

    The floor, measured in the same round: the same ticker while the loop waits as long as the
    fastest alternative took, doing nothing (an idle loop on this machine, under this load).
    """
    per: dict[str, list[dict[str, float]]] = {}
    floors: list[dict[str, float]] = []
    variants: list[tuple[str, Factory, bool]] = [
        (getattr(f, "name", f.__name__), f, True) for f in factories
    ]
    if any(name == OURS_NAME for name, _, _ in variants):
        ours = next(f for name, f, _ in variants if name == OURS_NAME)
        # also with the Caller built inside the burst (as if capture and acquisition coincided)
        variants.append((OURS_IN_BURST, ours, False))
    for r in range(rounds):
        assertions = list(pool[r * users : (r + 1) * users])
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        walls = []
        for label, factory, prepare in order:
            pattern = factory(emu)
            if prepare:
                pattern.prepare(assertions)
            try:
                async with Ticker() as ticker:
                    t0 = time.perf_counter()
                    await asyncio.gather(*(pattern.token(a) for a in assertions))
                    walls.append(time.perf_counter() - t0)
            finally:
                await pattern.aclose()
            per.setdefault(label, []).append(
                {
                    "max_ms": max(ticker.lags, default=0) * 1e3,
                    "p99_ms": percentile(ticker.lags, 99) * 1e3,
                    "wall_s": walls[-1],
                    **ticker.gc_figures(),
                }
            )
        async with Ticker() as idle:
            await asyncio.sleep(min(walls))
        floors.append(
            {"max_ms": max(idle.lags, default=0) * 1e3, "p99_ms": percentile(idle.lags, 99) * 1e3}
        )
    out: dict[str, Any] = {
        "rounds": rounds,
        "users": users,
        "floor": {
            "max_ms": summary([f["max_ms"] for f in floors]),
            "p99_ms": summary([f["p99_ms"] for f in floors]),
        },
        "patterns": {},
    }
    for name, runs in per.items():
        out["patterns"][name] = {
            "max_ms": summary([x["max_ms"] for x in runs]),
            "p99_ms": summary([x["p99_ms"] for x in runs]),
            "wall_s": summary([x["wall_s"] for x in runs]),
            "gc_max_ms": summary([x["gc_max_ms"] for x in runs]),
            "gc_full": summary([x["gc_full"] for x in runs]),
            "max_over_floor_ms": summary(
                [x["max_ms"] - f["max_ms"] for x, f in zip(runs, floors, strict=True)]
            ),
        }
    return out
