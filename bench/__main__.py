"""``python -m bench [--quick]``: run every scenario, write bench/results/, print the table.

Exit status: 0 only if every scenario ran and every alternative produced its figures (no timing
assertions: a slow machine still passes, a missing figure does not).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import (
    _cold,
    _e2e,
    _lifetime,
    _memory,
    _middleware,
    _overhead,
    _replicas,
    _roundtrip,
    _throttle,
    _toolbox,
)
from ._emu import Emulator
from ._patterns import all_patterns, ours_available
from ._report import check_complete, evaluate_targets, update_readme, write_outputs
from ._util import machine

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Sizes:
    latencies: tuple[float, ...]
    users: int
    calls_per_user: int
    concurrency: int
    rounds: int
    burst: int
    lag_users: int
    sweep_users: tuple[int, ...]
    sweep_concurrency: tuple[int, ...]
    sweep_calls: int
    sweep_fixed_users: int
    sweep_fixed_concurrency: int
    overhead_rounds: int
    n_loopback: int
    n_inprocess: int
    mw_rounds: int
    mw_duration: float
    mw_connections: int
    memory_entries: tuple[int, ...]
    memory_real_users: int
    e2e_rounds: int
    e2e_calls: int
    # long run over several token lifetimes (bench._lifetime)
    life_users: int = 20
    life_lifetime: int = 60
    life_lifetimes: int = 3
    life_period: float = 0.1
    life_latency: float = 0.15
    # rounds of the max-loop-lag scenarios (loop_lag, cold_start): a max over a burst is the
    # noisiest figure of the run (one collection or one stall of the machine sets it)
    lag_rounds: int = 5


FULL = Sizes(
    latencies=(0.02, 0.15),
    users=50,
    calls_per_user=8,
    concurrency=16,
    rounds=3,
    burst=64,
    lag_users=100,
    sweep_users=(1, 4, 16, 64),
    sweep_concurrency=(1, 4, 16, 64),
    sweep_calls=8,
    sweep_fixed_users=8,
    sweep_fixed_concurrency=16,
    overhead_rounds=9,
    n_loopback=300,
    n_inprocess=2000,
    mw_rounds=25,  # a round moves by ~4 %: 7 rounds left the median +-2 points, the target 3
    mw_duration=3.0,
    mw_connections=16,
    memory_entries=(10_000, 100_000),
    memory_real_users=300,
    e2e_rounds=7,
    e2e_calls=10,
)

QUICK = Sizes(
    latencies=(0.02, 0.15),
    users=6,
    calls_per_user=4,
    concurrency=6,
    rounds=2,
    burst=12,
    lag_users=16,
    sweep_users=(1, 3, 6),
    sweep_concurrency=(1, 4, 12),
    sweep_calls=3,
    sweep_fixed_users=3,
    sweep_fixed_concurrency=6,
    overhead_rounds=5,
    n_loopback=60,
    n_inprocess=400,
    mw_rounds=2,
    mw_duration=1.0,
    mw_connections=8,
    memory_entries=(10_000, 100_000),
    memory_real_users=20,
    e2e_rounds=2,
    e2e_calls=3,
    life_users=4,
    life_lifetime=5,
    life_lifetimes=2,
    life_latency=0.02,
    lag_rounds=2,
)


def _label(latency: float) -> str:
    return f"{round(latency * 1000)}ms"


class Run:
    def __init__(self, sizes: Sizes, quick: bool) -> None:
        self.sizes = sizes
        self.results: dict[str, Any] = {
            "mode": "quick" if quick else "full",
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "sizes": asdict(sizes),
            "by_latency": {},
            "errors": [],
        }
        why = ours_available()
        if why is not None:
            self.results["errors"].append({"scenario": "setup", "error": why})

    async def step(self, name: str, where: dict[str, Any], coro: Any, label: str = "") -> None:
        t0 = time.perf_counter()
        print(f"  - {name} ...", file=sys.stderr, flush=True)
        ok = True
        try:
            where[name] = await coro
        except Exception as exc:
            ok = False
            where[name] = {"error": f"{type(exc).__name__}: {exc}"}
            self.results["errors"].append({"scenario": name, "error": traceback.format_exc()})
            print(f"    FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        seconds = time.perf_counter() - t0
        # every step, in order, with its status: the report lists them all (bench/_report.STEPS)
        self.results.setdefault("steps", []).append(
            {"step": name, "latency": label or None, "ok": ok, "seconds": round(seconds, 1)}
        )
        print(f"    ({seconds:.1f}s)", file=sys.stderr, flush=True)

    async def run(self) -> dict[str, Any]:
        s = self.sizes
        factories = all_patterns()
        token_for_middleware = None
        need = max(
            s.users * s.rounds + s.rounds,
            s.lag_users * s.lag_rounds,
            2 * s.rounds,
            max(s.sweep_users),
            s.sweep_fixed_users,
            s.memory_real_users + 4,
            2,
        )
        for latency in s.latencies:
            label = _label(latency)
            print(f"emulator token latency {label}", file=sys.stderr, flush=True)
            out: dict[str, Any] = {}
            self.results["by_latency"][label] = out
            try:
                emu = Emulator(token_latency=latency, users=need)
            except Exception as exc:
                self.results["errors"].append({"scenario": f"emulator {label}", "error": repr(exc)})
                continue
            try:
                pool = await emu.mint_assertions(need)
                token_for_middleware = token_for_middleware or pool[0]
                await self.step(
                    "round_trips",
                    out,
                    _roundtrip.round_trips(
                        emu,
                        factories,
                        pool,
                        users=s.users,
                        calls_per_user=s.calls_per_user,
                        concurrency=s.concurrency,
                        rounds=s.rounds,
                    ),
                    label,
                )
                await self.step(
                    "cold_burst",
                    out,
                    _roundtrip.cold_burst(emu, factories, pool, calls=s.burst, rounds=s.rounds),
                    label,
                )
                await self.step(
                    "loop_lag",
                    out,
                    _roundtrip.loop_lag(
                        emu, factories, pool, users=s.lag_users, rounds=s.lag_rounds
                    ),
                    label,
                )
                await self.step(  # burst wall time and p95 next to loop lag, every pattern
                    "cold_start",
                    out,
                    _cold.cold(emu, factories, pool, users=s.lag_users, rounds=s.lag_rounds),
                    label,
                )
                if latency == s.latencies[0]:
                    await self.step(
                        "sweep",
                        self.results,
                        _roundtrip.sweep(
                            emu,
                            factories,
                            pool,
                            users_axis=s.sweep_users,
                            concurrency_axis=s.sweep_concurrency,
                            calls_per_user=s.sweep_calls,
                            fixed_users=s.sweep_fixed_users,
                            fixed_concurrency=s.sweep_fixed_concurrency,
                        ),
                    )
                    await self.step(
                        "overhead",
                        self.results,
                        _overhead.overhead(
                            emu,
                            pool[-1],
                            rounds=s.overhead_rounds,
                            n_loopback=s.n_loopback,
                            n_inprocess=s.n_inprocess,
                        ),
                    )
                    await self.step("memory_real_path", self.results, self._memory_real(emu, pool))
                    await self.step(
                        "end_to_end",
                        self.results,
                        _e2e.end_to_end(emu, pool[-2], rounds=s.e2e_rounds, calls=s.e2e_calls),
                    )
            except Exception as exc:
                self.results["errors"].append({"scenario": label, "error": traceback.format_exc()})
                print(f"  FAILED: {exc!r}", file=sys.stderr)
            finally:
                emu.close()
        await self.step(
            "middleware",
            self.results,
            asyncio.to_thread(
                _middleware.middleware,
                token_for_middleware or "not-a-jwt",
                rounds=s.mw_rounds,
                duration=s.mw_duration,
                connections=s.mw_connections,
            ),
        )
        await self.step("memory_synthetic", self.results, self._memory_synthetic())
        await self.step("memory_chain", self.results, self._memory_chain())
        quick = self.results["mode"] == "quick"
        await self.step(
            "toolbox",
            self.results,
            _toolbox.comparison(
                users_axis=(6, 20, 40),
                calls=1 if quick else 3,
                rounds=1 if quick else s.rounds,
                timeout=20.0,  # a deadlocked run never ends; a slow one must not count
            ),
        )
        await self.step(
            "lifetime",
            self.results,
            _lifetime.long_run(
                users=s.life_users,
                lifetime=s.life_lifetime,
                lifetimes=s.life_lifetimes,
                period=s.life_period,
                latency=s.life_latency,
            ),
        )
        await self.step(
            "replicas",
            self.results,
            _replicas.replicas(quick=self.results["mode"] == "quick"),
        )
        await self.step("throttle", self.results, _throttle.run(quick))  # and the stall case
        return self.results

    async def _memory_real(self, emu: Emulator, pool: list[str]) -> dict[str, Any]:
        from ._patterns import Ours, SharedMsalApp

        n = self.sizes.memory_real_users
        out: dict[str, Any] = {"users": n}
        with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
            path = Path(tmp) / "input.json"
            path.write_text(json.dumps({"state": emu.state, "assertions": pool}))
            for name in (Ours.name, SharedMsalApp.name):
                args = ["--real", str(n), "--input", str(path), "--pattern", name]
                out[name] = await asyncio.to_thread(_memory.run_child, args)
        return out

    async def _memory_chain(self) -> list[dict[str, Any]]:
        out = []
        for n in self.sizes.memory_entries:
            out.append(await asyncio.to_thread(_memory.run_child, ["--chain", str(n)]))
        return out

    async def _memory_synthetic(self) -> list[dict[str, Any]]:
        out = []
        for n in self.sizes.memory_entries:
            out.append(await asyncio.to_thread(_memory.run_child, ["--synthetic", str(n)]))
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes for CI (~2 min)")
    parser.add_argument(
        "--out", type=Path, help="default: bench/results (quick: bench/results/quick)"
    )
    parser.add_argument("--no-charts", action="store_true")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    t0 = time.perf_counter()
    results = asyncio.run(Run(sizes, args.quick).run())
    results["duration_s"] = round(time.perf_counter() - t0, 1)
    results["targets"] = evaluate_targets(results)
    problems = check_complete(results)
    results["complete"] = not problems
    results["problems"] = problems
    markdown = write_outputs(results, out, charts=not args.no_charts)
    if out == RESULTS:  # a full run into the committed results: refresh the README's table
        update_readme(RESULTS.parent / "README.md", markdown, results.get("charts", []))
    print(markdown)
    if problems:
        print("\nINCOMPLETE:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
