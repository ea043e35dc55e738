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


def _unsigned_jwt(claims: dict[str, Any]) -> str:
    import base64

    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'RS256', 'typ': 'JWT', 'kid': 'k1'})}.{seg(claims)}.{'s' * 342}"


async def through_chain(n: int, token_len: int) -> dict[str, Any]:
    """``n`` users through the real ``TokenChain`` and ``OnBehalfOf`` (key, partition, cap,
    result built by the source's own code from an MSAL-shaped answer), each with a fresh
    ``Caller`` decoded from its own token, dropped after its call as a request's is. Only the
    network exchange is replaced (no sockets, no TLS buffers in the figure). RSS delta per
    entry, over the token's own size."""
    import uuid

    from entra_passthrough import Caller, OnBehalfOf, TokenChain, TokenRequest, TokenResult
    from entra_passthrough._sources._base import result_from_msal
    from entra_passthrough._types import IdentityKind

    tenant = str(uuid.UUID(int=1))
    client_id = str(uuid.UUID(int=2))
    source = OnBehalfOf(client_id=client_id, tenant_id=tenant, client_secret="bench-secret")
    template = "x" * (token_len - 12)
    counter = 0

    def exchange(request: TokenRequest, tenant: str, assertion: str, exp: float) -> TokenResult:
        nonlocal counter
        counter += 1
        answer = {"access_token": f"{template}{counter:012d}", "expires_in": 3600}
        return result_from_msal(
            answer, kind=IdentityKind.USER, source=source.name, scopes=request.scopes, cap=exp
        )

    async def get_token_async(request: TokenRequest) -> TokenResult | None:
        if source.cache_partition(request) is None:
            return None
        tid, assertion, exp = source.preflight(request)
        return exchange(request, tid, assertion, exp)

    source.get_token_async = get_token_async  # type: ignore[method-assign]
    chain = TokenChain([source], cache=_sized_cache(n))
    scopes = ("api://mcp/.default",)  # EntraAuth passes its own tuple: no copy per call
    exp = int(time.time()) + 3600

    def user_token(i: int) -> str:
        return _unsigned_jwt(
            {
                "aud": client_id,
                "iss": f"https://login.microsoftonline.com/{tenant}/v2.0",
                "tid": tenant,
                "oid": str(uuid.UUID(int=10_000 + i)),
                "scp": "access_as_user",
                "exp": exp,
                "ver": "2.0",
            }
        )

    async def one(i: int) -> None:
        # a request: its token and Caller are gone once it ends
        await chain.get_token_async(scopes, caller=Caller.from_token(user_token(i)))

    await one(-1)  # warm: imports, the chain's plan, the first MSAL-free path
    chain.cache.clear()
    gc.collect()
    before = rss()
    for i in range(n):
        await one(i)
    gc.collect()
    after = rss()
    per_entry = (after - before) / n
    source.close()
    return {
        "entries": len(chain.cache),
        "token_bytes": token_len,
        "rss_per_entry_bytes": per_entry,
        "overhead_per_entry_bytes": per_entry - token_len,
    }


def _sized_cache(n: int) -> Any:
    from entra_passthrough import TokenCache

    return TokenCache(max_entries=n)


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
    parser.add_argument("--chain", type=int, help="entries through the real TokenChain")
    parser.add_argument("--token-len", type=int, default=1500)
    parser.add_argument("--real", type=int)
    parser.add_argument("--input", type=Path, help="JSON: emulator state + assertions")
    parser.add_argument("--pattern", default="entra-passthrough")
    args = parser.parse_args()
    if args.synthetic:
        res = asyncio.run(synthetic(args.synthetic, args.token_len))
    elif args.chain:
        res = asyncio.run(through_chain(args.chain, args.token_len))
    else:
        data = json.loads(args.input.read_text())
        res = asyncio.run(real_path(data["state"], args.real, data["assertions"], args.pattern))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
