"""Load generator for the middleware scenario, run in its own process.

``wrk`` when it is installed (Debian: ``apt-get install wrk``); otherwise this module's own
keep-alive HTTP/1.1 client on raw asyncio streams (``python -m bench._load``), which is light
enough that the server, not the client, is the bottleneck on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from urllib.parse import urlsplit


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> bytes:
    """One request on a keep-alive connection: write it, read the answer; its head."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    if length:
        await reader.readexactly(length)
    return head


async def _connection(
    host: str, port: int, request: bytes, stop_at: float, counts: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            head = await exchange(reader, writer, request)
            if not head.startswith(b"HTTP/1.1 200"):
                counts[1] += 1
            counts[0] += 1
    finally:
        writer.close()


async def _run(url: str, connections: int, duration: float, headers: list[str]) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"GET {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}", *headers, "", ""]
    request = "\r\n".join(lines).encode("latin-1")
    # warm-up: connections open, server code paths hot
    warm = [0, 0]
    await asyncio.gather(
        *(
            _connection(host, port, request, time.perf_counter() + 0.3, warm)
            for _ in range(connections)
        )
    )
    counts = [0, 0]
    t0 = time.perf_counter()
    await asyncio.gather(
        *(_connection(host, port, request, t0 + duration, counts) for _ in range(connections))
    )
    seconds = time.perf_counter() - t0
    return {
        "requests": counts[0],
        "errors": counts[1],
        "seconds": seconds,
        "rps": counts[0] / seconds,
    }


def run_wrk(url: str, connections: int, duration: float, headers: list[str]) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration + 60, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "requests": total,
        "errors": int(non2xx.group(1)) if non2xx else 0,
        "seconds": total / rps if rps else 0.0,
        "rps": rps,
    }


def load(url: str, *, connections: int, duration: float, headers: list[str]) -> dict[str, object]:
    """Generate load from a SECOND process (wrk, or this module run as a child)."""
    if shutil.which("wrk"):
        res: dict[str, object] = dict(run_wrk(url, connections, duration, headers))
        res["tool"] = "wrk"
        return res
    cmd = [sys.executable, "-m", "bench._load", url, "-c", str(connections), "-d", str(duration)]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True)
    res = json.loads(out.stdout)
    res["tool"] = "python (bench._load)"
    return res


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=3.0)
    parser.add_argument("-H", "--header", action="append", default=[])
    args = parser.parse_args()
    res = asyncio.run(_run(args.url, args.connections, args.duration, args.header))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
