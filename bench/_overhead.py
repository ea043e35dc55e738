"""Overhead at cache hit: ``EntraAuth`` vs the same client with a static ``Authorization`` header.

Two measurements, each interleaved in rounds with its floor:

* loopback: sequential GETs to a uvicorn server in another process, httpx2 and httpx clients;
  figure = per-round ratio of median request time (EntraAuth / static header, same client kind);
* in-process: the same clients on a ``MockTransport`` (no sockets), in ``IN_PROCESS_CHILDREN``
  fresh processes one after another, their batches pooled; figure = µs per request of
  the auth flow alone = EntraAuth minus a no-op ``Auth`` that only yields the request, with the
  caller bound once (a cached ``Caller``: its claims decoded and its token hashed once) and with
  a **new caller per request**: each request first does what ``CallerMiddleware`` does when a
  request arrives (a ``Caller`` from the raw ASGI headers, bound to the context, ended after),
  so the figure covers capture + bind + header read + hash + the auth flow at a cache hit (a
  hit never decodes the claims). The classic ``httpx`` clients all get the cookie layer
  ``EntraAuth.install()`` gives (the jar skipped for a response that sets no cookie, as httpx2
  does itself); one more, a no-op ``Auth`` on the stock layer, shows what that layer costs.

The chain's cache is warmed first (one OBO POST), so every measured request is a cache hit.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import httpx
import httpx2

from ._emu import Emulator
from ._middleware import start_server
from ._patterns import Ours
from ._util import stop, summary


class NoOpAuth2(httpx2.Auth):
    def auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        yield request


class NoOpAuth(httpx.Auth):
    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield request


class StaticAuth2(httpx2.Auth):
    """What a hand-written bearer Auth does: set the header, nothing else."""

    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    def auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.headers["Authorization"] = self._value
        yield request


class StaticAuth(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._value
        yield request


class NewCallerClient:
    """``get`` as a request arriving at a server would run it: capture the raw headers into a
    new ``Caller``, bind it, call out, end it (``CallerMiddleware``'s per-request work)."""

    def __init__(self, client: Any, raw_headers: list[tuple[bytes, bytes]]) -> None:
        from entra_passthrough import Caller
        from entra_passthrough._caller import caller_from_asgi, caller_var, wanted_headers

        self._client = client
        self._headers = raw_headers
        self._caller_class = Caller
        self._capture = caller_from_asgi  # what the middleware calls per request,
        self._wanted = wanted_headers(("authorization",))  # with the names it looked up once
        self._current = caller_var

    async def get(self, url: str) -> Any:
        caller = self._capture(self._caller_class, self._headers, self._wanted)
        bound = self._current.set(caller)
        try:
            return await self._client.get(url)
        finally:
            self._current.reset(bound)
            caller.end()


def _ok2(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, text="ok")


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, text="ok")


def _flow_cost(
    inproc: dict[str, list[float]],
    kind: str,
    floor: str = "no-op Auth",
    subject: str = "EntraAuth",
) -> dict[str, float | int]:
    """µs per request of ``subject`` over ``floor``: difference of the medians (robust to a
    spoiled batch on either side), with the spread of the per-batch paired differences."""
    a, b = inproc[f"{kind} {subject}"], inproc[f"{kind} {floor}"]
    paired = summary([(x - y) * 1e6 for x, y in zip(a, b, strict=True)])
    paired["median"] = (float(summary(a)["median"]) - float(summary(b)["median"])) * 1e6
    # least-disturbed estimate (timeit's advice): the fastest batch of each, differenced
    paired["min_batches"] = (min(a) - min(b)) * 1e6
    return paired


