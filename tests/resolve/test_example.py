"""examples/resolve_policies/policies.py runs and all its outcomes are the expected ones."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[2] / "examples" / "resolve_policies" / "policies.py"


async def test_policies_example(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(EXAMPLE), run_name="example")
    assert await module["main"]() == 0
    out = capsys.readouterr().out
    assert "call id header call-B" in out
    assert "no caller at all             -> refused: NoCallerError" in out
