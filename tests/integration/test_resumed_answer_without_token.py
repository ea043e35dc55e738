"""The GET that resumes a tool call's answer is a request of the call: sent with the call's
token, or not at all.

A legacy (stateful) MCP server with an event store lets a long tool close its SSE stream
mid-run (``ctx.close_sse_stream()``, SEP-1699 polling); the mcp SDK then resumes the answer
with ``GET`` + ``Last-Event-ID`` from the call's own task, after the server's retry interval.
When the user's token has expired by then, no token can be applied to that GET: it must not
reach the server without ``Authorization`` (it did, twice), and the call, which ran, is "may
have run" on both paths: ``CallOutcomeUnknown`` for the Agent Framework tool, the SDK's own
error (with a note) for the plain ``entra_call``, never "ended before its request was sent".

Real components: the emulator over HTTPS with MSAL's OBO, a real ``MCPServer`` (event store,
retry interval) under uvicorn recording every request it receives and counting executions.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer

from _support.events import MemoryEventStore
from _support.mcp_world import (
    Recorder,
    Seen,
    agent_token,
    build_mcp_app,
    make_chain,
    mcp_scopes,
    world_with_users,
)
from _support.servers import ServerThread
from entra_passthrough import NoCallerError, bind_caller
from entra_passthrough.agent_framework import CallOutcomeUnknown, entra_mcp_tool
from entra_passthrough.mcp import entra_call, entra_http_client
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import Lifetimes, User

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning"
    ),
]

#: The user's assertion lives this long: the call starts well inside it (connect and OBO take
#: well under a second), and the tool closes its stream only once it has expired.
ASSERTION_SECONDS = 4
#: The server's SSE retry interval (ms): how long the client waits before each resuming GET.
RETRY_MS = 500


def _polled_tool(executions: list[str]) -> Any:
    def register(server: MCPServer) -> None:
        @server.tool()
        async def polled(who: str, ctx: Context, until: float = 0.0) -> str:
            """Runs until ``until`` (wall clock), closes its SSE stream, then answers."""
            executions.append(who)
            for _ in range(300):  # bounded: 30 s
                if time.time() >= until:
                    break
                await asyncio.sleep(0.1)
            await ctx.close_sse_stream()
            await asyncio.sleep(0.2)
            return json.dumps({"who": who, "done": True})

    return register


@pytest.fixture(scope="module")
def short_lived() -> Iterator[tuple[EntraEmulator, list[User]]]:
    # MCP tokens shorter than the assertion: by the time the answer is resumed, the call's own
    # token has expired as well, and a new one cannot be had for an expired assertion.
    world, users = world_with_users(2)
    with EntraEmulator(world=world.with_lifetimes(Lifetimes(access_token=2))) as idp:
        yield idp, users


@pytest.fixture
def server(
    short_lived: tuple[EntraEmulator, list[User]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ServerThread, Recorder, list[str]]]:
    idp, _ = short_lived
    original = MCPServer.streamable_http_app

    def with_event_store(self: MCPServer, **options: Any) -> Any:
        return original(self, event_store=MemoryEventStore(), retry_interval=RETRY_MS, **options)

    monkeypatch.setattr(MCPServer, "streamable_http_app", with_event_store)
    recorder = Recorder()
    executions: list[str] = []
    thread = ServerThread(
        lambda base: build_mcp_app(
            idp,
            base_url=base,
            recorder=recorder,
            stateful=True,
            json_response=False,
            extra_tools=_polled_tool(executions),
        ),
        name="mcp",
    ).start()
    try:
        yield thread, recorder, executions
    finally:
        thread.stop()


def _assertion(idp: EntraEmulator, user: User, lifetime: int) -> tuple[str, float]:
    """The user's token and the wall-clock time the tool waits for (past its expiry)."""
    token = agent_token(idp, user, lifetime=lifetime)
    return token, time.time() + lifetime + 0.5


def _without_token(seen: list[Seen]) -> list[Seen]:
    return [s for s in seen if s.oid is None]


