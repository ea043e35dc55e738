"""Capture middleware: a Starlette app under uvicorn with and without ``CallerMiddleware``.

Two server processes (one per variant) stay up for the whole scenario; the load comes from a
third process (wrk, or ``bench._load``). Each round loads both, in rotated order, and the figure is
the per-round throughput ratio (with / without), so machine-wide drift cancels.
"""

from __future__ import annotations

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


def middleware(assertion: str, *, rounds: int, duration: float, connections: int) -> dict[str, Any]:
    headers = [f"Authorization: Bearer {assertion}", "x-agent-user-id: bench-user"]
    with tempfile.TemporaryDirectory(prefix="bench-mw-") as tmp:
        servers = {kind: start_server(kind, Path(tmp)) for kind in ("plain", "capture")}
        try:
            rps: dict[str, list[float]] = {"plain": [], "capture": []}
            ratios = []
            tool = ""
            errors = 0
            for r in range(rounds):
                order = ["plain", "capture"] if r % 2 == 0 else ["capture", "plain"]
                for kind in order:
                    res = load(
                        servers[kind][1],
                        connections=connections,
                        duration=duration,
                        headers=headers,
                    )
                    rps[kind].append(float(res["rps"]))  # type: ignore[arg-type]
                    errors += int(res["errors"])  # type: ignore[call-overload]
                    tool = str(res["tool"])
                ratios.append(rps["capture"][-1] / rps["plain"][-1])
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
    }
