"""The ``InsufficientScope`` a tool call gets when the MCP server answers 403 keeps its context
as attributes, as every error of the library: what to do is its ``fix``, not words inside its
``reason`` (a program reading ``.fix`` found ``None``).

Real components: the emulator and MSAL behind ``EntraMCPTool``, a real MCP server behind an
ASGI wrapper that refuses ``tools/call`` with the library's own 403 challenge."""

from __future__ import annotations

from typing import Any

from _support.mcp_world import (
    Recorder,
    ServerThread,
    agent_token,
    build_mcp_app,
    make_chain,
    mcp_scopes,
    read_json_request,
)
from entra_passthrough import InsufficientScope, bind_caller
from entra_passthrough._www_auth import challenge, send_challenge
from entra_passthrough.agent_framework import entra_mcp_tool
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User


def _forbidding(app: Any, base: str, seen: list[str]) -> Any:
    """Answers every ``tools/call`` with a 403 ``insufficient_scope`` challenge."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        body, replay = await read_json_request(receive)
        if not isinstance(body, dict) or body.get("method") != "tools/call":
            await app(scope, replay, send)
            return
        seen.append("tools/call")
        status, header, payload = challenge(
            error=InsufficientScope("the token lacks Files.Write", required=["Files.Write"]),
            resource_metadata=f"{base}/.well-known/oauth-protected-resource/mcp",
            scopes=["api://other-app/Files.Write"],
        )
        await send_challenge(send, status, header, payload)

    return wrapper


async def test_a_403_tool_call_error_carries_its_remedy_as_fix(
    idp: EntraEmulator, users: list[User]
) -> None:
    refused: list[str] = []
    server = ServerThread(
        lambda base: _forbidding(
            build_mcp_app(idp, base_url=base, recorder=Recorder(), executions=[]), base, refused
        ),
        name="mcp",
    ).start()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    user = users[23]
    failure: BaseException | None = None
    try:
        with bind_caller(token=agent_token(idp, user)):
            try:
                await tool.call_tool("whoami", who=user.oid)
            except Exception as exc:
                failure = exc
    finally:
        await tool.close()
        server.stop()
    assert refused, "the call never reached the refusing server"
    assert isinstance(failure, InsufficientScope), repr(failure)
    assert failure.fix is not None
    assert "grant the user" in failure.fix
    assert "Fix:" not in failure.reason  # the remedy is an attribute, not part of the reason
    assert "HTTP 403" in failure.reason
    assert str(failure) == f"{failure.reason} Fix: {failure.fix}"
