"""The ``mcp`` extra's uvicorn floor is at least what mcp requires: it said ``uvicorn>=0.30``
where every allowed mcp (2.2.0, the oldest, as the installed one) requires ``uvicorn>=0.31.1``,
a floor no install could reach. (Plain parsing: ``tests/packaging`` shadows the ``packaging``
library here.)"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _floor(requirement: str, name: str) -> tuple[int, ...] | None:
    """The ``>=`` version of ``name`` in a requirement string, or None (another package)."""
    m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*([^;#]*)", requirement)
    if not m or m.group(1).lower() != name:
        return None
    floor = re.search(r">=\s*([0-9][0-9.]*)", m.group(2))
    return tuple(int(x) for x in floor.group(1).split(".")) if floor else None


def test_the_mcp_extra_uvicorn_floor_meets_what_mcp_requires() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    ours = [f for r in project["optional-dependencies"]["mcp"] if (f := _floor(r, "uvicorn"))]
    theirs = [f for r in metadata.requires("mcp") or [] if (f := _floor(r, "uvicorn"))]
    assert len(ours) == 1
    assert theirs, "mcp no longer names uvicorn: drop the floor's reason in pyproject.toml"
    assert ours[0] >= max(theirs), (ours, theirs)