async def _batch(client: Any, url: str, n: int) -> float:
    """Median seconds per request over ``n`` sequential requests."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await client.get(url)
        times.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise RuntimeError(f"unexpected status {r.status_code}")
    times.sort()
    return times[len(times) // 2]


async def _batch_mean(client: Any, url: str, n: int) -> float:
    """Mean seconds per request over ``n`` sequential requests (timer cost amortised)."""
    t0 = time.perf_counter()
    for _ in range(n):
        r = await client.get(url)
        if r.status_code != 200:
            raise RuntimeError(f"unexpected status {r.status_code}")
    return (time.perf_counter() - t0) / n


async def _interleave(
    variants: dict[str, Any], url: str, n: int, rounds: int, fn: Callable[..., Any]
) -> dict[str, list[float]]:
    names = list(variants)
    out: dict[str, list[float]] = {k: [] for k in names}
    for client in variants.values():
        await fn(client, url, max(10, n // 10))  # warm: connections, code paths
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            out[name].append(await fn(variants[name], url, n))
    return out


async def overhead(
    emu: Emulator, assertion: str, *, rounds: int, n_loopback: int, n_inprocess: int
) -> dict[str, Any]:
    from entra_passthrough import EntraAuth
    from entra_passthrough._caller import bind_caller
    from entra_passthrough.httpx import EntraAuth as HttpxEntraAuth

    ours = Ours(emu)
    scopes = [emu.mcp_scope]
    result: dict[str, Any] = {"rounds": rounds}
    async with bind_caller(token=assertion):
        token = (await ours.chain.get_token_async(scopes)).token  # warm the cache: 1 POST
        static = {"Authorization": f"Bearer {token}"}

        # -- loopback ------------------------------------------------------------------------------
        with tempfile.TemporaryDirectory(prefix="bench-oh-") as tmp:
            proc, url = start_server("plain", Path(tmp))
            try:
                origins = [url.rstrip("/")]
                async with (
                    httpx2.AsyncClient(headers=static) as c2s,
                    httpx2.AsyncClient(
                        auth=EntraAuth(ours.chain, scopes=scopes, origins=origins)
                    ) as c2a,
                    httpx.AsyncClient(headers=static) as c1s,
                    httpx.AsyncClient(
                        auth=HttpxEntraAuth(ours.chain, scopes=scopes, origins=origins)
                    ) as c1a,
                ):
                    variants = {
                        "httpx2 static header": c2s,
                        "httpx2 EntraAuth": c2a,
                        "httpx static header": c1s,
                        "httpx EntraAuth": c1a,
                    }
                    loop = await _interleave(variants, url, n_loopback, rounds, _batch)
            finally:
                stop(proc)
        result["loopback"] = {
            "requests_per_batch": n_loopback,
            "per_request_s": {k: summary(v) for k, v in loop.items()},
            "ratio_httpx2": summary(
                [
                    a / s
                    for a, s in zip(
                        loop["httpx2 EntraAuth"], loop["httpx2 static header"], strict=True
                    )
                ]
            ),
            "ratio_httpx": summary(
                [
                    a / s
                    for a, s in zip(
                        loop["httpx EntraAuth"], loop["httpx static header"], strict=True
                    )
                ]
            ),
        }

        # -- in-process ----------------------------------------------------------------------------
        # many short batches (a burst of machine load spoils one batch, not the median), in
        # fresh processes one after another
        batch = max(50, n_inprocess // 5)
        inproc = _in_process_children(
            emu, assertion, batch=batch, batches=rounds * 5, children=IN_PROCESS_CHILDREN
        )
        result["in_process"] = {
            "requests_per_batch": batch,
            "batches": len(inproc["httpx2 no-op Auth"]),
            "processes": IN_PROCESS_CHILDREN,
            "per_request_us": {k: summary([x * 1e6 for x in v]) for k, v in inproc.items()},
            "auth_flow_us_httpx2": _flow_cost(inproc, "httpx2"),
            "auth_flow_us_httpx": _flow_cost(inproc, "httpx"),
            "auth_flow_over_static_auth_us_httpx2": _flow_cost(inproc, "httpx2", "static Auth"),
            "auth_flow_over_static_auth_us_httpx": _flow_cost(inproc, "httpx", "static Auth"),
            # capture + bind + header read + hash + auth flow, a new Caller per request
            "new_caller_us_httpx2": _flow_cost(inproc, "httpx2", subject="EntraAuth, new caller"),
            "new_caller_us_httpx": _flow_cost(inproc, "httpx", subject="EntraAuth, new caller"),
            # what classic httpx's stock cookie layer costs a request, which install() saves
            "stock_cookie_layer_us_httpx": _flow_cost(
                inproc, "httpx", subject="no-op Auth, stock cookies"
            ),
        }
    await ours.aclose()
    result["flow_cpu"] = await flow_cpu(batches=3 * rounds)
    return result


#: The in-process figures pool the batches of this many fresh processes, run one after
#: another: one process's hash seed and memory layout shifted them by up to ~0.5 us (measured
#: run to run), the bias the middleware scenario removes by restarting its servers each round.
IN_PROCESS_CHILDREN = 3


async def _in_process(emu: Emulator, assertion: str, *, batch: int, batches: int) -> Any:
    """The in-process variants in this process: ``batches`` interleaved batches of ``batch``
    requests each, seconds per request; the chain's cache warmed first (one OBO POST)."""
    from entra_passthrough import EntraAuth
    from entra_passthrough._caller import bind_caller
    from entra_passthrough._httpx_seams import skip_cookie_extraction_without_set_cookie
    from entra_passthrough.httpx import EntraAuth as HttpxEntraAuth

    ours = Ours(emu)
    scopes = [emu.mcp_scope]
    url = "http://127.0.0.1:9/tool"
    origins = ["http://127.0.0.1:9"]
    try:
        async with bind_caller(token=assertion):
            token = (await ours.chain.get_token_async(scopes)).token
            static = {"Authorization": f"Bearer {token}"}
            raw = [
                (b"host", b"agent.contoso.com"),
                (b"authorization", f"Bearer {assertion}".encode()),
                (b"content-type", b"application/json"),
                (b"accept", b"application/json, text/event-stream"),
            ]
            kinds = (
                ("httpx2", httpx2, httpx2.MockTransport(_ok2), NoOpAuth2, StaticAuth2, EntraAuth),
                ("httpx", httpx, httpx.MockTransport(_ok), NoOpAuth, StaticAuth, HttpxEntraAuth),
            )
            async with contextlib.AsyncExitStack() as stack:
                variants: dict[str, Any] = {}
                for kind, module, transport, noop, bearer, entra in kinds:
                    clients = {
                        "no-op Auth": module.AsyncClient(transport=transport, auth=noop()),
                        "static header": module.AsyncClient(transport=transport, headers=static),
                        "static Auth": module.AsyncClient(transport=transport, auth=bearer(token)),
                        "EntraAuth": module.AsyncClient(
                            transport=transport,
                            auth=entra(ours.chain, scopes=scopes, origins=origins),
                        ),
                    }
                    if module is httpx:
                        # Every classic client gets the cookie layer ``install()`` gives (the
                        # jar skipped for a response that sets no cookie, as httpx2 does
                        # upstream), so the flow is not charged httpx's copy of its header into
                        # the jar; the stock layer is kept once, to report what it costs.
                        clients["no-op Auth, stock cookies"] = module.AsyncClient(
                            transport=transport, auth=noop()
                        )
                        for name, client in clients.items():
                            if name != "no-op Auth, stock cookies":
                                skip_cookie_extraction_without_set_cookie(client)
                    for name, client in clients.items():
                        variants[f"{kind} {name}"] = await stack.enter_async_context(client)
                    variants[f"{kind} EntraAuth, new caller"] = NewCallerClient(
                        variants[f"{kind} EntraAuth"], raw
                    )
                return await _interleave(variants, url, batch, batches, _batch_mean)
    finally:
        await ours.aclose()


