"""``entra-passthrough demo`` (what ``make demo`` runs) passes its own checks and prints no
token: every JWT the emulator issues starts with ``eyJ`` (base64 of '{"')."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_passes_and_prints_no_token(tmp_path: object) -> None:
    env = {**os.environ, "AGENTSERVER_STATE_ROOT": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "entra_passthrough.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "all checks passed" in out
    assert "FAIL" not in out
    for scene in ("concurrent users", "consent missing", "wrong audience", "hosted agent consent"):
        assert scene in out
    assert "oauth_consent_request" in out
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}", out), "a JWT was printed"
