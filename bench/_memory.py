"""Memory per cached token, measured in a FRESH child process (``python -m bench._memory``).

Two figures:

* synthetic: ``TokenCache`` filled through its public path (``get_or_acquire_async``) with N
  entries of realistic size (key shaped as the chain builds it, token the length of a real
  emulator OBO token); RSS delta / N, next to the token size. Then 2x the bound into a cache of
  ``max_entries=N`` : its size must stay at N.
* real path: M distinct users through the real OBO flow against the emulator, for us and for the
  shared MSAL app baseline, each in its own fresh process after a warm-up; the entries held by
  EVERY ``msal.TokenCache`` alive in the process (found with ``gc``: access, refresh, id tokens,
  accounts) plus our own cache, and the RSS each further user adds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._emu import Emulator

import msal


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def msal_cache_entries() -> dict[str, int]:
    """Entries of every msal.TokenCache alive in this process, by credential type."""
    totals: dict[str, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, msal.TokenCache):
            for kind, entries in getattr(obj, "_cache", {}).items():
                totals[kind] = totals.get(kind, 0) + len(entries)
    return totals


async def synthetic(n: int, token_len: int) -> dict[str, Any]:
    from entra_passthrough import TokenCache
    from entra_passthrough._types import IdentityKind, TokenResult

    cache = TokenCache(max_entries=n)
    exp = time.time() + 3600
    template = "x" * (token_len - 12)
    gc.collect()
    before = rss()
    for i in range(n):
        digest = hashlib.sha256(str(i).encode()).hexdigest()
        key = ("obo", ("client-id", "tenant-id", digest), ("api://mcp/.default",), None, ())
        token = f"{template}{i:012d}"  # distinct token strings of a real token's length

        async def acquire(token: str = token) -> TokenResult:
            return TokenResult(token=token, expires_on=exp, kind=IdentityKind.USER, source="obo")

        await cache.get_or_acquire_async(key, acquire, cap=exp)
    gc.collect()
    after = rss()
    size_full = len(cache)
    # the bound: 2x max_entries more distinct keys
    for i in range(n, 3 * n):
        key = ("obo", ("c", "t", str(i)), ("s",), None, ())

        async def acquire2(i: int = i) -> TokenResult:
            return TokenResult(
                token=f"{template}{i:012d}", expires_on=exp, kind=IdentityKind.USER, source="obo"
            )

        await cache.get_or_acquire_async(key, acquire2, cap=exp)
    gc.collect()
    after_bound = rss()
    per_entry = (after - before) / n
    return {
        "entries": n,
        "token_bytes": token_len,
        "rss_per_entry_bytes": per_entry,
        "overhead_per_entry_bytes": per_entry - token_len,
        "size_after_fill": size_full,
        "size_after_2x_more": len(cache),
        "max_entries": n,
        "within_bound": len(cache) <= n,
        "rss_growth_after_2x_more_bytes": after_bound - after,
    }


async def real_path(
    state: dict[str, Any], users: int, assertions: list[str], pattern_name: str
) -> dict[str, Any]:
    """One alternative in this (fresh) process: warm it with a few users (imports, threads,
    connections, MSAL app), then measure what ``users`` MORE distinct users add."""
    from ._emu import Emulator
    from ._patterns import Ours, Pattern, SharedMsalApp

    factories: dict[str, Callable[[Emulator], Pattern]] = {
        Ours.name: Ours,
        SharedMsalApp.name: SharedMsalApp,
    }
    factory = factories[pattern_name]
    emu = Emulator.attach(state)
    warm, measured = assertions[:4], assertions[4 : 4 + users]
    if len(measured) < users:
        raise ValueError(f"need {users + 4} assertions, have {len(assertions)}")
    pattern = factory(emu)
    sem = asyncio.Semaphore(8)

    async def one(a: str) -> None:
        async with sem:
            await pattern.token(a)

    await asyncio.gather(*(one(a) for a in warm))
    gc.collect()
    before_entries = msal_cache_entries()
    before = rss()
    await asyncio.gather(*(one(a) for a in measured))
    gc.collect()
    after = rss()
    entries = msal_cache_entries()
    grown = {k: v - before_entries.get(k, 0) for k, v in entries.items()}
    ours_len = len(pattern.chain.cache) if isinstance(pattern, Ours) else 0
    await pattern.aclose()
    emu.detach()
    return {
        "users": users,
        "msal_cache_entries": grown,
        "msal_cache_entries_total": entries,
        "msal_entries_per_user": sum(grown.values()) / users,
        "our_cache_entries": ours_len,
        "rss_per_user_bytes": (after - before) / users,
    }


def run_child(args: list[str], timeout: float = 600) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench._memory", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed: {proc.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--synthetic", type=int)
    parser.add_argument("--token-len", type=int, default=1500)
    parser.add_argument("--real", type=int)
    parser.add_argument("--input", type=Path, help="JSON: emulator state + assertions")
    parser.add_argument("--pattern", default="entra-passthrough")
    args = parser.parse_args()
    if args.synthetic:
        res = asyncio.run(synthetic(args.synthetic, args.token_len))
    else:
        data = json.loads(args.input.read_text())
        res = asyncio.run(real_path(data["state"], args.real, data["assertions"], args.pattern))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
