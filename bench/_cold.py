"""Cold starts: N new users at once, every pattern, burst wall time, per-call p95 and loop lag.

``python -m bench._cold [--quick] [--users N] [--latency 0.02 0.15]`` writes
``bench/results/cold.json`` (quick: ``bench/results/quick/cold.json``) and prints a table.

Per round, every pattern is built fresh (empty caches, worker threads started as the source's
constructor starts them) and serves ``users`` distinct cold users at once; the patterns run one
after another in a rotated order. The idle floor is the same ticker on an idle loop for as long as
the fastest pattern took. Target (issue 12): ours within 1.2x of the best baseline's wall time,
and max loop lag within the idle floor + 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._emu import Emulator
from ._patterns import all_patterns
from ._roundtrip import OURS_NAME, Factory, Ticker
from ._util import machine, percentile, summary

RESULTS = Path(__file__).resolve().parent / "results"


async def _burst(pattern: Any, assertions: Sequence[str]) -> tuple[list[float], float, Ticker]:
    latencies: list[float] = []

    async def one(assertion: str) -> None:
        t0 = time.perf_counter()
        token = await pattern.token(assertion)
        latencies.append(time.perf_counter() - t0)
        if not token:
            raise RuntimeError(f"{pattern.name} returned an empty token")

    async with Ticker() as ticker:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(a) for a in assertions))
        wall = time.perf_counter() - t0
    return latencies, wall, ticker


async def cold(
    emu: Emulator, factories: Sequence[Factory], pool: Sequence[str], *, users: int, rounds: int
) -> dict[str, Any]:
    per: dict[str, list[dict[str, float]]] = {}
    floors: list[float] = []
    for r in range(rounds):
        assertions = list(pool[r * users : (r + 1) * users])
        order = list(factories[r % len(factories) :]) + list(factories[: r % len(factories)])
        walls = []
        for factory in order:
            pattern = factory(emu)
            pattern.prepare(assertions)
            before = emu.obo_posts()
            try:
                latencies, wall, ticker = await _burst(pattern, assertions)
            finally:
                await pattern.aclose()
            walls.append(wall)
            per.setdefault(pattern.name, []).append(
                {
                    "wall_s": wall,
                    "p50_s": percentile(latencies, 50),
                    "p95_s": percentile(latencies, 95),
                    "max_lag_ms": max(ticker.lags, default=0.0) * 1e3,
                    "p99_lag_ms": percentile(ticker.lags, 99) * 1e3,
                    "posts": emu.obo_posts() - before,
                    **ticker.gc_figures(),
                }
            )
        async with Ticker() as idle:
            await asyncio.sleep(min(walls))
        floors.append(max(idle.lags, default=0.0) * 1e3)
    out: dict[str, Any] = {
        "users": users,
        "rounds": rounds,
        "latency_ms": round(emu.token_latency * 1000),
        "idle_floor_max_lag_ms": summary(floors),
        "patterns": {},
    }
    for name, runs in per.items():
        out["patterns"][name] = {
            key: summary([x[key] for x in runs])
            for key in (
                "wall_s",
                "p50_s",
                "p95_s",
                "max_lag_ms",
                "p99_lag_ms",
                "posts",
                "gc_max_ms",
                "gc_full",
            )
        }
    ours = out["patterns"].get(OURS_NAME)
    baselines = {n: p for n, p in out["patterns"].items() if n != OURS_NAME}
    if ours and baselines:
        best_name, best = min(baselines.items(), key=lambda kv: kv[1]["wall_s"]["median"])
        floor = out["idle_floor_max_lag_ms"]["median"]
        out["targets"] = {
            "best_baseline": best_name,
            "wall_ratio_vs_best": ours["wall_s"]["median"] / best["wall_s"]["median"],
            "wall_target": 1.2,
            "max_lag_over_floor_ms": ours["max_lag_ms"]["median"] - floor,
            "lag_target_ms": 5.0,
        }
    return out


def _table(results: dict[str, Any]) -> str:
    lines = [
        "| latency | pattern | wall (ms) | p50 (ms) | p95 (ms) | max loop lag (ms) | POSTs |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, res in results["by_latency"].items():
        for name, p in res["patterns"].items():
            lines.append(
                f"| {label} | {name} | {p['wall_s']['median'] * 1e3:.0f} | "
                f"{p['p50_s']['median'] * 1e3:.0f} | {p['p95_s']['median'] * 1e3:.0f} | "
                f"{p['max_lag_ms']['median']:.1f} | {p['posts']['median']:.0f} |"
            )
        floor = res["idle_floor_max_lag_ms"]["median"]
        lines.append(f"| {label} | (idle loop floor) | | | | {floor:.1f} | |")
        t = res.get("targets")
        if t:
            lines.append(
                f"| {label} | **target** | ours/{t['best_baseline']} = "
                f"{t['wall_ratio_vs_best']:.2f}x (<= 1.2x) | | | "
                f"+{t['max_lag_over_floor_ms']:.1f} over floor (<= 5) | |"
            )
    return "\n".join(lines)


async def run(users: int, rounds: int, latencies: Sequence[float]) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "by_latency": {}}
    factories = all_patterns()
    for latency in latencies:
        with Emulator(token_latency=latency, users=users * rounds) as emu:
            pool = await emu.mint_assertions(users * rounds)
            label = f"{round(latency * 1000)}ms"
            print(f"cold burst, {users} users, {label}", file=sys.stderr, flush=True)
            results["by_latency"][label] = await cold(
                emu, factories, pool, users=users, rounds=rounds
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._cold", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--users", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--latency", type=float, nargs="+", default=[0.02, 0.15])
    args = parser.parse_args(argv)
    users = args.users or (16 if args.quick else 100)
    rounds = args.rounds or (1 if args.quick else 3)
    results = asyncio.run(run(users, rounds, args.latency))
    out = RESULTS / "quick" if args.quick else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    (out / "cold.json").write_text(json.dumps(results, indent=2))
    print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
