"""A connect (discovery, initialize, tools/list) answered 429/502/503/504 with ``Retry-After``,
as a gateway in front of a restarting MCP server answers, used to fail the run at once with
agent-framework's untyped "Could not connect ...: Server returned an error response", which named
no status and pointed at authentication. A connect runs no tool: it is now tried again within
its bound (5 s), after ``Retry-After`` when that fits, and a server that keeps answering so
fails with a typed ``MCPServerUnreachable`` naming the status and ``Retry-After``. A
``tools/call`` answered 503 is still never sent again.

Real components: the emulator and MSAL behind ``EntraMCPTool`` (shared and per-user pool), a
real MCP server (modern stateless, and legacy stateful) under uvicorn behind an ASGI wrapper
that answers the chosen requests itself, counting what it answered and what ran."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from agent_framework.exceptions import ToolException

from _support.mcp_world import (
    Recorder,
    agent_token,
    build_mcp_app,
    make_chain,
    mcp_scopes,
    read_json_request,
)
from _support.servers import ServerThread
from entra_passthrough import EntraPassthroughError, bind_caller
from entra_passthrough.agent_framework import (
    CallOutcomeUnknown,
    MCPServerUnreachable,
    entra_mcp_tool,
)
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

pytestmark = [pytest.mark.slow]


class Faults:
    """What the wrapper answers itself: for a JSON-RPC method, a queue of (status, Retry-After)
    answered in turn to its POSTs (``forever``: the last one for every later POST too), and
    every method it answered."""

    def __init__(self) -> None:
        self.queue: dict[str, list[tuple[int, str | None]]] = {}
        self.forever: dict[str, tuple[int, str | None]] = {}
        self.answered: list[str] = []
        self.at: list[float] = []

    def take(self, rpc: str | None) -> tuple[int, str | None] | None:
        if rpc is None:
            return None
        queued = self.queue.get(rpc)
        if queued:
            return queued.pop(0)
        return self.forever.get(rpc)


def _faulty(app: Any, faults: Faults) -> Any:
    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        parsed, replay = await read_json_request(receive)
        rpc = parsed.get("method") if isinstance(parsed, dict) else None
        answer = faults.take(rpc if isinstance(rpc, str) else None)
        if answer is None:
            await app(scope, replay, send)
            return
        status, retry_after = answer
        faults.answered.append(str(rpc))
        faults.at.append(time.monotonic())
        headers = [(b"content-type", b"text/html")]
        if retry_after is not None:
            headers.append((b"retry-after", retry_after.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"<html>upstream restarting</html>"})

    return wrapper


def _serve(idp: EntraEmulator, faults: Faults, *, stateful: bool) -> Any:
    recorder = Recorder()
    executions: list[tuple[str, str]] = []
    server = ServerThread(
        lambda base: _faulty(
            build_mcp_app(
                idp,
                base_url=base,
                recorder=recorder,
                executions=executions,
                stateful=stateful,
                json_response=not stateful,
            ),
            faults,
        ),
        name="mcp",
    ).start()
    return server, executions


async def _call(idp: EntraEmulator, url: str, user: User, *, per_user: bool, who: str) -> Any:
    """One call as ``user``: on the shared tool, or on the user's pooled connection, entered
    as an agent enters it."""
    token = agent_token(idp, user)
    chain, scopes = make_chain(idp), mcp_scopes(idp)
    if per_user:
        async with entra_mcp_tool(
            "records", url, chain=chain, scopes=scopes, per_user=True
        ) as pool:
            with bind_caller(token=token):
                pooled = await pool.tool()
                async with pooled:
                    return await pooled.call_tool("whoami", who=who)
    tool = entra_mcp_tool("records", url, chain=chain, scopes=scopes)
    try:
        with bind_caller(token=token):
            async with tool:
                return await tool.call_tool("whoami", who=who)
    finally:
        await tool.close()


def _first_connect_rpc(stateful: bool, step: str) -> str:
    # (A modern server's server/discover answered 5xx is the mcp SDK's to handle: it falls back
    # to initialize by itself.)
    return "initialize" if step == "open" and stateful else "tools/list"


@pytest.mark.parametrize(
    ("status", "stateful", "per_user", "step"),
    [
        pytest.param(503, False, False, "list", id="503-modern-shared-tools/list"),
        pytest.param(502, False, False, "list", id="502-modern-shared-tools/list"),
        pytest.param(429, True, False, "list", id="429-legacy-shared-tools/list"),
        pytest.param(504, True, False, "open", id="504-legacy-shared-initialize"),
        pytest.param(503, False, True, "list", id="503-modern-pool-tools/list"),
        pytest.param(429, True, True, "list", id="429-legacy-pool-tools/list"),
        pytest.param(502, True, True, "open", id="502-legacy-pool-initialize"),
    ],
)
async def test_a_connect_answered_busy_once_is_tried_again(
    status: int,
    stateful: bool,
    per_user: bool,
    step: str,
    idp: EntraEmulator,
    users: list[User],
) -> None:
    rpc = _first_connect_rpc(stateful, step)
    faults = Faults()
    faults.queue[rpc] = [(status, "1")]
    server, executions = _serve(idp, faults, stateful=stateful)
    started = time.monotonic()
    try:
        result = await _call(idp, f"{server.base}/mcp", users[32], per_user=per_user, who="one")
    finally:
        server.stop()
    assert faults.answered == [rpc]
    assert executions == [("one", users[32].oid)], result
    # Retry-After: 1 was honoured (not a tight loop), and the bound kept.
    assert 0.9 <= time.monotonic() - started < 5.0


@pytest.mark.parametrize(
    ("status", "stateful", "per_user"),
    [
        pytest.param(503, False, False, id="503-modern-shared"),
        pytest.param(429, True, True, id="429-legacy-pool"),
    ],
)
async def test_a_connect_answered_busy_every_time_is_typed_and_bounded(
    status: int, stateful: bool, per_user: bool, idp: EntraEmulator, users: list[User]
) -> None:
    faults = Faults()
    faults.forever["tools/list"] = (status, "1")
    server, executions = _serve(idp, faults, stateful=stateful)
    token = agent_token(idp, users[33])
    started = time.monotonic()
    try:
        with pytest.raises(ToolException) as raised:
            await _call(idp, f"{server.base}/mcp", users[33], per_user=per_user, who="x")
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    error = raised.value.error  # type: ignore[attr-defined]
    assert isinstance(error, MCPServerUnreachable), repr(raised.value)
    assert isinstance(error, EntraPassthroughError)
    assert error.server_label == "records"
    assert error.origin == server.base
    assert (error.status, error.retry_after) == (status, 1.0)
    message = str(error)
    assert "MCP server 'records'" in message
    assert f"HTTP {status} to its tools/list request" in message
    assert "Retry-After: 1 s" in message
    assert "No tool ran" in message
    assert "not a problem with the user's token" in message
    assert "authenticated as" not in message
    assert "Fix:" in message
    assert "/mcp" not in message
    assert token not in str(raised.value)
    assert "eyJ" not in str(raised.value)
    assert executions == []
    # Bounded: within the connect's 5 s, not hammered, and never sooner than Retry-After.
    assert elapsed < 7.0
    answered = len(faults.answered)
    assert 2 <= answered <= 6, faults.answered
    gaps = [b - a for a, b in zip(faults.at, faults.at[1:], strict=False)]
    assert all(gap >= 0.95 for gap in gaps), gaps


@pytest.mark.parametrize(
    ("asked", "read", "said"),
    [("30", 30.0, "Retry-After: 30 s"), ("86400", 3600.0, "Retry-After: an hour or more")],
)
async def test_a_retry_after_longer_than_the_bound_is_not_slept_through(
    idp: EntraEmulator, users: list[User], asked: str, read: float, said: str
) -> None:
    faults = Faults()
    faults.forever["tools/list"] = (503, asked)
    server, executions = _serve(idp, faults, stateful=False)
    started = time.monotonic()
    try:
        with pytest.raises(ToolException) as raised:
            await _call(idp, f"{server.base}/mcp", users[34], per_user=False, who="x")
    finally:
        server.stop()
    assert time.monotonic() - started < 3.0
    assert faults.answered == ["tools/list"]
    error = raised.value.error  # type: ignore[attr-defined]
    assert isinstance(error, MCPServerUnreachable), repr(raised.value)
    assert (error.status, error.retry_after) == (503, read)
    assert said in str(error)  # a day is not said as the hour it is bounded to
    assert "not tried again" in str(error), str(error)
    assert executions == []


async def test_a_reconnect_answered_busy_once_is_tried_again(
    idp: EntraEmulator, users: list[User]
) -> None:
    """A legacy server that lost its sessions (a restart: 404 to the call) and whose gateway
    answers the reconnect's initialize 503 once: the call is sent on the new session, once."""
    faults = Faults()
    server, executions = _serve(idp, faults, stateful=True)
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    try:
        with bind_caller(token=agent_token(idp, users[35])):
            async with tool:
                await tool.call_tool("whoami", who="warm")
                faults.queue["tools/call"] = [(404, None)]  # the session is gone
                faults.queue["initialize"] = [(503, "1")]
                await tool.call_tool("whoami", who="after")
    finally:
        await tool.close()
        server.stop()
    assert faults.answered == ["tools/call", "initialize"]
    assert Counter(who for who, _ in executions) == {"warm": 1, "after": 1}


