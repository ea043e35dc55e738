"""The issue's scenario: a Foundry-style hosted agent (ResponsesHostServer, a token for
https://ai.azure.com and x-agent-user-id) gets an oauth_consent_request on the first tool call;
after the user consents, the next call reaches the MCP server as that user."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from _support.consent import ConsentEnv, follow_link
from entra_passthrough import TokenChain
from entra_passthrough.testing import FOUNDRY_AUDIENCE

pytest.importorskip("agent_framework_foundry_hosting")


async def _respond(client: httpx2.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.post(
        "/responses", json={"input": "who am I?", "store": True}, headers=headers
    )
    assert response.status_code == 200, response.text[:500]
    payload: dict[str, Any] = response.json()
    return payload


def _consent_items(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in payload.get("output", []) if i.get("type") == "oauth_consent_request"]


async def test_hosted_agent_consent_round_trip(
    consent_env: ConsentEnv, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_framework import Agent

    from _support.mcp_world import (
        Recorder,
        ServerThread,
        build_mcp_app,
        host_app,
        seen_oid,
        serve_asgi,
    )
    from entra_passthrough.agent_framework import entra_mcp_tool, entra_middleware
    from entra_passthrough.agent_framework.testing import ScriptedChatClient

    monkeypatch.setenv("AGENTSERVER_STATE_ROOT", str(tmp_path))
    env = consent_env
    idp = env.idp
    alice = idp.users["alice"]
    source, _ = env.make()
    recorder = Recorder()
    with ServerThread(
        lambda base: build_mcp_app(idp, base_url=base, recorder=recorder), name="mcp"
    ) as mcp:
        tool = entra_mcp_tool(
            "whoami-server",
            f"{mcp.base}/mcp",
            chain=TokenChain([source]),
            scopes=[env.mcp_scope],
            server_label="contoso-mcp",
        )
        agent = Agent(
            client=ScriptedChatClient(tool="whoami"), tools=[tool], middleware=entra_middleware()
        )
        host = serve_asgi(host_app(agent), name="host")
        try:
            foundry_token = idp.user_token("alice", audience=FOUNDRY_AUDIENCE)
            headers = {
                "Authorization": f"Bearer {foundry_token}",
                "x-agent-user-id": "foundry-alice-hosted",
            }
            async with httpx2.AsyncClient(base_url=host.base, timeout=60) as client:
                first = await _respond(client, headers)
                items = _consent_items(first)
                assert items, first
                link = items[0]["consent_link"]
                assert link.startswith(f"{env.base}/start?")
                assert items[0].get("server_label") == "contoso-mcp"
                page = await follow_link(env, link)
                assert page.status_code == 200
                second = await _respond(client, headers)
            assert not _consent_items(second)
            assert seen_oid(second) == alice.oid
        finally:
            host.stop()
