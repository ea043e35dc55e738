"""Token round trips over several token lifetimes, with compressed lifetimes.

The round-trip scenarios last seconds; a token lives an hour, and what happens over its life
(refresh ahead, early expiry) never shows in them. Here the emulator (its own process) issues
every access token, the users' and the downstream ones, with a short lifetime (full run: 60 s),
and U users call every ``period`` (full: 100 ms) for several lifetimes. Each user renews its own
token ``renew_before`` seconds before it expires, as the user's client would (a password grant,
not counted: only OBO POSTs are). Users start staggered over the first quarter lifetime.

Figures (counts, not times, except the wait that defines "waited"):

* OBO POSTs per user per lifetime = OBO POSTs / user tokens used (each user token is one user's
  lifetime). Physical minimum: exactly 1.
* Requests that waited on Entra while a valid token was cached: a call that is not the first
  one made with its user token and took at least half the emulator's injected latency (any
  POST takes at least the whole of it; a cache hit takes microseconds).
* The cache's own counters: refreshes started, misses (requests that acquired). Misses beyond
  each user token's first call are the exact count of calls that went to Entra (or waited on
  another call that did) while a valid token was cached: each user calls in sequence, so no
  call waits on another's acquisition of its key; a call slower than the threshold above that
  acquired nothing waited on the machine (a collection, the scheduler), not on Entra.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx2

from ._emu import Emulator
from ._patterns import Ours
from ._util import percentile, summary


def _exp(token: str) -> float:
    payload = token.split(".")[1]
    return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])


async def long_run(
    *,
    users: int,
    lifetime: int,
    lifetimes: int,
    period: float,
    latency: float,
    renew_before: float | None = None,
) -> dict[str, Any]:
    renew = renew_before if renew_before is not None else lifetime / 12  # 5 min of an hour
    emu = Emulator(token_latency=latency, users=users, access_token_lifetime=lifetime)
    try:
        return await _run(emu, users, lifetime, lifetimes, period, latency, renew)
    finally:
        emu.close()


async def _run(
    emu: Emulator,
    users: int,
    lifetime: int,
    lifetimes: int,
    period: float,
    latency: float,
    renew: float,
) -> dict[str, Any]:
    pattern = Ours(emu)
    client = httpx2.AsyncClient(verify=emu.ca_file, trust_env=False, timeout=60)
    waited_after = latency / 2
    tokens_used: list[int] = []  # calls per user token
    hit_latencies: list[float] = []
    first_latencies: list[float] = []
    waited = 0
    failures: list[str] = []

    async def sign_in(i: int) -> str:
        user = emu.users[i % len(emu.users)]
        data = {
            "grant_type": "password",
            "client_id": emu.frontend.client_id,
            "username": user.upn,
            "password": user.password,
            "scope": f"{emu.agent.app_id_uri}/access_as_user",
        }
        if emu.frontend.secret:
            data["client_secret"] = emu.frontend.secret
        r = await client.post(emu.token_endpoint, data=data)
        r.raise_for_status()
        return str(r.json()["access_token"])

    async def user(i: int, start: float) -> None:
        nonlocal waited
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        end = time.time() + lifetimes * lifetime
        token, exp, calls = "", 0.0, 0
        while time.time() < end:
            if not token or exp - time.time() < renew:
                if token:
                    tokens_used.append(calls)
                token = await sign_in(i)
                exp, calls = _exp(token), 0
            t0 = time.perf_counter()
            try:
                await pattern.token(token)  # a new Caller per call, as the middleware builds
            except Exception as exc:  # counted, reported; the run goes on
                failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            took = time.perf_counter() - t0
            if calls == 0:
                first_latencies.append(took)
            else:
                hit_latencies.append(took)
                waited += took >= waited_after
            calls += 1
            await asyncio.sleep(period)
        tokens_used.append(calls)

    before = emu.stats()["grants"]["on_behalf_of"]
    t0 = time.monotonic()
    stagger = lifetime / 4
    try:
        await asyncio.gather(*(user(i, t0 + stagger * i / users) for i in range(users)))
        stats = pattern.chain.cache.stats()
    finally:
        await pattern.aclose()
        await client.aclose()
    posts = emu.stats()["grants"]["on_behalf_of"] - before
    n_tokens = len(tokens_used)
    return {
        "users": users,
        "lifetime_s": lifetime,
        "lifetimes": lifetimes,
        "period_s": period,
        "emulator_latency_s": latency,
        "renew_before_s": renew,
        "wall_s": time.monotonic() - t0,
        "calls": sum(tokens_used),
        "user_tokens": n_tokens,
        "obo_posts": posts,
        "posts_per_user_per_lifetime": posts / n_tokens if n_tokens else float("nan"),
        "waited_with_valid_token_cached": waited,
        "acquired_with_valid_token_cached": stats.misses - n_tokens,
        "waited_threshold_s": waited_after,
        "cache_refreshes": stats.refreshes,
        "cache_misses": stats.misses,
        "cache_hits": stats.hits,
        "failures": len(failures),
        "failure_examples": failures[:3],
        "hit_latency_us": {
            k: v * 1e6 if isinstance(v, float) else v for k, v in summary(hit_latencies).items()
        },
        "hit_latency_p99_us": percentile(hit_latencies, 99) * 1e6,
        "first_call_latency_ms": {
            k: v * 1e3 if isinstance(v, float) else v for k, v in summary(first_latencies).items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bench._lifetime [--quick]``: this scenario alone (the full size takes
    ``lifetimes x lifetime`` plus a quarter lifetime: about 3.5 min), results to
    ``bench/results/lifetime.json``."""
    import argparse
    from pathlib import Path

    from ._util import machine

    parser = argparse.ArgumentParser(prog="python -m bench._lifetime")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from .__main__ import FULL, QUICK

    s = QUICK if args.quick else FULL
    result = asyncio.run(
        long_run(
            users=s.life_users,
            lifetime=s.life_lifetime,
            lifetimes=s.life_lifetimes,
            period=s.life_period,
            latency=s.life_latency,
        )
    )
    result["machine"] = machine()
    text = json.dumps(result, indent=1, default=str)
    out = args.out or (
        None if args.quick else Path(__file__).resolve().parent / "results" / "lifetime.json"
    )
    if out is not None:
        out.write_text(text + "\n")
    print(text)
    from ._report import lifetime_targets

    missed = [t["name"] for t in lifetime_targets(result) if not t["pass"]]
    for name in missed:
        print(f"MISS: {name}")
    return 0 if result["failures"] == 0 and not missed else 1


if __name__ == "__main__":
    raise SystemExit(main())