def _in_process_children(
    emu: Emulator, assertion: str, *, batch: int, batches: int, children: int
) -> dict[str, list[float]]:
    """``_in_process`` in ``children`` fresh processes, one after another (never two measuring
    at once), their batches pooled (each child's in its own order: paired differences stay
    within a process)."""
    import json
    import math
    import subprocess
    import sys

    payload = json.dumps(
        {
            "state": emu.state,
            "assertion": assertion,
            "batch": batch,
            "batches": max(1, math.ceil(batches / children)),
        }
    )
    pooled: dict[str, list[float]] = {}
    for _ in range(children):
        proc = subprocess.run(
            [sys.executable, "-m", "bench._overhead", "--in-process-child"],
            input=payload,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"in-process child failed: {proc.stderr[-2000:]}")
        data: dict[str, list[float]] = json.loads(proc.stdout.strip().splitlines()[-1])
        for name, values in data.items():
            pooled.setdefault(name, []).extend(values)
    return pooled


def _in_process_child() -> None:
    """``python -m bench._overhead --in-process-child``: JSON on stdin (the emulator's state,
    an assertion, the batch sizes), the per-batch seconds per request on stdout."""
    import asyncio
    import json
    import sys

    data = json.loads(sys.stdin.read())
    emu = Emulator.attach(data["state"])
    try:
        out = asyncio.run(
            _in_process(emu, data["assertion"], batch=data["batch"], batches=data["batches"])
        )
    finally:
        emu.detach()
    print(json.dumps(out))


