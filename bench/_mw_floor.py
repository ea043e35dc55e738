"""The capture middleware's cost in instructions under uvicorn, built up step by step.

``python -m bench._mw_floor [--requests 1600]`` (needs ``valgrind``; Debian: ``apt-get install
valgrind``) writes ``bench/results/mw_floor.json`` and prints a table. Each variant below is the
Starlette app of the middleware scenario (``bench._server``) behind one ASGI middleware; its
uvicorn server runs under ``callgrind``, which counts instructions, not seconds, so the figures
repeat whatever else the machine is doing. Per variant: ``--requests`` / 4 requests to warm up,
the counters zeroed (``callgrind_control -z``), then ``--requests`` one after another on a
keep-alive connection (``--connections``), the count dumped; instructions per request, the
median over ``--seeds`` servers with different hash seeds (each seed lays the process out
differently, which moves a count by up to ~1.5k), and over the bare app.

The steps add, in order, what ``CallerMiddleware`` does on every request: an ASGI layer that
passes the call on; a ``send`` wrapper that looks for the last body chunk; the ``Caller`` (from
the raw headers, read on first use); its ``scope["state"]`` entry; binding the context variable
(reset on return; the app then reads ``Caller.active``); ending the ``Caller`` at the last chunk
and on return, and unbinding it at the last chunk (the reset done there, not on return).
``inlined`` is the whole path written as one function, every call inlined and the ``Caller``'s
fields set directly: the floor of this behaviour (``CaptureASGI``, the library's, is the same
path with its class and its checks). ``capture`` is ``CallerMiddleware`` as shipped. The
reading is in ``bench/README.md`` ("Capture middleware", seventh pass).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._load import exchange
from ._util import machine, stop, wait_for_file_json

RESULTS = Path(__file__).resolve().parent / "results"

#: Variant -> what it adds to the one before (``plain``: the bare app).
STEPS = {
    "plain": "the bare Starlette app",
    "layer": "an ASGI layer passing the call on",
    "wrapper": "+ a send wrapper looking for the last body chunk",
    "caller": "+ the Caller from the raw headers",
    "state": '+ its scope["state"] entry',
    "bind": "+ the context variable bound, reset on return (the app reads Caller.active)",
    "end": "+ the Caller ended at the last chunk and on return, unbound (reset) at the last chunk",
    "inlined": "all of it in one function, every call inlined (the floor of this behaviour)",
    "capture": "CallerMiddleware",
}


def build(kind: str) -> Any:
    """The ASGI app of ``kind`` (``STEPS``)."""
    from entra_passthrough._caller import Caller, caller_from_asgi, caller_var, wanted_headers
    from entra_passthrough._middleware import STATE_KEY

    from ._server import build_app

    if kind in ("plain", "capture"):
        return build_app(kind)
    app = build_app("plain")  # the app reads current_caller() in every variant
    wanted = wanted_headers(("authorization",))
    order = list(STEPS)
    step = order.index(kind)
    caller_at, state_at = order.index("caller"), order.index("state")
    bind_at, end_at = order.index("bind"), order.index("end")

    async def stepped(scope: Any, receive: Any, send: Any) -> None:
        if step == order.index("layer"):
            await app(scope, receive, send)
            return
        caller = (
            caller_from_asgi(Caller, scope.get("headers"), wanted) if step >= caller_at else None
        )
        if step >= state_at:
            state = scope.get("state")
            if type(state) is not dict:
                state = scope["state"] = {}
            state[STATE_KEY] = caller
        reset = caller_var.set(caller) if step >= bind_at else None

        def ending(message: Any) -> Any:
            if (
                message.get("type") == "http.response.body"
                and not message.get("more_body")
                and step >= end_at
                and caller is not None
            ):
                caller.end()
                if reset is not None:
                    caller_var.reset(reset)  # unbound here: nothing left for the return
            return send(message)

        try:
            await app(scope, receive, ending)
        finally:
            if step >= end_at and caller is not None:
                caller.end()
            if reset is not None and caller_var.get() is caller:
                caller_var.reset(reset)

    async def inlined(scope: Any, receive: Any, send: Any) -> None:
        caller = object.__new__(Caller)
        caller._pending = (tuple(scope.get("headers")), wanted)
        caller.verified = None
        caller.not_after = None
        caller._active = True
        caller._digest = None
        state = scope.get("state")
        if type(state) is not dict:
            state = scope["state"] = {}
        state[STATE_KEY] = caller
        reset = caller_var.set(caller)

        def ending(message: Any) -> Any:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                caller._active = False
                caller_var.reset(reset)
            return send(message)

        try:
            await app(scope, receive, ending)
        finally:
            caller._active = False
            if caller_var.get() is caller:
                caller_var.reset(reset)

    return inlined if kind == "inlined" else stepped


async def _connection(port: int, request: bytes, count: int) -> None:
    """``count`` requests one after another on one keep-alive connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            head = await exchange(reader, writer, request)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"the server answered {head[:40]!r}")
    finally:
        writer.close()


