"""``examples/mcp_server/notes_server.py --emulator`` stopped with SIGTERM (``docker stop``,
systemd, ``timeout``) removes what it wrote, as Ctrl-C does: alice's token file and the
emulator's folder with its TLS key. uvicorn re-raised the signal after its graceful shutdown and
the default action killed the process before the cleanup ran. The real example, as a process."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("mcp")
pytest.importorskip("entra_passthrough.testing")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mcp_server" / "notes_server.py"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_removes_the_token_file_and_the_emulator_key(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-u", str(EXAMPLE), "--emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stdout = proc.stdout
    assert stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")))
    reader.start()
    token_file = ca_dir = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            out = "".join(lines)
            token = re.search(r"is in (\S+\.jwt)", out)
            ca = re.search(r"\(CA (\S+)\)", out)
            if token and ca and "Application startup complete" in out:
                token_file, ca_dir = Path(token.group(1)), Path(ca.group(1)).parent
                break
            time.sleep(0.1)
        assert token_file is not None, "".join(lines)[-2000:]
        assert ca_dir is not None
        assert token_file.exists()
        assert (ca_dir / "server-key.pem").exists()
        proc.send_signal(sig)
        proc.wait(timeout=30)
        reader.join(timeout=10)
        assert not token_file.exists(), "".join(lines)[-2000:]
        assert not ca_dir.exists(), "".join(lines)[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=10)
        stdout.close()
        if token_file is not None and token_file.exists():
            token_file.unlink()
        if ca_dir is not None and ca_dir.exists():
            shutil.rmtree(ca_dir, ignore_errors=True)
