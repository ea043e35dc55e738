"""A run that opens its MCP tool while the server restarts (the TCP connection refused: nothing
is sent) used to fail at once: the host answered "An internal server error occurred." for a
run that could have succeeded a moment later. The connect now tries again while the server
refuses connections, for a bounded time. Real components: the emulator and MSAL, a real MCP
server under uvicorn, stopped and started again on the same port."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from agent_framework.exceptions import ToolException

from _support.mcp_world import Recorder, agent_token, build_mcp_app, make_chain, mcp_scopes
from _support.servers import ServerThread
from entra_passthrough import Caller, bind_caller
from entra_passthrough.agent_framework import entra_mcp_tool
from entra_passthrough.testing import EntraEmulator


@pytest.fixture
def idp() -> Iterator[EntraEmulator]:
    with EntraEmulator() as emulator:
        yield emulator


async def test_a_connect_during_a_restart_waits_for_the_server(idp: EntraEmulator) -> None:
    server = ServerThread(
        lambda base: build_mcp_app(idp, base_url=base, recorder=Recorder()), name="mcp"
    ).start()
    url = f"{server.base}/mcp"
    server.stop()  # the port refuses connections now
    back = threading.Timer(0.8, server.start)  # ... until the server is back on it
    chain = make_chain(idp)
    tool = entra_mcp_tool("tools", url, chain=chain, scopes=mcp_scopes(idp))
    back.start()
    try:
        with bind_caller(Caller.from_token(agent_token(idp, "alice"))):
            await tool.connect()
            assert tool.is_connected
            assert any(f.name == "whoami" for f in tool.functions)
    finally:
        back.cancel()
        back.join()
        await tool.close()
        server.stop()
        chain.close()


async def test_a_server_that_stays_down_still_fails_the_connect(idp: EntraEmulator) -> None:
    server = ServerThread(
        lambda base: build_mcp_app(idp, base_url=base, recorder=Recorder()), name="mcp"
    ).start()
    url = f"{server.base}/mcp"
    server.stop()
    chain = make_chain(idp)
    tool = entra_mcp_tool("tools", url, chain=chain, scopes=mcp_scopes(idp))
    try:
        with (
            bind_caller(Caller.from_token(agent_token(idp, "alice"))),
            pytest.raises(ToolException, match="Could not connect"),
        ):
            await tool.connect()
    finally:
        await tool.close()
        chain.close()
