"""Every option a command's ``--help`` lists is on the docs page that describes the command
(``demo --calls`` and ``inspect --client-id/--tenant/--json`` were on none)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", done.stdout)) - {"--help"}


@pytest.mark.parametrize("command", sorted(PAGES))
def test_every_option_is_documented(command: str) -> None:
    page = (DOCS / PAGES[command]).read_text(encoding="utf-8")
    found = options(command)
    assert "--version" in found  # every command answers it, and --help says so
    # --version is common to every command (the README says so once).
    missing = sorted(
        o for o in found - {"--version"} if not re.search(rf"{re.escape(o)}(?![\w-])", page)
    )
    assert not missing, f"{PAGES[command]} does not describe {command} {missing}"
