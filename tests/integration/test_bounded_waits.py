"""No call and no close waits on another call's duration beyond the drain bound
(``_DRAIN_WAIT``), with agent-framework-core 1.23 and 1.26 alike.

1.26 waits for every call in flight, however long it runs, before its own ``close``, ``connect``
and catalog refresh (``load_tools`` / ``load_prompts``, which it runs by itself after a server's
``tools/list_changed`` or a lost catalog subscription), holding the lock every new call's
admission needs meanwhile: one user's 20 s call held another's short call 18 s, and ``close()``
as long as the longest call. ``EntraMCPTool`` takes that access without the wait
(``_af_seams.HookedMCPTool.exclusive_under_calls``); its ``close`` lets the calls finish for the
drain bound, then closes under them, and says so in their error.

Real components: the emulator and MSAL behind ``EntraMCPTool``, a real MCP server under uvicorn,
agent-framework's ``MCPStreamableHTTPTool`` under the tool."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from mcp.server.mcpserver import Context

from _support.mcp_world import Recorder, agent_token, build_mcp_app, make_chain, mcp_scopes
from _support.servers import ServerThread
from entra_passthrough import bind_caller
from entra_passthrough.agent_framework import CallOutcomeUnknown, entra_mcp_tool
from entra_passthrough.agent_framework import _tool as tool_module
from entra_passthrough.server import current_user
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

pytestmark = [pytest.mark.slow]

#: How long a long call runs on the server, and the drain bound the tests set.
HOLD = 15.0
DRAIN = 1.0


def _tools(server: Any) -> None:
    @server.tool()
    async def slow(who: str = "") -> str:
        """Runs HOLD seconds."""
        await asyncio.sleep(HOLD)
        return json.dumps({"oid": current_user().oid, "who": who})

    @server.tool()
    async def fast(who: str = "") -> str:
        """Answers at once."""
        return json.dumps({"oid": current_user().oid, "who": who})

    @server.tool()
    async def change(ctx: Context, who: str = "") -> str:
        """Says the tool list changed (a server that adds a tool at run time)."""
        await ctx.notify_tools_changed()
        return "changed"


def _server(idp: EntraEmulator, recorder: Recorder, **kw: Any) -> ServerThread:
    return ServerThread(
        lambda base: build_mcp_app(idp, base_url=base, recorder=recorder, extra_tools=_tools, **kw),
        name="mcp",
    ).start()


async def _timed(idp: EntraEmulator, user: User, coro_of: Any) -> tuple[float, object]:
    with bind_caller(token=agent_token(idp, user)):
        start = time.monotonic()
        try:
            outcome: object = await coro_of()
        except Exception as exc:
            outcome = exc
        return time.monotonic() - start, outcome


async def test_a_catalog_refresh_does_not_hold_other_users_calls(
    idp: EntraEmulator, users: list[User]
) -> None:
    """A refresh of the tool list while one user's call runs long: it goes out at once (as the
    user it acts for), and another user's call is not held behind the long one."""
    recorder = Recorder()
    server = _server(idp, recorder)
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    try:
        with bind_caller(token=agent_token(idp, users[0])):
            await tool.connect()
        long = asyncio.create_task(_timed(idp, users[0], lambda: tool.call_tool("slow", who="A")))
        await asyncio.sleep(0.5)  # A is running on the server
        listed_from = len(recorder.snapshot())
        refresh = asyncio.create_task(_timed(idp, users[1], tool.load_tools))
        await asyncio.sleep(0.2)
        short = await _timed(idp, users[2], lambda: tool.call_tool("fast", who="C"))
        refreshed = await refresh
        async with asyncio.timeout(HOLD + 20):
            await long
    finally:
        await tool.close()
        server.stop()
    assert not isinstance(refreshed[1], BaseException), refreshed
    assert refreshed[0] < HOLD / 3, refreshed  # 1.26's own load_tools waited for A
    assert not isinstance(short[1], BaseException), short
    assert short[0] < HOLD / 3, short
    lists = [s for s in recorder.snapshot()[listed_from:] if s.rpc == "tools/list"]
    assert lists, recorder.snapshot()
    assert all(s.oid == users[1].oid for s in lists), lists
    assert all(s.status == 200 for s in lists), lists


