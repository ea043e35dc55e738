"""A broker ``--config`` file nested thousands deep is one line and exit 2, as every other file
the broker cannot read: it was json's ``RecursionError`` traceback, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DEPTH = 100_000


@pytest.mark.parametrize(
    "text",
    ["[" * DEPTH + "]" * DEPTH, '{"a":' * DEPTH + "1" + "}" * DEPTH],
    ids=["array", "object"],
)
def test_a_deeply_nested_broker_config_is_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broker.json"
    path.write_text(text)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ENTRA_", "AZURE_", "IDENTITY_", "MSI_"))
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "entra_passthrough",
            "broker",
            "--config",
            str(path),
            "--insecure-http",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-2000:]
    assert "Traceback" not in out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out[-2000:]
    assert lines[0].startswith(f"entra-passthrough broker: the config file {path} ")
    assert "nested too deeply" in lines[0]
