"""An MCP server that answers every ``tools/call`` with a claims challenge (401
``insufficient_claims``, a conditional access step-up the token cannot meet): the Agent
Framework tool raises the auth's ``InteractionRequired`` with the server's claims (what
``step_up_challenge`` hands to the user's client), never a ``TokenVerificationError`` telling
the operator to check the tool's scopes, and the tool never runs.

Real components: the emulator over HTTPS (on-behalf-of with the claims), a real mcp server on
uvicorn behind a wrapper that answers its calls with the challenge."""

from __future__ import annotations

import base64
import json
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
from entra_passthrough import InteractionRequired, TokenVerificationError, bind_caller
from entra_passthrough.agent_framework import entra_mcp_tool
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

CLAIMS = json.dumps({"access_token": {"acrs": {"essential": True, "value": "c1"}}})
CHALLENGE = (
    f'Bearer error="insufficient_claims", claims="{base64.b64encode(CLAIMS.encode()).decode()}"'
)


def _challenging(app: Any) -> Any:
    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await app(scope, receive, send)
        body, replay = await read_json_request(receive)
        if isinstance(body, dict) and body.get("method") == "tools/call":
            headers = [(b"www-authenticate", CHALLENGE.encode())]
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return None
        return await app(scope, replay, send)

    return wrapper


async def test_a_claims_challenge_the_token_cannot_meet_is_the_users_step_up(
    idp: EntraEmulator, users: list[User]
) -> None:
    executions: list[tuple[str, str]] = []
    server = ServerThread(
        lambda base: _challenging(
            build_mcp_app(idp, base_url=base, recorder=Recorder(), executions=executions)
        ),
        name="mcp",
    ).start()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    outcomes: list[BaseException | None] = []
    try:
        with bind_caller(token=agent_token(idp, users[12])):
            for _ in range(3):
                try:
                    await tool.call_tool("whoami", who="step-up")
                    outcomes.append(None)
                except Exception as exc:
                    outcomes.append(exc)
    finally:
        await tool.close()
        server.stop()
    assert executions == []
    for outcome in outcomes:
        assert isinstance(outcome, InteractionRequired), repr(outcome)
        assert not isinstance(outcome, TokenVerificationError)
        assert outcome.claims == CLAIMS
        assert "scopes" not in (outcome.fix or "")