async def test_a_tool_call_answered_503_is_never_sent_again(
    idp: EntraEmulator, users: list[User]
) -> None:
    """At most once: the connect's retry never covers a ``tools/call``."""
    faults = Faults()
    faults.queue["tools/list"] = [(503, "1")]
    faults.forever["tools/call"] = (503, "1")
    server, executions = _serve(idp, faults, stateful=False)
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    try:
        with bind_caller(token=agent_token(idp, users[36])):
            async with tool:  # its connect is tried again after the 503
                with pytest.raises(CallOutcomeUnknown) as raised:
                    await tool.call_tool("whoami", who="once")
    finally:
        await tool.close()
        server.stop()
    assert faults.answered == ["tools/list", "tools/call"]
    assert executions == []
    assert raised.value.status == 503


async def test_another_http_error_at_the_connect_is_named_and_not_retried(
    idp: EntraEmulator, users: list[User]
) -> None:
    """A 500 is not a "not now": not tried again, but its status and request are named."""
    faults = Faults()
    faults.forever["tools/list"] = (500, None)
    server, executions = _serve(idp, faults, stateful=False)
    try:
        with pytest.raises(ToolException) as raised:
            await _call(idp, f"{server.base}/mcp", users[37], per_user=False, who="x")
    finally:
        server.stop()
    assert faults.answered == ["tools/list"]
    assert "HTTP 500 to its tools/list request" in str(raised.value)
    assert executions == []
