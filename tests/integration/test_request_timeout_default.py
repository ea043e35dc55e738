"""A tool call whose answer never comes is bounded by default: ``EntraMCPTool`` keeps
agent-framework 1.26's ``request_timeout`` (30 s; 1.23 had none) instead of waiting for ever.
A server, or a device in front of it, that opens the answer's event stream and then sends only
keep-alive comments restarts the HTTP read timeout with every comment: without the request
timeout the user's run waited for as long as the stream stayed open.

Real components: the emulator and MSAL behind ``EntraMCPTool``, a real MCP server under
uvicorn behind an ASGI wrapper that stalls one call's answer with keep-alive comments."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
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
from entra_passthrough.agent_framework import (
    CallOutcomeUnknown,
    PoolOptions,
    _af_seams,
    entra_mcp_tool,
)
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

URL = "https://mcp.example.com/mcp"


def test_the_request_timeout_is_bounded_unless_asked_otherwise(idp: EntraEmulator) -> None:
    """The default is agent-framework's own finite one; an explicit value, ``None`` included
    (no bound, asked for), is kept; the per-user pool's tools get the same."""
    chain = make_chain(idp)
    scopes = mcp_scopes(idp)
    default = entra_mcp_tool("records", URL, chain=chain, scopes=scopes)
    assert default.request_timeout == _af_seams.DEFAULT_TIMEOUT == 30
    unbounded = entra_mcp_tool("records", URL, chain=chain, scopes=scopes, request_timeout=None)
    assert unbounded.request_timeout is None
    longer = entra_mcp_tool("records", URL, chain=chain, scopes=scopes, request_timeout=600)
    assert longer.request_timeout == 600
    pool = entra_mcp_tool("records", URL, chain=chain, scopes=scopes, per_user=PoolOptions())
    assert pool._unpooled().request_timeout == 30  # type: ignore[union-attr]


Respond = Callable[[dict[str, Any], Any], Awaitable[None]]


def _intercepted(app: Any, who: str, respond: Respond) -> Any:
    """The MCP app, except that a ``tools/call`` whose ``who`` argument is ``who`` is answered
    by ``respond(request, send)`` instead (the request's parsed JSON-RPC body)."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            parsed, replay = await read_json_request(receive)
            params = parsed.get("params") if isinstance(parsed, dict) else None
            if ((params or {}).get("arguments") or {}).get("who") == who:
                await respond(parsed, send)
                return
            await app(scope, replay, send)
            return
        await app(scope, receive, send)

    return wrapped


async def _start(send: Any, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type)],
        }
    )


def _keep_alive_stall(app: Any, stalled: list[str]) -> Any:
    """A ``tools/call`` whose ``who`` is "stall" is answered 200 with an event stream that
    carries only keep-alive comments (every 0.2 s, bounded to 20 s)."""

    async def respond(request: dict[str, Any], send: Any) -> None:
        stalled.append("stall")
        await _start(send, b"text/event-stream")
        for _ in range(100):  # bounded: 20 s of comments, then the stream ends
            comment = {"type": "http.response.body", "body": b": keep-alive\n\n"}
            await send({**comment, "more_body": True})
            await asyncio.sleep(0.2)
        await send({"type": "http.response.body", "body": b""})

    return _intercepted(app, "stall", respond)


async def test_an_answer_kept_open_with_comments_only_ends_at_the_request_timeout(
    idp: EntraEmulator, users: list[User]
) -> None:
    """The stalled call fails ``CallOutcomeUnknown`` ("may have run") once its request timeout
    passes, although the stream is alive; it is not sent again, and the tool goes on serving.
    (The timeout is set short here; by default it is 30 s, see the test above.)"""
    stalled: list[str] = []
    ran: list[tuple[str, str]] = []
    server = ServerThread(
        lambda base: _keep_alive_stall(
            build_mcp_app(idp, base_url=base, recorder=Recorder(), executions=ran), stalled
        ),
        name="mcp",
    ).start()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    tool.request_timeout = 2  # the default's behaviour, shorter
    try:
        async with bind_caller(token=agent_token(idp, users[3])):
            started = time.monotonic()
            with pytest.raises(CallOutcomeUnknown, match="may have run") as raised:
                await tool.call_tool("whoami", who="stall")
            waited = time.monotonic() - started
            assert "request timeout (2 s)" in str(raised.value)
            assert "raise request_timeout=" in str(raised.value)
            await tool.call_tool("whoami", who="after")
    finally:
        await tool.close()
        server.stop()
    assert waited < 15, f"waited {waited:.1f} s: the comments kept the call waiting"
    assert stalled == ["stall"]  # never sent again
    assert [oid for who, oid in ran if who == "after"] == [users[3].oid]


def _oversized_answer(app: Any, answered: list[int]) -> Any:
    """A ``tools/call`` whose ``who`` is "big" is answered (after the tool would have run) with
    one server-sent event of 2 MiB: over the mcp client's limit for one event (1 MiB)."""

    async def respond(request: dict[str, Any], send: Any) -> None:
        answered.append(request["id"])
        result = {"content": [{"type": "text", "text": "x" * (2 * 1024 * 1024)}]}
        event = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result})
        await _start(send, b"text/event-stream")
        body = f"event: message\ndata: {event}\n\n".encode()
        await send({"type": "http.response.body", "body": body})

    return _intercepted(app, "big", respond)


