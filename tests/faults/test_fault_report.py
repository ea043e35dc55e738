"""The fault suite's report at its quick size (``python -m bench._faults --quick``): every fault
ends in a typed outcome, no user call falls back to the app identity, no token is logged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_fault_suite_quick(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench._faults", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "faults.json").read_text())
    totals = results["totals"]
    assert totals["app_fallbacks"] == 0
    assert totals["tokens_logged"] == 0
    assert totals["untyped"] == 0
    assert totals["accepted_without_keys"] == 0
    assert totals["mcp_lost_for_good"] == 0
    assert totals["mcp_ran_twice"] == 0
    assert len([r for r in results["rows"] if r["group"] == "MCP server"]) == 6
    rows = {row["fault"]: row for row in results["rows"]}
    assert rows["429 Retry-After 30"]["outcomes"] == {"Throttled": results["calls"]}
    assert rows["503 once (transient)"]["outcomes"] == {"ok": results["calls"]}
    assert rows["slow (answer within read)"]["outcomes"] == {"ok": results["calls"]}
    assert "| token endpoint | 503, every request |" in (tmp_path / "faults.md").read_text()
    # every fault the suite promises has its row, each ending in a typed failure
    for fault in (
        "500, every request",
        "502, every request",
        "504, every request",
        "timeout (no answer within read)",
        "connection reset",
        "truncated body (not JSON)",
        "non-JSON body (a proxy's HTML page)",
        "trickling body (a byte every 0.2 s)",
        "MI endpoint 503",
        "MI endpoint reset",
        "MI endpoint hangs",
        "az missing",
        "azd missing",
        "az hangs",
        "azd hangs",
    ):
        assert set(rows[fault]["outcomes"]) == {"SourceUnavailable"}, (fault, rows[fault])
    for fault in ("JWKS 503", "JWKS connection reset"):
        assert set(rows[fault]["outcomes"]) == {"SigningKeysUnavailable"}, rows[fault]
    # the proxy's page is answered in the path: the emulator's token endpoint sees nothing
    assert "token" not in rows["non-JSON body (a proxy's HTML page)"]["requests"]


def test_the_suite_finds_any_piece_of_a_token_in_the_logs(
    monkeypatch: pytest.MonkeyPatch, entra_emulator: Any
) -> None:
    """``tokens logged`` counts a token when any 35-character piece of it is in the text: it
    tried five windows per token, and a piece between them (a cut body's share) went unseen."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench._faults import tokens_in

    idp = entra_emulator
    token = idp.user_token("alice", audience=idp.agent.client_id)
    assert tokens_in(idp, "no secret here") == 0
    for start in range(0, len(token) - 35, 7):
        # >= 1: a piece can also be in a token an earlier test had this emulator issue (two
        # tokens of one user and audience share most of their payload), which counts it too
        assert tokens_in(idp, f"log: ...{token[start : start + 35]}... end") >= 1, start
