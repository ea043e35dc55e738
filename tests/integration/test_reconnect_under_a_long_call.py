"""A reconnect lets the calls in flight on the old connection finish for a bounded time only
(``_DRAIN_WAIT``), then closes it under them: with agent-framework-core 1.23 and 1.26 alike.

1.26's own ``close`` waits until every call in flight has ended, however long: one tool running
for minutes held the reconnect that another call's refused session needed, and every call that
arrived meanwhile (which then failed as "the server was unreachable"). ``close_under_calls``
(``_af_seams``) closes as 1.23 did.

Real components: the emulator and MSAL behind ``EntraMCPTool``, a real legacy (session) MCP
server under uvicorn, behind an ASGI wrapper that refuses one call's session with 404."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from _support.mcp_world import (
    Recorder,
    agent_token,
    build_mcp_app,
    make_chain,
    mcp_scopes,
    read_json_request,
)
from _support.servers import ServerThread
from entra_passthrough import bind_caller
from entra_passthrough.agent_framework import CallOutcomeUnknown, entra_mcp_tool
from entra_passthrough.agent_framework import _tool as tool_module
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

pytestmark = [pytest.mark.slow]

#: How long the long call runs on the server, and the drain bound the test sets.
HOLD = 20.0
DRAIN = 1.0


def _refusing_b_once(app: Any, refused: list[str]) -> Any:
    """Answers the first ``tools/call`` whose ``who`` is "B" with 404 (its session refused,
    before anything ran); the rest goes on."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        parsed, replay = await read_json_request(receive)
        params = (parsed.get("params") or {}) if isinstance(parsed, dict) else {}
        who = (params.get("arguments") or {}).get("who")
        if parsed.get("method") != "tools/call" or who != "B" or refused:
            await app(scope, replay, send)
            return
        refused.append(who)
        body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "nope"}}
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    return wrapper


def _fast(server: Any) -> None:
    @server.tool()
    async def fast(who: str = "") -> str:
        """Answers at once."""
        return who


async def test_a_reconnect_closes_under_a_call_still_running_after_the_drain(
    idp: EntraEmulator, users: list[User], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tool_module, "_DRAIN_WAIT", DRAIN)
    refused: list[str] = []
    executions: list[tuple[str, str]] = []
    server = ServerThread(
        lambda base: _refusing_b_once(
            build_mcp_app(
                idp,
                base_url=base,
                recorder=Recorder(),
                executions=executions,
                stateful=True,
                hold=HOLD,  # every whoami: only the long call A uses it
                extra_tools=_fast,
            ),
            refused,
        ),
        name="mcp",
    ).start()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    ended: dict[str, tuple[float, object]] = {}
    try:
        with bind_caller(token=agent_token(idp, users[33])):
            await tool.call_tool("fast", who="warm")
            start = time.monotonic()

            async def call(name: str, who: str) -> None:
                try:
                    outcome: object = await tool.call_tool(name, who=who)
                except Exception as exc:
                    outcome = exc
                ended[who] = (time.monotonic() - start, outcome)

            long = asyncio.create_task(call("whoami", "A"))
            await asyncio.sleep(0.5)  # A is running on the server
            refused_first = asyncio.create_task(call("fast", "B"))  # 404: reconnect
            await asyncio.sleep(0.5)
            behind = asyncio.create_task(call("fast", "C"))  # arrives during the reconnect
            async with asyncio.timeout(HOLD + 20):
                await asyncio.gather(long, refused_first, behind)
    finally:
        await tool.close()
        server.stop()
    assert refused == ["B"]
    # B's session was refused before it ran: sent again on the new connection; C waited for it.
    # Both well before A's HOLD (1.26's close alone would have held them until A ended).
    for who in ("B", "C"):
        at, outcome = ended[who]
        assert not isinstance(outcome, BaseException), (who, outcome)
        assert at < HOLD / 2, (who, at)
    # A was cut off by the close after the drain: it may have run, and is never sent again.
    at, outcome = ended["A"]
    assert isinstance(outcome, CallOutcomeUnknown), outcome
    assert at < HOLD / 2, at
    # It says what happened: our reconnect closed the connection under it after the drain (what
    # the server answered the cut-off request, a 500 after the session's DELETE, is no fault).
    message = str(outcome)
    assert "replaced its connection" in message, message
    assert f"waiting {DRAIN:g} s" in message, message
    assert "HTTP 500" not in message, message
    assert [who for who, _ in executions] == ["A"]
