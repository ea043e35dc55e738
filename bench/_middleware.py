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
    headers = [f"Authorization: Bearer {assertion}", "x-agent-user-id: bench-user"]
    with tempfile.TemporaryDirectory(prefix="bench-mw-") as tmp:
        servers = {kind: start_server(kind, Path(tmp)) for kind in ("plain", "capture")}
        try:
            rps: dict[str, list[float]] = {"plain": [], "capture": []}
            cpu_us: dict[str, list[float]] = {"plain": [], "capture": []}
            ratios = []
            cpu_ratios = []
            tool = ""
            errors = 0
            for r in range(rounds):
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
    return {
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
    }
