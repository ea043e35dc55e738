"""An MCP server that answers with a claims challenge (401 ``insufficient_claims``, a
conditional access step-up): met once (a CAE-like revocation), the call runs once; never met,
the Agent Framework tool raises the auth's ``InteractionRequired`` with the server's claims (what
``step_up_challenge`` hands to the user's client), never a ``TokenVerificationError`` telling the
operator to check the tool's scopes; a challenge with no claims the auth can read is a typed
refusal, never the SDK's bare "Server returned an error response". At the connect of a shared
tool inside ``ResponsesHostServer``, the user is told the same (not the host's bare
"server_error"). The tool never runs unless its token was accepted.

Real components: the emulator over HTTPS (on-behalf-of with the claims), a real mcp server on
uvicorn behind a wrapper that answers with the challenges, a real ``ResponsesHostServer``."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from agent_framework import Agent

from _support.mcp_world import (
    Recorder,
    ServerThread,
    agent_token,
    build_mcp_app,
    host_app,
    make_chain,
    mcp_scopes,
    read_json_request,
    serve_asgi,
)
from entra_passthrough import (
    EntraPassthroughError,
    InteractionRequired,
    TokenVerificationError,
    bind_caller,
)
from entra_passthrough.agent_framework import entra_mcp_tool, entra_middleware
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

CLAIMS = json.dumps({"access_token": {"acrs": {"essential": True, "value": "c1"}}})
ENCODED = base64.b64encode(CLAIMS.encode()).decode()
WITH_CLAIMS = f'Bearer error="insufficient_claims", claims="{ENCODED}"'

#: What the server answers the n-th request of one JSON-RPC method (1-based): a challenge
#: (401 + ``WWW-Authenticate``), or ``None`` to let it through.
Answer = Callable[[int], str | None]


def _challenging(app: Any, method: str, answer: Answer) -> Any:
    seen = {"n": 0}

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await app(scope, receive, send)
        body, replay = await read_json_request(receive)
        if isinstance(body, dict) and body.get("method") == method:
            seen["n"] += 1
            challenge = answer(seen["n"])
            if challenge is not None:
                headers = [(b"www-authenticate", challenge.encode())]
                await send({"type": "http.response.start", "status": 401, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return None
        return await app(scope, replay, send)

    return wrapper


def _server(
    idp: EntraEmulator, method: str, answer: Answer, executions: list[tuple[str, str]]
) -> ServerThread:
    return ServerThread(
        lambda base: _challenging(
            build_mcp_app(idp, base_url=base, recorder=Recorder(), executions=executions),
            method,
            answer,
        ),
        name="mcp",
    ).start()


async def _calls(idp: EntraEmulator, user: User, server: ServerThread, count: int) -> list[Any]:
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    outcomes: list[Any] = []
    try:
        with bind_caller(token=agent_token(idp, user)):
            for _ in range(count):
                try:
                    outcomes.append(await tool.call_tool("whoami", who="step-up"))
                except Exception as exc:
                    outcomes.append(exc)
    finally:
        await tool.close()
    return outcomes


async def test_a_claims_challenge_the_token_cannot_meet_is_the_users_step_up(
    idp: EntraEmulator, users: list[User]
) -> None:
    executions: list[tuple[str, str]] = []
    server = _server(idp, "tools/call", lambda n: WITH_CLAIMS, executions)
    try:
        outcomes = await _calls(idp, users[12], server, 3)
    finally:
        server.stop()
    assert executions == []
    for outcome in outcomes:
        assert isinstance(outcome, InteractionRequired), repr(outcome)
        assert not isinstance(outcome, TokenVerificationError)
        assert outcome.claims == CLAIMS
        assert "scopes" not in (outcome.fix or "")


async def test_a_claims_challenge_met_once_runs_the_call_once(
    idp: EntraEmulator, users: list[User]
) -> None:
    executions: list[tuple[str, str]] = []
    server = _server(idp, "tools/call", lambda n: WITH_CLAIMS if n == 1 else None, executions)
    try:
        outcomes = await _calls(idp, users[14], server, 2)
    finally:
        server.stop()
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    assert len(executions) == 2  # each call once


@pytest.mark.parametrize(
    "answer",
    [
        lambda n: 'Bearer error="insufficient_claims"',  # no claims parameter
        lambda n: 'Bearer error="insufficient_claims", claims="!!not-base64"',
        # invalid_token first, then a claims challenge to the retry with a fresh token
        lambda n: 'Bearer error="invalid_token"' if n % 2 == 1 else WITH_CLAIMS,
    ],
    ids=["no-claims", "unreadable-claims", "invalid-token-then-claims"],
)
async def test_a_claims_challenge_the_auth_could_not_act_on_is_a_typed_refusal(
    idp: EntraEmulator, users: list[User], answer: Answer
) -> None:
    executions: list[tuple[str, str]] = []
    server = _server(idp, "tools/call", answer, executions)
    try:
        outcomes = await _calls(idp, users[15], server, 2)
    finally:
        server.stop()
    assert executions == []
    for outcome in outcomes:
        assert isinstance(outcome, EntraPassthroughError), repr(outcome)
        assert "Server returned an error response" not in str(outcome)
        assert "did not run" in str(outcome) or isinstance(outcome, InteractionRequired)


@pytest.mark.parametrize("per_user", [False, True], ids=["shared", "pool"])
async def test_a_claims_challenge_at_a_tools_connect_is_explained_to_the_user(
    idp: EntraEmulator, users: list[User], per_user: bool
) -> None:
    executions: list[tuple[str, str]] = []
    server = _server(idp, "tools/list", lambda n: WITH_CLAIMS, executions)
    tool = entra_mcp_tool(
        "records",
        f"{server.base}/mcp",
        chain=make_chain(idp),
        scopes=mcp_scopes(idp),
        per_user=per_user,
    )
    if per_user:

        async def agent() -> Agent:
            return Agent(
                client=ScriptedChatClient(tool="whoami"),
                tools=[await tool.tool()],
                middleware=entra_middleware(),
            )

        app = host_app(agent, close_on_shutdown=[tool])
    else:
        app = host_app(
            Agent(
                client=ScriptedChatClient(tool="whoami"),
                tools=[tool],
                middleware=entra_middleware(),
            )
        )
    host = serve_asgi(app, name="host")
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=90, trust_env=False) as client:
            answer = await client.post(
                "/responses",
                json={"input": "hi", "store": True},
                headers={"Authorization": f"Bearer {agent_token(idp, users[16])}"},
            )
    finally:
        host.stop()
        server.stop()
    payload = answer.json()
    message = str((payload.get("error") or {}).get("message"))
    assert payload.get("status") == "failed", payload
    assert "internal server error" not in message.lower(), message
    assert "asks again for claims" in message, message
    assert "MCP server 'records'" in message, message  # which server, as other refusals say
    assert "sign in again" in message, message
    assert executions == []
