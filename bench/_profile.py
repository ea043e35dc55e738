"""Profiling helpers behind the "where the time goes" notes in bench/README.md.

``python -m bench._profile middleware``  in-process ASGI calls, plain app vs CallerMiddleware
``python -m bench._profile authflow``    EntraAuth cache-hit flow on a MockTransport (needs the
                                          emulator: started in its own process)

Each prints µs per call for both variants (interleaved rounds, medians) and the top functions
of a cProfile run of the variant under test, sorted by own time.
"""

from __future__ import annotations

import asyncio
import base64
import cProfile
import io
import json
import pstats
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any


def realistic_jwt() -> str:
    """An Entra v2 user token of realistic size and claim set (unsigned: decode-only paths)."""

    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    now = int(time.time())
    tid = str(uuid.uuid4())
    header = {"typ": "JWT", "alg": "RS256", "kid": secrets.token_urlsafe(20)}
    payload = {
        "aud": str(uuid.uuid4()),
        "iss": f"https://login.microsoftonline.com/{tid}/v2.0",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "aio": secrets.token_urlsafe(90),
        "azp": str(uuid.uuid4()),
        "azpacr": "1",
        "name": "Alice Example",
        "oid": str(uuid.uuid4()),
        "preferred_username": "alice@contoso.example",
        "rh": secrets.token_urlsafe(40),
        "scp": "access_as_user",
        "sid": str(uuid.uuid4()),
        "sub": secrets.token_urlsafe(32),
        "tid": tid,
        "uti": secrets.token_urlsafe(16),
        "ver": "2.0",
        "idtyp": "user",
    }
    return f"{b64(header)}.{b64(payload)}.{secrets.token_urlsafe(256)}"


def _top(profile: cProfile.Profile, n: int = 15) -> str:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(n)
    return out.getvalue()


async def _time_async(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - t0) / n * 1e6


async def middleware(n: int = 20000, rounds: int = 7) -> None:
    from entra_passthrough import CallerMiddleware, current_caller

    token = realistic_jwt()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        current_caller()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = CallerMiddleware(app)
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"wrk"),
        (b"authorization", f"Bearer {token}".encode()),
        (b"x-agent-user-id", b"bench-user"),
    ]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    def call(target: Any) -> Callable[[], Awaitable[None]]:
        async def go() -> None:
            scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
            await target(scope, receive, send)

        return go

    plain, capture = [], []
    for _ in range(rounds):
        plain.append(await _time_async(call(app), n))
        capture.append(await _time_async(call(wrapped), n))
    print(f"token length {len(token)} bytes")
    print(f"plain app        {statistics.median(plain):8.2f} µs/request")
    print(f"CallerMiddleware {statistics.median(capture):8.2f} µs/request")
    print(f"middleware cost  {statistics.median(capture) - statistics.median(plain):8.2f} µs")
    prof = cProfile.Profile()
    prof.enable()
    await _time_async(call(wrapped), n)
    prof.disable()
    print(_top(prof))


async def authflow(n: int = 5000, rounds: int = 7) -> None:
    import httpx2

    from entra_passthrough import EntraAuth, bind_caller

    from ._emu import Emulator
    from ._overhead import NoOpAuth2, _ok2
    from ._patterns import Ours

    with Emulator(token_latency=0.0) as emu:
        (assertion,) = await emu.mint_assertions(1)
        ours = Ours(emu)
        scopes = [emu.mcp_scope]
        transport = httpx2.MockTransport(_ok2)
        url = "http://127.0.0.1:9/tool"
        auth = EntraAuth(ours.chain, scopes=scopes, origins=["http://127.0.0.1:9"])
        async with (
            bind_caller(token=assertion),
            httpx2.AsyncClient(transport=transport, auth=NoOpAuth2()) as noop,
            httpx2.AsyncClient(transport=transport, auth=auth) as entra,
        ):
            await ours.chain.get_token_async(scopes)
            a, b = [], []
            for _ in range(rounds):
                a.append(await _time_async(lambda: noop.get(url), n))
                b.append(await _time_async(lambda: entra.get(url), n))
            print(f"no-op Auth  {statistics.median(a):8.2f} µs/request")
            print(f"EntraAuth   {statistics.median(b):8.2f} µs/request")
            print(f"auth flow   {statistics.median(b) - statistics.median(a):8.2f} µs")
            chain_t = []
            for _ in range(rounds):
                chain_t.append(await _time_async(lambda: ours.chain.get_token_async(scopes), n))
            print(f"chain.get_token_async (hit) {statistics.median(chain_t):8.2f} µs")
            prof = cProfile.Profile()
            prof.enable()
            await _time_async(lambda: entra.get(url), n)
            prof.disable()
            print(_top(prof, 25))
        await ours.aclose()


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "middleware"
    asyncio.run({"middleware": middleware, "authflow": authflow}[what]())


if __name__ == "__main__":
    main()
