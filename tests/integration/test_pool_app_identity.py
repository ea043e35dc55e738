"""A per-user pool under ``user_or_app``: a request without a user (no Authorization header) is
served as the app, as the policy says and the shared tool does, on a connection of the app's
own, never a user's. It failed with "An internal server error occurred." (the pool raised
``NoCallerError`` in the agent factory, telling the operator to add a verifier, which changed
nothing): the pool keyed connections by user only.

Real components: the emulator over HTTPS (OBO through MSAL, and its App Service managed
identity endpoint for the app), a real MCP server under uvicorn that accepts the app's
app-only token, and a real ``ResponsesHostServer`` behind ``install(app)``."""

from __future__ import annotations

import json
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
    serve_asgi,
    tool_outputs,
)
from entra_passthrough import ManagedIdentity, Policy, TokenChain
from entra_passthrough.agent_framework import entra_mcp_tool, entra_middleware
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

pytestmark = pytest.mark.slow


def _user_or_app(idp: EntraEmulator) -> TokenChain:
    env = idp.mi_env("app_service")
    app = ManagedIdentity(
        client_id=idp.managed_identity.client_id,
        endpoint=env["IDENTITY_ENDPOINT"],
        header=env["IDENTITY_HEADER"],
    )
    return TokenChain([*make_chain(idp).sources, app], policy=Policy.USER_OR_APP)


async def test_a_request_without_a_user_is_served_as_the_app_on_its_own_connection(
    idp: EntraEmulator, users: list[User]
) -> None:
    executions: list[tuple[str, str]] = []
    server = ServerThread(
        lambda base: build_mcp_app(
            idp, base_url=base, recorder=Recorder(), executions=executions, allow_app=True
        ),
        name="mcp",
    ).start()
    pool = entra_mcp_tool(
        "records",
        f"{server.base}/mcp",
        chain=_user_or_app(idp),
        scopes=mcp_scopes(idp),
        per_user=True,
    )
    client = ScriptedChatClient(tool="whoami", input_argument="who")

    async def make_agent() -> Agent:
        return Agent(client=client, tools=[await pool.tool()], middleware=entra_middleware())

    host = serve_asgi(host_app(make_agent, close_on_shutdown=[pool]), name="host")
    alice = users[4]
    answers: list[Any] = []
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=90, trust_env=False) as http:
            for who, headers in (
                ("nobody-1", {}),
                ("alice", {"Authorization": f"Bearer {agent_token(idp, alice)}"}),
                ("nobody-2", {}),
                # A platform user id alone (no bearer): served as the app too, on a connection
                # of that platform user's (it was a bare server error).
                ("platform", {"x-agent-user-id": "chat-user-1"}),
            ):
                response = await http.post(
                    "/responses", json={"input": who, "store": False}, headers=headers
                )
                assert response.status_code == 200, response.text[:500]
                answers.append(response.json())
        connections = len(pool)
    finally:
        host.stop()
        server.stop()
    for answer in answers:
        assert answer["status"] == "completed", json.dumps(answer)[:800]
    ran = dict(executions)
    app_oid = idp.managed_identity.object_id
    assert ran["nobody-1"] == app_oid  # the app, as user_or_app says
    assert ran["nobody-2"] == app_oid
    assert ran["alice"] == alice.oid  # the user, on her own connection
    assert ran["platform"] == app_oid
    # The app's (shared by both requests without a user), alice's, the platform user's.
    assert connections == 3
    assert app_oid in " ".join(str(o) for a in answers for o in tool_outputs(a))


@pytest.mark.parametrize("per_user", [False, True], ids=["shared", "pool"])
async def test_a_server_that_refuses_the_apps_token_is_said_to_refuse_the_apps_token(
    idp: EntraEmulator, per_user: bool
) -> None:
    """The MCP server accepts users only and refuses the app-only token ``user_or_app`` serves
    a request without a user with: the error says it refused the app's own token, with the
    app's fix, not "the user's token" (there is no user) and "that the user may call it"."""
    executions: list[tuple[str, str]] = []
    server = ServerThread(
        lambda base: build_mcp_app(idp, base_url=base, recorder=Recorder(), executions=executions),
        name="mcp",
    ).start()
    tool = entra_mcp_tool(
        "records",
        f"{server.base}/mcp",
        chain=_user_or_app(idp),
        scopes=mcp_scopes(idp),
        per_user=per_user,
    )
    client = ScriptedChatClient(tool="whoami", input_argument="who")

    async def make_agent() -> Agent:
        made = await tool.tool() if per_user else tool  # type: ignore[union-attr]
        return Agent(client=client, tools=[made], middleware=entra_middleware())

    host = serve_asgi(host_app(make_agent, close_on_shutdown=[tool]), name="host")
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=90, trust_env=False) as http:
            response = await http.post("/responses", json={"input": "nobody", "store": False})
    finally:
        host.stop()
        server.stop()
    assert response.status_code == 200, response.text[:500]
    assert not executions
    text = response.text
    assert "app's own token" in text, text[:1500]
    assert "user's token" not in text, text[:1500]
    assert "the user may call it" not in text, text[:1500]
    assert "app-only token" in text.split("Fix:", 1)[1], text[:1500]
