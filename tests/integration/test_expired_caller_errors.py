"""A caller whose token has expired (``bind_caller(token=...)`` ends at the token's ``exp``) gets
``AssertionExpired`` (docs/errors.md) from the plain ``entra_call`` and from the per-user pool's
``tool()``, as from ``EntraMCPTool``: never the ``NoCallerError`` that says to install
``CallerMiddleware``. Nothing is sent to the MCP server.

Real components: the emulator over HTTPS (it issues the users' tokens) and a recording MCP
server under uvicorn."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from _support.mcp_world import Recorder, agent_token, make_chain, mcp_scopes
from _support.servers import ServerThread
from entra_passthrough import AssertionExpired, bind_caller
from entra_passthrough.agent_framework import entra_mcp_tool
from entra_passthrough.mcp import entra_call, entra_http_client
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

pytestmark = [pytest.mark.slow]


def _expired(idp: EntraEmulator, user: User) -> str:
    return agent_token(idp, user, lifetime=-60)


async def test_plain_entra_call_with_an_expired_token_raises_assertion_expired(
    idp: EntraEmulator, users: list[User], mcp_server: Callable[..., tuple[ServerThread, Recorder]]
) -> None:
    server, recorder = mcp_server()
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    token = _expired(idp, users[32])
    entered = False
    try:
        async with bind_caller(token=token):
            with pytest.raises(AssertionExpired) as raised:
                async with entra_call(http):
                    entered = True
    finally:
        await http.aclose()
    assert not entered
    message = str(raised.value)
    assert "CallerMiddleware" not in message
    assert "Fix:" in message
    assert token not in message
    assert recorder.snapshot() == []


async def test_pool_tool_with_an_expired_token_raises_assertion_expired(
    idp: EntraEmulator, users: list[User], mcp_server: Callable[..., tuple[ServerThread, Recorder]]
) -> None:
    server, recorder = mcp_server(stateful=True)
    pool = entra_mcp_tool(
        "records",
        f"{server.base}/mcp",
        chain=make_chain(idp),
        scopes=mcp_scopes(idp),
        per_user=True,
    )
    token = _expired(idp, users[33])
    try:
        async with bind_caller(token=token):
            with pytest.raises(AssertionExpired) as raised:
                await pool.tool()
    finally:
        await pool.aclose()
    assert raised.value.scopes == tuple(mcp_scopes(idp))
    assert "CallerMiddleware" not in str(raised.value)
    assert len(pool) == 0
    assert recorder.snapshot() == []