async def test_agent_framework_tool_sends_no_resuming_get_without_a_token(
    short_lived: tuple[EntraEmulator, list[User]],
    server: tuple[ServerThread, Recorder, list[str]],
) -> None:
    idp, users = short_lived
    thread, recorder, executions = server
    tool = entra_mcp_tool(
        "records", f"{thread.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    token, until = _assertion(idp, users[0], ASSERTION_SECONDS)
    failure: BaseException | None = None
    try:
        async with bind_caller(token=token):
            try:
                await asyncio.wait_for(tool.call_tool("polled", who="P1", until=until), 60)
            except Exception as exc:
                failure = exc
        seen = recorder.snapshot()  # before the close: its DELETE acts for nobody (documented)
    finally:
        await tool.close()
    assert executions == ["P1"]
    assert [s.rpc for s in seen].count("tools/call") == 1
    assert _without_token(seen) == [], _without_token(seen)
    assert isinstance(failure, CallOutcomeUnknown), repr(failure)
    message = str(failure)
    assert "may have run" in message
    assert "could not be resumed" in message
    assert failure.status is None  # the call's own answer was a 200 stream
    assert token not in message
    assert "eyJ" not in message


async def test_plain_entra_call_sends_no_resuming_get_and_does_not_say_not_sent(
    short_lived: tuple[EntraEmulator, list[User]],
    server: tuple[ServerThread, Recorder, list[str]],
) -> None:
    idp, users = short_lived
    thread, recorder, executions = server
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[thread.base])
    token, until = _assertion(idp, users[1], ASSERTION_SECONDS)
    failure: BaseException | None = None
    seen: list[Seen] = []
    try:
        async with (
            bind_caller(token=token),
            Client(streamable_http_client(f"{thread.base}/mcp", http_client=http)) as mcp,
        ):
            try:
                async with entra_call(http):
                    await asyncio.wait_for(
                        mcp.call_tool("polled", {"who": "P2", "until": until}), 60
                    )
            except Exception as exc:
                failure = exc
            seen = recorder.snapshot()  # before the client's DELETE (outside the call)
    finally:
        await http.aclose()
    assert executions == ["P2"]
    assert [s.rpc for s in seen].count("tools/call") == 1
    assert _without_token(seen) == [], _without_token(seen)
    # The call ran: never "ended before its request was sent", which invites sending it again.
    assert not isinstance(failure, NoCallerError), repr(failure)
    assert isinstance(failure, MCPError), repr(failure)
    notes = " ".join(getattr(failure, "__notes__", []))
    assert "may have run" in notes
    assert "Last-Event-ID" in notes
    assert token not in notes
    assert "eyJ" not in notes


async def test_a_resuming_get_carries_the_callers_token_while_it_lasts(
    short_lived: tuple[EntraEmulator, list[User]],
    server: tuple[ServerThread, Recorder, list[str]],
) -> None:
    """The control: with a valid assertion the answer is resumed (the GET carries the user's
    re-resolved token) and the call succeeds, once."""
    idp, users = short_lived
    thread, recorder, executions = server
    tool = entra_mcp_tool(
        "records", f"{thread.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    user = users[0]
    token = agent_token(idp, user, lifetime=3600)
    # Past the MCP token's 2 s: the resuming GET needs a new one.
    until = time.time() + 2.5
    try:
        async with bind_caller(token=token):
            result = await asyncio.wait_for(tool.call_tool("polled", who="P3", until=until), 60)
        seen = recorder.snapshot()
    finally:
        await tool.close()
    assert executions == ["P3"]
    assert "done" in " ".join(str(getattr(part, "text", part)) for part in result)
    call = next(i for i, s in enumerate(seen) if s.rpc == "tools/call")
    resumed = [s for s in seen[call + 1 :] if s.method == "GET"]
    # Status 0: the server was still finishing that GET when the client had its answer.
    assert resumed
    assert all(s.oid == user.oid and s.status in (0, 200) for s in resumed), resumed
    assert _without_token(seen) == []
