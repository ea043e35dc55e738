"""A cold burst against a real-size CA bundle: the TLS context shared per bundle, or not.

``python -m bench._tls [--users N] [--rounds R] [--latency S]`` writes ``bench/results/tls.json``.

The other scenarios trust the emulator's own CA, one certificate: loading it costs nothing, so
they cannot show what a production process pays, whose sessions verify Entra against a bundle of
~150 certificates (certifi's). Here the session the library builds for ``ENTRA_PASSTHROUGH_CA_FILE``
(``_msal.http_session``) trusts certifi's bundle plus the emulator's CA, and serves ``users`` cold
users at once, in two variants, interleaved per round:

* ``per connection``: the same session with requests' plain ``HTTPAdapter`` mounted (64
  connections per host), as the library mounted before: urllib3 loads the bundle for every new
  connection;
* ``shared``: the session as the library builds it now (``SharedTlsAdapter``): one context per
  bundle.

Figures per variant: burst wall time, process CPU time, max event-loop lag, bundle loads
(``ssl.SSLContext.load_verify_locations`` calls), token POSTs; and the idle loop's floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._emu import Emulator
from ._roundtrip import Ticker, settle_gc
from ._util import machine, summary

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("per connection", "shared")


def _count_loads() -> tuple[list[int], Callable[[], None]]:
    count = [0]
    real = ssl.SSLContext.load_verify_locations

    def counting(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return real(self, *args, **kwargs)

    ssl.SSLContext.load_verify_locations = counting  # type: ignore[method-assign]

    def restore() -> None:
        ssl.SSLContext.load_verify_locations = real  # type: ignore[method-assign]

    return count, restore


async def run(emu: Emulator, bundle: str, *, users: int, rounds: int) -> dict[str, Any]:
    from requests.adapters import HTTPAdapter

    from entra_passthrough import Caller, OnBehalfOf, TokenChain
    from entra_passthrough._msal import http_session

    pool = await emu.mint_assertions(rounds * len(VARIANTS) * (users + 1))
    loads, restore = _count_loads()
    per: dict[str, dict[str, list[float]]] = {
        v: {"wall_ms": [], "cpu_ms": [], "max_lag_ms": [], "loads": [], "posts": []}
        for v in VARIANTS
    }
    floors: list[float] = []
    idx = 0
    try:
        for r in range(rounds):
            walls = []
            for variant in VARIANTS[r % 2 :] + VARIANTS[: r % 2]:
                session = http_session(bundle)
                session.trust_env = False  # a test CA on loopback: no proxy, no env bundle
                if variant == "per connection":
                    for prefix in ("https://", "http://"):
                        session.mount(prefix, HTTPAdapter(pool_connections=4, pool_maxsize=64))
                chain = TokenChain(
                    [
                        OnBehalfOf(
                            client_id=emu.agent.client_id,
                            tenant_id=emu.tenant_id,
                            client_secret=emu.agent.secret,
                            authority_host=emu.url,
                            http_client=session,
                        )
                    ]
                )
                try:
                    # the app's discovery and one exchange first (not timed): what is left is
                    # the cold burst of new users on a running process
                    warm = Caller.from_token(pool[idx])
                    idx += 1
                    await chain.get_token_async([emu.mcp_scope], caller=warm)
                    callers = [Caller.from_token(a) for a in pool[idx : idx + users]]
                    idx += users
                    before, posts = loads[0], emu.obo_posts()
                    settle_gc()  # here, not in the Ticker: outside the timed CPU and wall
                    cpu, t0 = time.process_time(), time.perf_counter()
                    async with Ticker(settle=False) as ticker:
                        await asyncio.gather(
                            *(chain.get_token_async([emu.mcp_scope], caller=c) for c in callers)
                        )
                    wall = time.perf_counter() - t0
                    figures = per[variant]
                    figures["wall_ms"].append(wall * 1e3)
                    figures["cpu_ms"].append((time.process_time() - cpu) * 1e3)
                    figures["max_lag_ms"].append(max(ticker.lags, default=0.0) * 1e3)
                    figures["loads"].append(loads[0] - before)
                    figures["posts"].append(emu.obo_posts() - posts)
                    walls.append(wall)
                finally:
                    chain.close()
                    session.close()
            async with Ticker() as idle:
                await asyncio.sleep(min(walls))
            floors.append(max(idle.lags, default=0.0) * 1e3)
    finally:
        restore()
    return {
        "users": users,
        "rounds": rounds,
        "emulator_latency_s": emu.token_latency,
        "idle_floor_max_lag_ms": summary(floors),
        "variants": {v: {k: summary(x) for k, x in f.items()} for v, f in per.items()},
    }


def main(argv: list[str] | None = None) -> int:
    import certifi

    parser = argparse.ArgumentParser(prog="python -m bench._tls")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--out", type=Path, default=RESULTS / "tls.json")
    args = parser.parse_args(argv)
    started = machine()  # the load average before the run
    emu = Emulator(token_latency=args.latency, users=args.rounds * 2 * (args.users + 1))
    with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as handle:
        handle.write(Path(certifi.where()).read_text() + "\n" + Path(emu.ca_file).read_text())
    try:
        result = asyncio.run(run(emu, handle.name, users=args.users, rounds=args.rounds))
    finally:
        emu.close()
        os.unlink(handle.name)
    result["machine"] = started
    text = json.dumps(result, indent=1, default=str)
    args.out.write_text(text + "\n")
    for variant, figures in result["variants"].items():
        print(
            f"{variant:15s} wall {figures['wall_ms']['median']:7.0f} ms  "
            f"CPU {figures['cpu_ms']['median']:7.0f} ms  "
            f"max lag {figures['max_lag_ms']['median']:6.1f} ms  "
            f"bundle loads {figures['loads']['median']:4.0f}  "
            f"POSTs {figures['posts']['median']:4.0f}"
        )
    print(f"idle floor      max lag {result['idle_floor_max_lag_ms']['median']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
