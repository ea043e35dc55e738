"""MCP server faults through entra_mcp_tool: typed errors, never someone else's answer, never a
call run twice, and every tool serves again once the fault is gone (nothing lost for good)."""

from __future__ import annotations

from _support.mcp_world import legacy_ping_is_expected  # noqa: F401 (autouse here)

from ._mcp import mcp_faults


async def test_mcp_server_faults() -> None:
    rows = await mcp_faults(calls=2)
    assert len(rows) == 6
    for row in rows:
        assert row["answered_as_someone_else"] == 0, row
        assert row["ran_twice"] == 0, row
        assert row["lost_for_good"] == 0, row
        assert row["tokens_logged"] == 0, row
        assert row["outcomes_after"] == {"ok": 2}, row
    by_fault = {r["fault"]: r for r in rows}
    assert by_fault["slow (1.5 s per call)"]["outcomes"] == {"ok": 2}
    assert by_fault["restarted between calls"]["outcomes"] == {"ok": 2}
    # The server's own error answer to a call it may have run is reported, never re-sent.
    assert by_fault["answers -32000 to tools/call"]["outcomes"].get("ok", 0) == 0
