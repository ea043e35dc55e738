"""A ``--config`` world file nested thousands deep (``[`` * 100000, JSON or TOML) is one line,
"cannot load ...", and exit 2, as every other file the emulator cannot load: it was the
parser's ``RecursionError`` traceback (26 lines for JSON, 3002 for TOML), exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DEPTH = 100_000


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.json", "[" * DEPTH + "]" * DEPTH),
        ("deep-object.json", '{"a":' * DEPTH + "1" + "}" * DEPTH),
        ("deep.toml", "a = " + "[" * DEPTH + "]" * DEPTH),
    ],
)
def test_a_deeply_nested_world_file_is_one_line(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "entra_passthrough", "emulator", "--config", str(path)],
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
    assert lines[0].startswith(f"entra-passthrough emulator: cannot load {path}: ")
    assert "nested too deeply" in lines[0]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.json", "[" * DEPTH + "]" * DEPTH),
        ("deep.toml", "a = " + "[" * DEPTH + "]" * DEPTH),
    ],
)
def test_world_from_file_refuses_it_as_an_unreadable_file(
    tmp_path: Path, name: str, text: str
) -> None:
    """From Python, ``World.from_file`` raises the ``ValueError`` every unreadable world file
    gets, not the parser's ``RecursionError``."""
    from entra_passthrough.testing import World

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match="nested too deeply") as info:
        World.from_file(path)
    assert info.value.__cause__ is None
