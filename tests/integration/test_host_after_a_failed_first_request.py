"""A shared tool on a real ``ResponsesHostServer`` whose very first request failed (its caller's
token could not work, so the tool did not connect): the host enters the agent only once, so
every later request reaches the tool through its run. A later caller whose token cannot work
gets the explanation too, never an empty "completed" answer with a dangling tool call (the
run's enter deferred as the host's first one does, and the run had no tools).

Real components: the emulator over HTTPS, OBO through MSAL, the recording MCP server under
uvicorn, ``ResponsesHostServer`` through ``install``."""

from __future__ import annotations

import asyncio
import json

import httpx2
import pytest
from agent_framework import Agent

from _support.mcp_world import Recorder, ServerThread, build_mcp_app, host_app, serve_asgi
from entra_passthrough import OnBehalfOf, Policy, TokenChain
from entra_passthrough.agent_framework import entra_mcp_tool, entra_middleware
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.testing import EntraEmulator

pytestmark = pytest.mark.slow


async def test_every_failing_caller_after_the_first_is_explained(idp: EntraEmulator) -> None:
    obo = OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.agent.secret,
        authority_host=idp.url,
        http_client=idp.msal_http_client(),
    )
    chain = TokenChain([obo], policy=Policy.USER_ONLY)
    recorder = Recorder()
    scope = f"{idp.mcp.app_id_uri}/.default"
    expired = {
        name: idp.user_token(name, audience=idp.agent.client_id, lifetime=-120)
        for name in ("bob", "alice")
    }
    answers = []
    with ServerThread(
        lambda base: build_mcp_app(idp, base_url=base, recorder=recorder), name="mcp"
    ) as mcp:
        client = ScriptedChatClient(tool="whoami", input_argument="who")
        tool = entra_mcp_tool("records", f"{mcp.base}/mcp", chain=chain, scopes=[scope])
        host = serve_asgi(
            host_app(Agent(client=client, tools=[tool], middleware=entra_middleware())),
            name="host",
        )
        try:
            async with httpx2.AsyncClient(base_url=host.base, timeout=60) as http:
                for name in ("bob", "alice", "bob"):
                    response = await http.post(
                        "/responses",
                        json={"input": "who am I", "store": True},
                        headers={"Authorization": f"Bearer {expired[name]}"},
                    )
                    answers.append(response.json())
        finally:
            host.stop()
    for body in answers:
        assert body["status"] == "failed", body
        assert "AADSTS500133" in (body.get("error") or {}).get("message", ""), body
    assert not [s for s in recorder.snapshot() if s.rpc == "tools/call"]  # nothing was sent


async def test_a_background_run_past_its_users_token_says_the_token_expired(
    idp: EntraEmulator,
) -> None:
    """A background run whose tool call comes after the user's token expired: nothing is sent,
    and the tool's error names the expired token (it named a missing CallerMiddleware)."""
    obo = OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.agent.secret,
        authority_host=idp.url,
        http_client=idp.msal_http_client(),
    )
    recorder = Recorder()
    scope = f"{idp.mcp.app_id_uri}/.default"
    token = idp.user_token("alice", audience=idp.agent.client_id, lifetime=3)
    with ServerThread(
        lambda base: build_mcp_app(idp, base_url=base, recorder=recorder), name="mcp"
    ) as mcp:
        client = ScriptedChatClient(tool="whoami", input_argument="who")
        client.function_invocation_configuration["include_detailed_errors"] = True

        async def think() -> None:
            await asyncio.sleep(5)  # the model takes longer than the token lives

        client.before_call = think
        tool = entra_mcp_tool("records", f"{mcp.base}/mcp", chain=TokenChain([obo]), scopes=[scope])
        host = serve_asgi(
            host_app(Agent(client=client, tools=[tool], middleware=entra_middleware())),
            name="host",
        )
        try:
            async with httpx2.AsyncClient(base_url=host.base, timeout=60) as http:
                started = await http.post(
                    "/responses",
                    json={"input": "late", "store": True, "background": True},
                    headers={"Authorization": f"Bearer {token}"},
                )
                body = started.json()
                for _ in range(100):  # bounded: 30 s
                    if body["status"] not in ("queued", "in_progress"):
                        break
                    await asyncio.sleep(0.3)
                    body = (await http.get(f"/responses/{body['id']}")).json()
        finally:
            host.stop()
    outputs = [i.get("output") for i in body["output"] if i["type"] == "function_call_output"]
    assert outputs, body
    assert "AADSTS500133" in json.dumps(outputs), outputs
    assert "CallerMiddleware" not in json.dumps(outputs), outputs
    assert not [s for s in recorder.snapshot() if s.rpc == "tools/call"]
