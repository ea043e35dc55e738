"""Capture middleware: a Starlette app under uvicorn with and without ``CallerMiddleware``.

Two server processes (one per variant) stay up for the whole scenario; the load comes from a
third process (wrk, or ``bench._load``). Each round loads both, in rotated order, and the figure is
the per-round throughput ratio (with / without), so machine-wide drift cancels.

Beside it, the **server's CPU time per request** (user + system time of the server process over
the load, from ``/proc``, divided by the requests served): the server is one event loop bound by
its CPU, so its throughput is the inverse of that, and unlike requests per second it does not
move when other processes take the machine's cores. ``cpu_ratio`` = CPU per request without /
with the middleware (the throughput ratio an unloaded machine gives).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._load import load
from ._util import stop, summary, wait_for_file_json


def start_server(kind: str, workdir: Path) -> tuple[subprocess.Popen[str], str]:
    port_file = workdir / f"{kind}.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._server", "--app", kind, "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        info = wait_for_file_json(port_file, proc, timeout=60)
    except BaseException:
        stop(proc)
        raise
    return proc, str(info["url"]) + "/"


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def middleware(assertion: str, *, rounds: int, duration: float, connections: int) -> dict[str, Any]:
    """Per round, both servers are started afresh (then warmed): two processes running the same
    code differ by 1-2 % in CPU per request (their hash seeds, their memory layout), which one
    pair kept for the whole run would turn into a bias of the ratio; new pairs average it out."""
    headers = [f"Authorization: Bearer {assertion}", "x-agent-user-id: bench-user"]
    rps: dict[str, list[float]] = {"plain": [], "capture": []}
    cpu_us: dict[str, list[float]] = {"plain": [], "capture": []}
    ratios = []
    cpu_ratios = []
    tool = ""
    errors = 0
    with tempfile.TemporaryDirectory(prefix="bench-mw-") as tmp:
        for r in range(rounds):
            workdir = Path(tmp) / f"round{r}"
            workdir.mkdir()
            servers: dict[str, tuple[subprocess.Popen[str], str]] = {}
            try:
                for kind in ("plain", "capture"):
                    servers[kind] = start_server(kind, workdir)
                for _, url in servers.values():  # warm: first requests, lazy imports
                    load(url, connections=connections, duration=min(0.5, duration), headers=headers)
                order = ["plain", "capture"] if r % 2 == 0 else ["capture", "plain"]
                for kind in order:
                    pid = servers[kind][0].pid
                    before = _cpu_seconds(pid)
                    res = load(
                        servers[kind][1],
                        connections=connections,
                        duration=duration,
                        headers=headers,
                    )
                    after = _cpu_seconds(pid)
                    rps[kind].append(float(res["rps"]))  # type: ignore[arg-type]
                    errors += int(res["errors"])  # type: ignore[call-overload]
                    tool = str(res["tool"])
                    served = int(res.get("requests") or 0)  # type: ignore[call-overload]
                    if before is not None and after is not None and served:
                        cpu_us[kind].append((after - before) / served * 1e6)
                ratios.append(rps["capture"][-1] / rps["plain"][-1])
                if len(cpu_us["plain"]) == len(cpu_us["capture"]) == r + 1:
                    cpu_ratios.append(cpu_us["plain"][-1] / cpu_us["capture"][-1])
            finally:
                for proc, _ in servers.values():
                    stop(proc)
    cost: dict[str, Any] = in_process_cpu(assertion)
    if cpu_us["plain"]:
        base = float(summary(cpu_us["plain"])["median"])
        cost["server_cpu_us"] = base
        cost["projected_ratio"] = base / (base + cost["middleware_us"])
    return {
        "in_process": cost,
        "rounds": rounds,
        "duration_s": duration,
        "connections": connections,
        "load_tool": tool,
        "errors": errors,
        "rps_without": summary(rps["plain"]),
        "rps_with": summary(rps["capture"]),
        "ratio": summary(ratios),
        "server_cpu_us_per_request_without": summary(cpu_us["plain"]) if cpu_us["plain"] else None,
        "server_cpu_us_per_request_with": summary(cpu_us["capture"]) if cpu_us["capture"] else None,
        "cpu_ratio": summary(cpu_ratios) if cpu_ratios else None,
        # Every round's ratios, in order: runs of this scenario pool into one median this way
        # (a round's ratio moves by ~4 %, the target's margin is 3 points).
        "round_ratios": ratios,
        "round_cpu_ratios": cpu_ratios,
    }


def in_process_cpu(assertion: str, *, batches: int = 15, n: int = 2000) -> dict[str, Any]:
    """The middleware's own cost in **process CPU time**, which machine load does not inflate:
    the same two apps as the servers (``bench._server.build_app``) called directly with an
    ASGI HTTP scope carrying the load's headers, ``n`` requests per batch, interleaved; min over
    ``batches``, µs per request. ``projected_ratio`` = what that cost does to a server spending
    ``server_cpu_us`` per request (uvicorn's parsing and the socket work are not in-process)."""
    import asyncio
    import time

    from ._server import build_app

    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"authorization", f"Bearer {assertion}".encode()),
        (b"x-agent-user-id", b"bench-user"),
    ]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    def scope() -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 5000),
            "state": {},
        }

    async def batch(app: Any, count: int) -> float:
        t0 = time.process_time()
        for _ in range(count):
            await app(scope(), receive, send)
        return (time.process_time() - t0) / count * 1e6

    async def run() -> dict[str, float]:
        apps = {"plain": build_app("plain"), "capture": build_app("capture")}
        for app in apps.values():
            await batch(app, max(10, n // 10))  # warm
        runs: dict[str, list[float]] = {k: [] for k in apps}
        for _ in range(batches):
            for kind, app in apps.items():
                runs[kind].append(await batch(app, n))
        return {k: min(v) for k, v in runs.items()}

    best = asyncio.run(run())
    return {
        "batches": batches,
        "requests_per_batch": n,
        "app_us": best["plain"],
        "with_middleware_us": best["capture"],
        "middleware_us": best["capture"] - best["plain"],
    }


def _synthetic_assertion() -> str:
    """A JWT-shaped user token of an Entra access token's size (~1.5 KB); the middleware
    scenario never verifies it (capture only), so no emulator is needed to run it alone."""
    import base64
    import json
    import time
    import uuid

    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    tenant = str(uuid.UUID(int=1))
    claims = {
        "aud": str(uuid.UUID(int=2)),
        "iss": f"https://login.microsoftonline.com/{tenant}/v2.0",
        "tid": tenant,
        "oid": str(uuid.UUID(int=3)),
        "scp": "access_as_user",
        "exp": int(time.time()) + 3600,
        "ver": "2.0",
        "name": "Bench User",
        "upn": "bench@contoso.com",
        "xms_pad": "p" * 700,  # Entra tokens carry more claims than these; ~1.5 KB in all
    }
    return f"{seg({'alg': 'RS256', 'typ': 'JWT', 'kid': 'k'})}.{seg(claims)}.{'s' * 342}"


def main(argv: list[str] | None = None) -> int:
    """``python -m bench._middleware [--quick] [--rounds N]``: this scenario alone, results to
    ``bench/results/middleware.json`` (full size)."""
    import argparse
    import json

    from .__main__ import FULL, QUICK
    from ._util import machine

    parser = argparse.ArgumentParser(prog="python -m bench._middleware")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    result = middleware(
        _synthetic_assertion(),
        rounds=args.rounds or s.mw_rounds,
        duration=s.mw_duration,
        connections=s.mw_connections,
    )
    result["load_average_at_end"] = list(os.getloadavg())
    result["machine"] = machine()
    out = args.out or (
        None if args.quick else Path(__file__).resolve().parent / "results" / "middleware.json"
    )
    if out is not None:
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    cpu = result["cpu_ratio"]
    print(
        "throughput ratio",
        round(result["ratio"]["median"], 3),
        "IQR",
        round(result["ratio"]["iqr"], 3),
        "| server CPU ratio",
        round(cpu["median"], 3) if cpu else None,
        "IQR",
        round(cpu["iqr"], 3) if cpu else None,
        "| in process",
        json.dumps(result["in_process"]),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
