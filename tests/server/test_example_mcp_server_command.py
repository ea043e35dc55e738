"""examples/mcp_server/notes_server.py as a command: ``--emulator --port 0`` serves on the port
the system picked and says which (its resource URL names it too), and the token file it wrote
for alice is removed when it stops."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2

from ._example import EXAMPLE

_URL = re.compile(r"^MCP server: (http://127\.0\.0\.1:(\d+)/mcp)$")
_TOKEN_FILE = re.compile(r"^a token for alice \(1 h\) is in (\S+) ")


def _lines(proc: subprocess.Popen[str], into: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        into.put(line.rstrip("\n"))


def test_port_zero_prints_the_bound_port() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTRA_", "AZURE_"))}
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--emulator", "--port", "0"],
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(proc, lines), daemon=True)
    reader.start()
    url = token_file = None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while (url is None or token_file is None) and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "\n".join(seen)
                continue
            seen.append(line)
            if m := _URL.match(line):
                url, port = m.group(1), int(m.group(2))
                assert port != 0
            if m := _TOKEN_FILE.match(line):
                token_file = Path(m.group(1))
        assert url is not None, "\n".join(seen)
        assert token_file is not None, "\n".join(seen)
        assert token_file.exists()
        answer = None
        for _ in range(100):  # bounded: the server may still be starting
            try:
                answer = httpx2.post(url, json={}, trust_env=False, timeout=5)
                break
            except httpx2.TransportError:
                time.sleep(0.1)
        assert answer is not None
        assert answer.status_code == 401
        # The protected resource metadata it points clients at names the same, real port.
        assert f"127.0.0.1:{port}/" in answer.headers["www-authenticate"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        reader.join(10)  # the pipe ends with the process
        assert proc.stdout is not None
        proc.stdout.close()
    assert token_file is not None
    assert not token_file.exists()  # removed on the way out
