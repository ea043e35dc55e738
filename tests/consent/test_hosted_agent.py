"""The issue's scenario: a Foundry-style hosted agent (ResponsesHostServer, a token for
https://ai.azure.com and x-agent-user-id) gets an oauth_consent_request on the first tool call;
after the user consents, the next call reaches the MCP server as that user."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
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


@contextlib.asynccontextmanager
async def _hosted_agent(
    env: ConsentEnv, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx2.AsyncClient]:
    """The hosted agent of docs/hosted-agent.md: ResponsesHostServer, install(), one shared
    entra_mcp_tool over DelegatedConsent, a real MCP server that verifies tokens."""
    from agent_framework import Agent

    from _support.mcp_world import Recorder, ServerThread, build_mcp_app, host_app, serve_asgi
    from entra_passthrough.agent_framework import entra_mcp_tool, entra_middleware
    from entra_passthrough.agent_framework.testing import ScriptedChatClient

    monkeypatch.setenv("AGENTSERVER_STATE_ROOT", str(tmp_path))
    idp = env.idp
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
            async with httpx2.AsyncClient(base_url=host.base, timeout=60) as client:
                yield client
        finally:
            host.stop()


def _foundry_headers(env: ConsentEnv, user: str, platform_id: str) -> dict[str, str]:
    token = env.idp.user_token(user, audience=FOUNDRY_AUDIENCE)
    return {"Authorization": f"Bearer {token}", "x-agent-user-id": platform_id}


async def test_hosted_agent_consent_round_trip(
    consent_env: ConsentEnv, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _support.mcp_world import seen_oid

    env = consent_env
    alice = env.idp.users["alice"]
    headers = _foundry_headers(env, "alice", "foundry-alice-hosted")
    async with _hosted_agent(env, tmp_path, monkeypatch) as client:
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


async def test_every_request_before_anyone_consented_gets_its_own_link(
    consent_env: ConsentEnv, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host opens the agent again on each request until that succeeds; only the first
    request used to get its link, and every later one (the same user asking again, another
    user, users at once) the host's bare "server_error" until someone's connect worked."""
    from _support.mcp_world import seen_oid

    env = consent_env
    users = {n: _foundry_headers(env, n, f"foundry-{n}-every-request") for n in ("alice", "bob")}
    async with _hosted_agent(env, tmp_path, monkeypatch) as client:
        answers = [await _respond(client, users[n]) for n in ("alice", "alice", "bob")]
        answers += await asyncio.gather(*(_respond(client, users[n]) for n in ("alice", "bob")))
        links: dict[str, set[str]] = {"alice": set(), "bob": set()}
        for name, answer in zip(("alice", "alice", "bob", "alice", "bob"), answers, strict=True):
            items = _consent_items(answer)
            assert items, (name, answer.get("status"), answer.get("error"))
            assert items[0].get("server_label") == "contoso-mcp"
            links[name].add(items[0]["consent_link"])
        assert not links["alice"] & links["bob"]  # each link is its user's own

        page = await follow_link(env, sorted(links["alice"])[0])
        assert page.status_code == 200
        served = await _respond(client, users["alice"])
        assert not _consent_items(served)
        assert seen_oid(served) == env.idp.users["alice"].oid
        # The tool is open now: bob's consent comes from his run, still as a link.
        assert _consent_items(await _respond(client, users["bob"]))