async def test_an_answer_over_the_sse_event_limit_says_so_and_how_to_avoid_it(
    idp: EntraEmulator, users: list[User]
) -> None:
    """A result in one event larger than the client's limit (the mcp SDK's 1 MiB) is dropped by
    the SDK as "SSE stream failed": the call ran, so "may have run", and the message says it
    was the answer's size (not a lost connection) and what to change. The tool goes on."""
    answered: list[int] = []
    ran: list[tuple[str, str]] = []
    server = ServerThread(
        lambda base: _oversized_answer(
            build_mcp_app(idp, base_url=base, recorder=Recorder(), executions=ran), answered
        ),
        name="mcp",
    ).start()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    try:
        async with bind_caller(token=agent_token(idp, users[2])):
            with pytest.raises(CallOutcomeUnknown, match="may have run") as raised:
                await tool.call_tool("whoami", who="big")
            await tool.call_tool("whoami", who="after")
    finally:
        await tool.close()
        server.stop()
    text = str(raised.value)
    if _sdk_names_the_size(raised.value):
        assert "larger than the client's limit for one server-sent event (1048576 bytes" in text
        assert "connection was lost" not in text
        assert "json_response=True" in text
    # (mcp 2.2 reports it as "SSE stream ended without a response": nothing names the size,
    # and the call is "may have run" all the same)
    assert len(answered) == 1  # never sent again
    assert [oid for who, oid in ran if who == "after"] == [users[2].oid]


def _sdk_names_the_size(error: BaseException) -> bool:
    """Whether the mcp SDK said why it dropped the answer (2.3: "SSE stream failed: Server-sent
    event exceeded the ... byte limit"; 2.2 says only that the stream ended)."""
    seen: BaseException | None = error
    while seen is not None:
        if "byte limit" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _answers_timed_out(app: Any, answered: list[int]) -> Any:
    """A ``tools/call`` whose ``who`` is "upstream" is answered at once with the JSON-RPC error
    -32001 "Request timed out" (what a gateway forwards when its own upstream timed out)."""

    async def respond(request: dict[str, Any], send: Any) -> None:
        answered.append(request["id"])
        error = {"code": -32001, "message": "Request timed out"}
        body = json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": error})
        await _start(send, b"application/json")
        await send({"type": "http.response.body", "body": body.encode()})

    return _intercepted(app, "upstream", respond)


async def test_a_timed_out_answer_from_the_server_is_not_called_this_tools_timeout(
    idp: EntraEmulator, users: list[User]
) -> None:
    """A -32001 "Request timed out" the server (or a gateway) answers long before the tool's
    own request timeout is the server's: the message says so and does not advise raising
    ``request_timeout=``, which cannot help. Still "may have run", never sent again."""
    answered: list[int] = []
    server = ServerThread(
        lambda base: _answers_timed_out(
            build_mcp_app(idp, base_url=base, recorder=Recorder()), answered
        ),
        name="mcp",
    ).start()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    try:
        async with bind_caller(token=agent_token(idp, users[1])):
            with pytest.raises(CallOutcomeUnknown, match="may have run") as raised:
                await tool.call_tool("whoami", who="upstream")
    finally:
        await tool.close()
        server.stop()
    text = str(raised.value)
    assert "answered that the request timed out" in text
    assert "raise request_timeout=" not in text
    assert "no answer came" not in text
    assert len(answered) == 1