async def test_a_refresh_after_the_servers_list_changed_notice_sends_nothing_without_a_token(
    idp: EntraEmulator, users: list[User], caplog: pytest.LogCaptureFixture
) -> None:
    """agent-framework refreshes the list by itself after the server's ``tools/list_changed``,
    in a task that acts for no user's call: under ``user_only`` (no lifecycle identity) it is
    skipped, never sent without a token (a 401 and a failed refresh), and no call waits for it
    or for the long call in flight."""
    caplog.set_level(logging.INFO, logger="entra_passthrough")
    recorder = Recorder()
    server = _server(idp, recorder)
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    try:
        with bind_caller(token=agent_token(idp, users[0])):
            await tool.connect()
        listed_from = len(recorder.snapshot())
        long = asyncio.create_task(_timed(idp, users[0], lambda: tool.call_tool("slow", who="A")))
        await asyncio.sleep(0.5)
        changed = await _timed(idp, users[1], lambda: tool.call_tool("change", who="B"))
        assert not isinstance(changed[1], BaseException), changed
        async with asyncio.timeout(5):
            while not any("list changed, not reloaded" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.05)
        short = await _timed(idp, users[2], lambda: tool.call_tool("fast", who="C"))
        async with asyncio.timeout(HOLD + 20):
            await long
    finally:
        await tool.close()
        server.stop()
    assert not isinstance(short[1], BaseException), short
    assert short[0] < HOLD / 3, short
    tokenless = [s for s in recorder.snapshot()[listed_from:] if s.method == "POST" and not s.oid]
    assert tokenless == [], tokenless


async def test_close_lets_a_call_in_flight_run_for_the_drain_bound_only(
    idp: EntraEmulator, users: list[User], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``close()`` under a long call returns after the drain bound (1.26's own waited until the
    call ended); the call fails "may have run", saying that the tool was closed under it."""
    monkeypatch.setattr(tool_module, "_DRAIN_WAIT", DRAIN)
    executions: list[tuple[str, str]] = []
    recorder = Recorder()
    server = _server(idp, recorder, hold=HOLD, executions=executions)
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    try:
        with bind_caller(token=agent_token(idp, users[0])):
            await tool.connect()
        long = asyncio.create_task(_timed(idp, users[0], lambda: tool.call_tool("whoami", who="A")))
        await asyncio.sleep(0.5)
        start = time.monotonic()
        closing_from = len(recorder.snapshot())
        async with asyncio.timeout(HOLD + 20):
            await tool.close()
            closed_in = time.monotonic() - start
            _, outcome = await long
        await asyncio.sleep(1.0)  # a reconnect behind the close would have started by now
    finally:
        server.stop()
    # The call cut off by the close does not reopen the closed tool.
    reopened = [s for s in recorder.snapshot()[closing_from:] if s.rpc == "initialize"]
    assert reopened == [], reopened
    assert not tool.is_connected
    assert closed_in < HOLD / 3, closed_in
    assert isinstance(outcome, CallOutcomeUnknown), outcome
    message = str(outcome)
    assert "may have run" in message, message
    assert "the tool was closed" in message, message
    assert "HTTP 500" not in message, message
    assert [who for who, _ in executions] == ["A"]


async def test_a_pools_close_lets_its_calls_run_for_the_drain_bound_only(
    idp: EntraEmulator, users: list[User], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tool_module, "_DRAIN_WAIT", DRAIN)
    executions: list[tuple[str, str]] = []
    server = _server(idp, Recorder(), hold=HOLD, executions=executions)
    pool = entra_mcp_tool(
        "records",
        f"{server.base}/mcp",
        chain=make_chain(idp),
        scopes=mcp_scopes(idp),
        per_user=True,
    )
    try:
        outcomes: list[object] = []
        for user, who in ((users[1], "P"), (users[2], "Q")):
            with bind_caller(token=agent_token(idp, user)):
                tool = await pool.tool()
                await tool.__aenter__()
                outcomes.append(
                    asyncio.create_task(
                        _timed(idp, user, lambda t=tool, w=who: t.call_tool("whoami", who=w))
                    )
                )
        await asyncio.sleep(0.5)
        start = time.monotonic()
        async with asyncio.timeout(HOLD + 20):
            await pool.aclose()
            closed_in = time.monotonic() - start
            ended = [await task for task in outcomes]  # type: ignore[misc]
    finally:
        server.stop()
    # Both connections closed together, each after the drain: not one after the other.
    assert closed_in < 2 * DRAIN + 3, closed_in
    for _, outcome in ended:
        assert isinstance(outcome, CallOutcomeUnknown), outcome
        assert "the tool was closed" in str(outcome), outcome
    assert sorted(who for who, _ in executions) == ["P", "Q"]


async def test_close_lets_a_call_that_ends_within_the_drain_finish(
    idp: EntraEmulator, users: list[User], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that ends within the drain bound gets its answer (1.23's close cut it off)."""
    monkeypatch.setattr(tool_module, "_DRAIN_WAIT", 10.0)
    server = _server(idp, Recorder(), hold=1.0)
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    try:
        with bind_caller(token=agent_token(idp, users[0])):
            await tool.connect()
        call = asyncio.create_task(_timed(idp, users[0], lambda: tool.call_tool("whoami", who="A")))
        await asyncio.sleep(0.3)
        async with asyncio.timeout(20):
            await tool.close()
            _, outcome = await call
    finally:
        server.stop()
    assert not isinstance(outcome, BaseException), outcome
    assert isinstance(outcome, list), outcome
    (content,) = outcome
    assert json.loads(json.loads(content.text)["result"])["who"] == "A", content.text
