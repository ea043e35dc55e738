"""Ctrl-C (SIGINT) during ``entra-passthrough demo``: one line on stderr and exit status 130,
promptly, with no ``KeyboardInterrupt`` traceback and nothing "ignored" at exit."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_ctrl_c_during_the_demo(tmp_path: Path) -> None:
    env = {**os.environ, "AGENTSERVER_STATE_ROOT": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "entra_passthrough", "demo", "--calls", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    seen = b""
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 120
            # Interrupted once its servers are up and users are sending requests.
            while b"hosted-agent" not in seen and time.monotonic() < deadline:
                if sel.select(timeout=1.0):
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    seen += chunk
        assert b"hosted-agent" in seen, seen.decode(errors="replace")
        time.sleep(1.0)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = err.decode(errors="replace")
    assert proc.returncode == 130, text[-2000:]
    assert "Traceback" not in text, text[-2000:]
    assert "Exception ignored" not in text, text[-2000:]
    assert text.rstrip().endswith("entra-passthrough demo: interrupted"), text[-2000:]
    assert took < 30, took
    del out
