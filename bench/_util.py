"""Statistics, machine description and small process helpers shared by the scenarios."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "entra-passthrough",
    "msal",
    "azure-identity",
    "azure-core",
    "aiohttp",
    "requests",
    "httpx2",
    "httpx",
    "uvicorn",
    "starlette",
    "agent-framework-core",
    "mcp",
)


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """Median, quartiles, IQR and n: what every figure in the report is made of."""
    data = sorted(values)
    if not data:
        return {"n": 0, "median": float("nan"), "q1": float("nan"), "q3": float("nan"), "iqr": 0.0}
    if len(data) == 1:
        q1 = q3 = data[0]
    else:
        q = statistics.quantiles(data, n=4, method="inclusive")
        q1, q3 = q[0], q[2]
    return {
        "n": len(data),
        "median": statistics.median(data),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "min": data[0],
        "max": data[-1],
    }


def percentile(values: Sequence[float], p: float) -> float:
    data = sorted(values)
    if not data:
        return float("nan")
    k = min(len(data) - 1, max(0, round(p / 100 * (len(data) - 1))))
    return data[k]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": mem_total,
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "packages": versions,
        "load_average_at_start": _load(),
        "wrk": _wrk_version(),
    }


def _wrk_version() -> str | None:
    from shutil import which

    path = which("wrk")
    if path is None:
        return None
    proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0] if text else path


def wait_for_file_json(path: Path, proc: subprocess.Popen[Any], timeout: float) -> dict[str, Any]:
    """Poll for a JSON file a child writes when ready (never sleep-and-hope)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"child exited with {proc.returncode} before it was ready: {err}")
        if path.exists():
            try:
                data: dict[str, Any] = json.loads(path.read_text())
                return data
            except (json.JSONDecodeError, OSError):
                pass  # being written: poll again
        time.sleep(0.02)
    raise TimeoutError(f"child did not write {path} within {timeout}s")


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