async def flow_cpu(*, batches: int = 30, n: int = 2000) -> dict[str, Any]:
    """The auth flow alone in **process CPU time** (a loaded shared machine inflates wall
    time, not this): ``async_auth_flow`` driven directly on one request object, no client, no
    transport; min over ``batches`` of ``n`` requests, µs per request, interleaved. A real
    ``TokenChain`` + ``OnBehalfOf`` (only its network exchange replaced) at a cache hit, with
    one ``Caller`` bound for the batch and with a new ``Caller`` from raw headers per request;
    as installed (here the ``otel`` extra's API is installed, no tracer provider configured:
    the default for anyone who does not export traces) and, when it is installed, with it
    switched off entirely."""
    import base64
    import json
    import uuid

    from entra_passthrough import Caller, EntraAuth, OnBehalfOf, TokenChain, TokenRequest, _otel
    from entra_passthrough._caller import caller_from_asgi, caller_var, wanted_headers
    from entra_passthrough._sources._base import result_from_msal
    from entra_passthrough._types import IdentityKind, TokenResult

    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    tenant, client_id = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
    claims = {
        "aud": client_id,
        "iss": f"https://login.microsoftonline.com/{tenant}/v2.0",
        "tid": tenant,
        "oid": str(uuid.UUID(int=3)),
        "scp": "access_as_user",
        "exp": int(time.time()) + 3600,
        "ver": "2.0",
        "name": "Bench User",
        "upn": "bench@contoso.com",
    }
    assertion = f"{seg({'alg': 'RS256', 'typ': 'JWT', 'kid': 'k'})}.{seg(claims)}.{'s' * 342}"
    source = OnBehalfOf(client_id=client_id, tenant_id=tenant, client_secret="bench")

    async def exchange(request: TokenRequest) -> TokenResult | None:
        _, _, exp = source.preflight(request)
        answer = {"access_token": "t." + "x" * 1500, "expires_in": 3600}
        return result_from_msal(
            answer, kind=IdentityKind.USER, source=source.name, scopes=request.scopes, cap=exp
        )

    source.get_token_async = exchange  # type: ignore[method-assign]
    chain = TokenChain([source])
    auth = EntraAuth(chain, scopes=["api://mcp/.default"], origins=["http://127.0.0.1:9"])
    noop = NoOpAuth2()
    raw = [  # what an MCP client's POST carries, as ``NewCallerClient`` above
        (b"host", b"agent.contoso.com"),
        (b"authorization", f"Bearer {assertion}".encode()),
        (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
    ]
    response = httpx2.Response(200)
    wanted = wanted_headers(("authorization",))

    # The request a client builds (its default headers: host, accept, accept-encoding,
    # connection, user-agent), given fresh headers before each flow in every variant, as every
    # request of a client is a new object: a flow is never charged for removing its own header
    # again (which no client does; reusing one request and popping the header did, ~1 us). The
    # headers are built as the client builds them (``Headers`` from raw pairs, encoding not
    # yet known), so a flow that makes the client work out the encoding pays for it here too.
    with httpx2.Client() as builder:
        request = builder.build_request("GET", "http://127.0.0.1:9/tool")
    client_headers = request.headers.raw

    def fresh() -> httpx2.Headers:
        return httpx2.Headers(client_headers)

    async def batch(flow_auth: httpx2.Auth, new_caller: bool) -> float:
        t0 = time.process_time()
        for _ in range(n):
            bound = None
            caller = None
            request.headers = fresh()
            if new_caller:  # as the middleware captures (``NewCallerClient``)
                caller = caller_from_asgi(Caller, raw, wanted)
                bound = caller_var.set(caller)
            flow = flow_auth.async_auth_flow(request)
            await flow.__anext__()
            with contextlib.suppress(StopAsyncIteration):
                await flow.asend(response)
            if bound is not None and caller is not None:
                caller_var.reset(bound)
                caller.end()
            request.extensions.pop("entra_passthrough.applied", None)
        return (time.process_time() - t0) / n * 1e6

    enabled = _otel.ENABLED
    out: dict[str, Any] = {"batches": batches, "requests_per_batch": n}
    bound = caller_var.set(Caller.from_headers(raw))
    try:
        await batch(auth, False)  # the one miss: warm
        for otel in (True, False) if enabled else (False,):
            _otel.ENABLED = otel
            runs: dict[str, list[float]] = {"noop": [], "cached": [], "new": [], "capture": []}
            for _ in range(batches):
                runs["noop"].append(await batch(noop, False))
                runs["cached"].append(await batch(auth, False))
                runs["new"].append(await batch(auth, True))
                runs["capture"].append(await batch(noop, True))
            best = {k: min(v) for k, v in runs.items()}
            out["as_installed" if otel else "without_otel"] = {
                "auth_flow_us": best["cached"] - best["noop"],
                "new_caller_us": best["new"] - best["noop"],
                "capture_only_us": best["capture"] - best["noop"],
                "noop_us": best["noop"],
            }
    finally:
        _otel.ENABLED = enabled
        caller_var.reset(bound)
        chain.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m bench._overhead [--quick]``: this scenario alone, results to
    ``bench/results/overhead.json`` (full size)."""
    import argparse
    import asyncio
    import json

    from .__main__ import FULL, QUICK
    from ._util import machine

    parser = argparse.ArgumentParser(prog="python -m bench._overhead")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--in-process-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.in_process_child:
        _in_process_child()
        return 0
    s = QUICK if args.quick else FULL

    async def run() -> dict[str, Any]:
        emu = Emulator(token_latency=0.02, users=2)
        try:
            assertion = (await emu.mint_assertions(1))[0]
            return await overhead(
                emu,
                assertion,
                rounds=s.overhead_rounds,
                n_loopback=s.n_loopback,
                n_inprocess=s.n_inprocess,
            )
        finally:
            emu.close()

    result = asyncio.run(run())
    result["machine"] = machine()
    text = json.dumps(result, indent=1, default=str)
    out = args.out or (
        None if args.quick else Path(__file__).resolve().parent / "results" / "overhead.json"
    )
    if out is not None:
        out.write_text(text + "\n")
    ip = result["in_process"]
    for key in ("auth_flow_us_httpx2", "auth_flow_us_httpx", "new_caller_us_httpx2"):
        print(key, round(ip[key]["median"], 1), "min_batches", round(ip[key]["min_batches"], 1))
    print("new_caller_us_httpx", round(ip["new_caller_us_httpx"]["median"], 1))
    print("flow_cpu", json.dumps(result["flow_cpu"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