def _load(port: int, request: bytes, total: int, connections: int) -> None:
    async def run() -> None:
        share = total // connections
        await asyncio.gather(*(_connection(port, request, share) for _ in range(connections)))

    asyncio.run(run())


def count(
    kind: str, *, requests: int, connections: int, assertion: str, workdir: Path, seed: int = 0
) -> float:
    """Instructions per request of ``kind``'s server, counted by callgrind. The server's hash
    seed is fixed (``seed``), so that two servers of the same code count the same; another seed
    lays the process out differently (which lookups collide in CPython's type-attribute cache,
    say), which moves the count of the same code by up to ~1.5k a request."""
    port_file = workdir / f"{kind}.json"
    out = workdir / f"cg.{kind}"
    for stale in (port_file, *workdir.glob(f"cg.{kind}*")):  # an earlier count of the same kind
        stale.unlink(missing_ok=True)
    server = [sys.executable, "-m", "bench._mw_floor", "--serve", kind, "--port-file"]
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *server, str(port_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": str(seed)},
    )
    try:
        port = int(wait_for_file_json(port_file, proc, timeout=300)["port"])
        request = (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {assertion}\r\n"
            "x-agent-user-id: bench-user\r\n\r\n"
        ).encode("latin-1")
        _load(port, request, max(connections, requests // 4), connections)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        _load(port, request, requests, connections)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        dumps = sorted(workdir.glob(f"cg.{kind}.*"), key=lambda p: p.stat().st_mtime)
        if not dumps:
            raise RuntimeError(f"callgrind wrote no dump for {kind}")
        for line in dumps[-1].read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1]) / (requests // connections * connections)
        raise RuntimeError(f"no totals in {dumps[-1]}")
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1600)
    parser.add_argument(
        "--connections",
        type=int,
        default=1,
        help="keep-alive connections (1: the server's loop does the same per request, so the "
        "count repeats; with more, how requests batch per loop iteration moves it by ~2k)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="hash seeds per variant (0, 1, ...); the median of their counts is reported",
    )
    parser.add_argument("--serve", choices=list(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        from ._server import serve

        asyncio.run(serve(args.serve, args.port_file, app=build(args.serve)))
        return
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit("needs valgrind (Debian: apt-get install valgrind)")
    from ._middleware import _synthetic_assertion

    assertion = _synthetic_assertion()
    started = time.time()
    per_request: dict[str, float] = {}
    seen: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mwfloor-") as tmp:
        for kind in STEPS:
            counts = [
                count(
                    kind,
                    requests=args.requests,
                    connections=args.connections,
                    assertion=assertion,
                    workdir=Path(tmp),
                    seed=seed,
                )
                for seed in range(args.seeds)
            ]
            per_request[kind] = statistics.median(counts)
            seen[kind] = counts
            shown = ", ".join(f"{c:,.0f}" for c in counts)
            print(
                f"{kind:8} {per_request[kind]:>10,.0f} instructions a request ({shown})", flush=True
            )
    plain = per_request["plain"]
    rows = []
    previous = plain
    for kind, what in STEPS.items():
        value = per_request[kind]
        step = value - (plain if kind in ("inlined", "capture") else previous)
        rows.append(
            {
                "variant": kind,
                "adds": what,
                "instructions": round(value),
                "over_plain": round(value - plain),
                "step": round(step),
                "by_seed": [round(c) for c in seen[kind]],
            }
        )
        if kind not in ("inlined", "capture"):
            previous = value
    result = {
        "requests": args.requests,
        "connections": args.connections,
        "seeds": args.seeds,
        "seconds": round(time.time() - started, 1),
        "machine": machine(),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mw_floor.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'variant':8}  {'over plain':>10}  {'step':>7}  adds")
    for row in rows:
        print(f"{row['variant']:8}  {row['over_plain']:>10,}  {row['step']:>7,}  {row['adds']}")


if __name__ == "__main__":
    main()
