"""Every option a command's ``--help`` lists is on the docs page that describes the command
(``demo --calls`` and ``inspect --client-id/--tenant/--json`` were on none). The help of the first
command comes from a process of its own (``python -m entra_passthrough``), the others' from the
CLI's ``main`` in this process (``_support/proc_cli.py``), at the width a process writing into a
pipe uses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _support.proc_cli import run_cli

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: command -> the page that describes it
PAGES = {
    "demo": "doctor.md",
    "inspect": "doctor.md",
    "doctor": "doctor.md",
    "emulator": "emulator.md",
    "broker": "consent.md",
}


def options(command: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-m", "entra_passthrough", command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return listed(done.stdout)


def listed(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", help_text)) - {"--help"}


@pytest.mark.parametrize("command", sorted(PAGES))
def test_every_option_is_documented(
    command: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    page = (DOCS / PAGES[command]).read_text(encoding="utf-8")
    if command == min(PAGES):
        found = options(command)
    else:
        # argparse wraps at $COLUMNS, else 80 where stdout is not a terminal (a pipe).
        width = {"COLUMNS": os.environ.get("COLUMNS", "80")}
        done = run_cli([command, "--help"], monkeypatch, capfd, env=width)
        assert done.returncode == 0, done.stderr
        found = listed(done.stdout)
    assert "--version" in found  # every command answers it, and --help says so
    # --version is common to every command (the README says so once).
    missing = sorted(
        o for o in found - {"--version"} if not re.search(rf"{re.escape(o)}(?![\w-])", page)
    )
    assert not missing, f"{PAGES[command]} does not describe {command} {missing}"
