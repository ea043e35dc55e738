"""A consent met in a response sent with ``"store": false``, which ``ResponsesHostServer`` cannot
continue (an ``oauth_consent_request`` needs a stored response): every path fails the response
with the same explanation (what happened, why, what to send), streaming or not. Before, a shared
tool's call ended as "An internal server error occurred." and a pooled connection as a bare
"OAuth consent continuation requires store=true.", streamed or not.

Real components: the emulator over HTTPS with MSAL (carol has not consented), a real mcp server
and a real ResponsesHostServer behind ``install(app)``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from agent_framework import Agent

from _support.mcp_world import (
    CONSENT_URL,
    Recorder,
    ServerThread,
    agent_token,
    calls,
    host_app,
    make_chain,
    mcp_scopes,
    respond,
    seen_oid,
    serve_asgi,
)
from entra_passthrough.agent_framework import entra_mcp_tool, entra_middleware
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

Start = Callable[..., tuple[ServerThread, Recorder]]

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")


async def _failure(client: httpx2.AsyncClient, token: str, *, stream: bool) -> str:
    """The error message of a failed store=false response (from the ``response.failed`` event
    when streamed). Asserts that it failed, and that no token is in the answer."""
    response = await client.post(
        "/responses",
        json={"input": "hello", "store": False, "stream": stream},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text[:500]
    assert not JWT.search(response.text)
    if not stream:
        payload = response.json()
        assert payload["status"] == "failed", payload
        assert not [i for i in payload["output"] if i.get("type") == "oauth_consent_request"]
        return str(payload["error"]["message"])
    failed = [
        json.loads(line.removeprefix("data:"))
        for line in response.text.splitlines()
        if line.startswith("data:") and '"response.failed"' in line
    ]
    assert len(failed) == 1, response.text[-2000:]
    assert '"type": "oauth_consent_request"' not in response.text
    return str(failed[0]["response"]["error"]["message"])


def _explains(message: str, label: str = "records") -> None:
    assert "internal server error" not in message.lower()
    assert f"The user must consent before {label!r} can be used for them" in message
    assert "store=false" in message
    assert "oauth_consent_request" in message
    assert "Fix: send the request again with store=true" in message
    # The link is shown only as an oauth_consent_request (the host checks its origin there).
    assert "https://login" not in message
    assert CONSENT_URL not in message


def _agent(tool: Any, name: str = "whoami") -> Agent:
    return Agent(
        client=ScriptedChatClient(tool=name, input_argument="who" if name == "whoami" else None),
        tools=[tool],
        middleware=entra_middleware(),
    )


@pytest.mark.parametrize("kind", ["shared", "pool"])
async def test_consent_in_an_unstored_response_fails_it_with_the_explanation(
    idp: EntraEmulator, users: list[User], mcp_server: Start, kind: str
) -> None:
    server, recorder = mcp_server()
    url = f"{server.base}/mcp"
    if kind == "shared":
        tool = entra_mcp_tool("records", url, chain=make_chain(idp), scopes=mcp_scopes(idp))
        app = host_app(_agent(tool))
    else:
        pool = entra_mcp_tool(
            "records", url, chain=make_chain(idp), scopes=mcp_scopes(idp), per_user=True
        )

        async def make_agent() -> Agent:
            return _agent(await pool.tool())

        app = host_app(make_agent, close_on_shutdown=[pool])
    host = serve_asgi(app, name="host")
    carol = idp.users["carol"]  # has not consented to the agent calling the MCP API
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=60) as client:
            # Another user first: the shared tool is connected when carol's call comes.
            first = await respond(client, agent_token(idp, users[0]), users[0].oid)
            plain = await _failure(client, agent_token(idp, carol), stream=False)
            streamed = await _failure(client, agent_token(idp, carol), stream=True)
            stored = await respond(client, agent_token(idp, carol), carol.oid, store=True)
            after = await respond(client, agent_token(idp, users[1]), users[1].oid)
    finally:
        host.stop()
    _explains(plain)
    _explains(streamed)
    # The same answer on both paths (the correlation id of Entra's answer aside).
    assert plain.partition(" [source")[0] == streamed.partition(" [source")[0]
    # store=true still gets the consent request; the tool goes on serving everyone else.
    assert stored["status"] == "incomplete"
    assert [i["server_label"] for i in stored["output"] if i["type"] == "oauth_consent_request"]
    assert seen_oid(first) == users[0].oid
    assert seen_oid(after) == users[1].oid
    assert carol.oid not in {s.oid for s in recorder.snapshot()}


async def test_a_url_elicitation_in_an_unstored_response_fails_it_with_the_explanation(
    idp: EntraEmulator, users: list[User], mcp_server: Start
) -> None:
    """The consent comes from the MCP server's answer to the call (a URL elicitation), not from
    Entra: the same explanation, without the link."""
    server, recorder = mcp_server()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    host = serve_asgi(host_app(_agent(tool, "needs_link")), name="host")
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=60) as client:
            plain = await _failure(client, agent_token(idp, users[2]), stream=False)
            streamed = await _failure(client, agent_token(idp, users[2]), stream=True)
    finally:
        host.stop()
    _explains(plain)
    _explains(streamed)
    assert {s.oid for s in calls(recorder.snapshot())} == {users[2].oid}


async def test_a_function_tool_raising_consent_in_an_unstored_response(
    idp: EntraEmulator, users: list[User]
) -> None:
    """``entra_middleware()`` maps a ``ConsentRequired`` from any function tool the same way."""
    from agent_framework import tool as function_tool

    from entra_passthrough import ConsentRequired

    ran: list[str] = []

    @function_tool(name="notes")
    async def notes() -> str:
        ran.append("notes")
        raise ConsentRequired("notes needs consent", link=CONSENT_URL)

    agent = Agent(
        client=ScriptedChatClient(tool="notes"), tools=[notes], middleware=entra_middleware()
    )
    host = serve_asgi(host_app(agent), name="host")
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=60) as client:
            plain = await _failure(client, agent_token(idp, users[3]), stream=False)
            streamed = await _failure(client, agent_token(idp, users[3]), stream=True)
    finally:
        host.stop()
    _explains(plain, label="notes")
    _explains(streamed, label="notes")
    assert ran == ["notes", "notes"]
