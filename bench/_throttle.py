"""Throttling: token POSTs while Entra answers 429 with ``Retry-After``, and the stall scenario.

``python -m bench._throttle [--quick]`` writes ``bench/results/throttle.json`` (quick:
``bench/results/quick/throttle.json``) and prints two tables.

*throttle*: one user's request gets ``429, Retry-After: R``; then ``users`` users (distinct
assertions) each call every ``interval`` until R lapses, and once more after it. Counted by the
emulator: POSTs during the wait (target: at most 1 per authority, i.e. the probe when it lapses)
and the outcomes by type. The full run uses R = 30 s; the quick run compresses it to R = 5 s
(the mechanism is the same; only the wait is shorter). Calls stop 2 s before the lapse: one
arriving in the last ``max_retry_wait`` (2 s) waits the rest out and probes at the lapse.

*stall*: the latency of a healthy user's cold acquisition while ``stalled`` other users' token
requests hang at the endpoint (target: within 1.1x of the same user's latency with no stall),
interleaved with the same acquisition and no stall (full: 21 pairs; medians with their IQR, and
the median of the paired ratios).
The emulator runs in this process (``EntraEmulator``): its fault injection can hold a request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from entra_passthrough import OnBehalfOf, Timeouts, TokenChain, bind_caller
from entra_passthrough.testing import EntraEmulator

from ._util import machine

RESULTS = Path(__file__).resolve().parent / "results"


class _Rig:
    def __init__(self, idp: EntraEmulator, timeouts: Timeouts | None = None) -> None:
        self.idp = idp
        self.http = idp.msal_http_client()
        self.obo = OnBehalfOf(
            client_id=idp.agent.client_id,
            tenant_id=idp.tenant_id,
            authority_host=idp.url,
            client_secret=idp.agent.secret,
            http_client=self.http,
            timeouts=timeouts,
        )
        self.chain = TokenChain([self.obo])
        self.scopes = [f"{idp.mcp.app_id_uri}/.default"]
        self.n = 0

    def token(self, user: str = "alice") -> str:
        self.n += 1
        return self.idp.user_token(
            user, audience=self.idp.agent.client_id, extra_claims={"uti": f"b{self.n}"}
        )

    async def call(self, assertion: str) -> str:
        with bind_caller(token=assertion):
            try:
                await self.chain.get_token_async(self.scopes)
            except Exception as exc:
                return type(exc).__name__
        return "ok"

    def posts(self) -> int:
        return int(self.idp.stats()["endpoints"]["token"])

    def close(self) -> None:
        self.chain.close()
        self.http.close()


async def throttle(*, users: int, retry_after: int, interval: float) -> dict[str, Any]:
    with EntraEmulator(token_latency=0.02) as idp:
        rig = _Rig(idp)
        try:
            await rig.call(rig.token())  # discovery and the first POST, before the fault
            idp.inject_fault("token", status=429, retry_after=retry_after, count=1_000_000)
            assertions = [rig.token("bob" if i % 2 else "alice") for i in range(users)]
            before = rig.posts()
            first = await rig.call(rig.token())
            lapse = time.monotonic() + retry_after  # the gate was set when the 429 came back
            outcomes: Counter[str] = Counter()
            rounds = 0
            max_rounds = int(retry_after / interval) + 2  # bounded
            # Rounds that end before the wait lapses (a round takes up to ~0.5 s on a busy box),
            # and before its last max_retry_wait: a call arriving then waits the rest out and
            # the first one probes at the lapse (measured by posts_after_lapse).
            stop = lapse - interval - 0.5 - Timeouts().max_retry_wait
            while time.monotonic() < stop and rounds < max_rounds:
                rounds += 1
                results = await asyncio.gather(*(rig.call(a) for a in assertions))
                outcomes.update(results)
                await asyncio.sleep(interval)
            during = rig.posts() - before
            idp.clear_faults()
            remaining = lapse - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining + 0.3)  # the scenario: Retry-After must lapse
            after_before = rig.posts()
            after = Counter(await asyncio.gather(*(rig.call(a) for a in assertions)))
            return {
                "users": users,
                "retry_after_s": retry_after,
                "interval_s": interval,
                "rounds": rounds,
                "calls_during_wait": sum(outcomes.values()) + 1,
                "first_outcome": first,
                "outcomes_during_wait": dict(outcomes),
                "posts_during_wait": during,
                "target_posts_per_authority": 1,
                "posts_after_lapse": rig.posts() - after_before,
                "outcomes_after_lapse": dict(after),
            }
        finally:
            rig.close()


async def stall(*, stalled: int, samples: int, delay: float) -> dict[str, Any]:
    """Median latency of a cold healthy acquisition, without and with ``stalled`` hung ones."""
    with EntraEmulator(token_latency=0.02) as idp:
        timeouts = Timeouts(read=delay + 5, deadline=delay + 10, retries=0)
        rig = _Rig(idp, timeouts)
        try:
            await rig.call(rig.token())
            for _ in range(3):  # warm keep-alive connections and the code path
                await rig.call(rig.token("bob"))

            async def healthy() -> float:
                t0 = time.perf_counter()
                outcome = await rig.call(rig.token("bob"))
                if outcome != "ok":
                    raise RuntimeError(f"healthy user failed: {outcome}")
                return time.perf_counter() - t0

            calm, busy = [], []
            for _ in range(samples):
                calm.append(await healthy())
                idp.inject_fault("token", status=None, delay=delay, count=stalled)
                hung = [asyncio.create_task(rig.call(rig.token())) for _ in range(stalled)]
                for _ in range(4000):  # bounded: until every hang is taken by a request
                    if not idp._rt.faults.get("token"):
                        break
                    await asyncio.sleep(0.002)
                busy.append(await healthy())
                still_hung = sum(not t.done() for t in hung)
                idp.clear_faults()
                await asyncio.gather(*hung)
                if still_hung != stalled:
                    raise RuntimeError("a stalled request ended before the healthy one")
            ratio = statistics.median(busy) / statistics.median(calm)
            return {
                "stalled": stalled,
                "samples": samples,
                "max_workers": rig.obo._pool.max_workers,
                "healthy_ms_no_stall": statistics.median(calm) * 1e3,
                "healthy_ms_with_stall": statistics.median(busy) * 1e3,
                "iqr_ms_no_stall": _iqr(calm) * 1e3,
                "iqr_ms_with_stall": _iqr(busy) * 1e3,
                # pairwise: each with-stall sample over the calm one just before it
                "pair_ratio_median": statistics.median(
                    b / c for b, c in zip(busy, calm, strict=True)
                ),
                "ratio": ratio,
                "target_ratio": 1.1,
            }
        finally:
            rig.close()


def _iqr(values: list[float]) -> float:
    if len(values) < 4:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def _iqr_text(stall: dict[str, Any], which: str) -> str:
    iqr = stall.get(f"iqr_ms_{which}")  # absent from runs before it was recorded
    return f" (IQR {iqr:.1f})" if iqr is not None else ""


def _tables(results: dict[str, Any]) -> str:
    t = results["throttle"]
    s = results["stall"]
    return "\n".join(
        [
            "| throttle (429) | users | Retry-After | calls during wait | POSTs during wait "
            "(target <= 1) | outcomes | POSTs after lapse |",
            "|---|---|---|---|---|---|---|",
            f"| entra-passthrough | {t['users']} | {t['retry_after_s']} s | "
            f"{t['calls_during_wait']} | {t['posts_during_wait']} | "
            f"{t['outcomes_during_wait']} | {t['posts_after_lapse']} |",
            "",
            "| stall | stalled users | samples | healthy, no stall (ms) | healthy, with stall "
            "(ms) | ratio of medians (target <= 1.1) | median of paired ratios |",
            "|---|---|---|---|---|---|---|",
            f"| entra-passthrough ({s['max_workers']} workers) | {s['stalled']} | "
            f"{s['samples']} | {s['healthy_ms_no_stall']:.1f}{_iqr_text(s, 'no_stall')} | "
            f"{s['healthy_ms_with_stall']:.1f}{_iqr_text(s, 'with_stall')} | "
            f"{s['ratio']:.2f} | "
            f"{format(s['pair_ratio_median'], '.2f') if 'pair_ratio_median' in s else '-'} |",
        ]
    )


async def run(quick: bool) -> dict[str, Any]:
    return {
        "machine": machine(),
        "throttle": await throttle(
            users=50, retry_after=5 if quick else 30, interval=0.25 if quick else 1.0
        ),
        # The hung requests only need to outlast one healthy acquisition (~25 ms; checked):
        # a short hang buys more samples, and the median of this noisy figure needs them.
        "stall": await stall(stalled=8, samples=3 if quick else 21, delay=2.0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._throttle", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.quick))
    out = RESULTS / "quick" if args.quick else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    (out / "throttle.json").write_text(json.dumps(results, indent=2))
    print(_tables(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
