"""A hosted agent (real ResponsesHostServer over HTTP) whose tool is the toolbox stand-in through
FoundryToolboxRoute: each request's call id reaches the toolbox, and a consent the toolbox asks
for on tools/list becomes an oauth_consent_request item for that user only."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import httpx2
import pytest
from agent_framework import Agent
from agent_framework_foundry_hosting import ResponsesHostServer

from _support.servers import serve_in_thread
from entra_passthrough import JwtVerifier
from entra_passthrough.agent_framework import entra_mcp_tool, entra_middleware, install
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.testing import FOUNDRY_AUDIENCE, EntraEmulator, ToolboxStandIn

from .conftest import toolbox_chain

SCOPES = ["https://ai.azure.com/.default"]


async def test_toolbox_consent_reaches_only_its_user(
    idp: EntraEmulator,
    toolbox: ToolboxStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTSERVER_STATE_ROOT", str(tmp_path / "agentserver"))
    link = toolbox.require_consent("bob", on=["tools/list"])
    chain = toolbox_chain(idp)
    pool = entra_mcp_tool("toolbox", toolbox.url, chain=chain, scopes=SCOPES, per_user=True)

    async def make_agent() -> Agent:
        return Agent(
            client=ScriptedChatClient(tool="whoami"),
            tools=[await pool.tool()],
            middleware=entra_middleware(),
        )

    jwks = httpx2.AsyncClient(verify=ssl.create_default_context(cafile=idp.ca_file))
    verifier = JwtVerifier(
        audiences=[FOUNDRY_AUDIENCE, idp.foundry.client_id],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        http_client=jwks,
    )
    host = ResponsesHostServer(make_agent, configure_observability=None)
    # Both live in the host's event loop: closed there, at shutdown.
    app = install(host, verifier=verifier, close_on_shutdown=[pool, jwks])
    outcomes: dict[str, str] = {}
    try:
        with serve_in_thread(app) as base:
            async with httpx2.AsyncClient(base_url=base, timeout=60, trust_env=False) as client:
                for user in ("alice", "bob", "carol"):
                    person = idp.users[user]
                    headers = {
                        # What Foundry sends a hosted agent: its own token for the user, the
                        # platform user id and this request's call id.
                        "Authorization": "Bearer "
                        + idp.user_token(user, audience=FOUNDRY_AUDIENCE),
                        "x-agent-user-id": person.oid,
                        "x-agent-foundry-call-id": toolbox.call_id(user),
                    }
                    answer = await client.post(
                        "/responses", json={"input": "who am I?", "store": True}, headers=headers
                    )
                    assert answer.status_code == 200, answer.text[:300]
                    outcomes[user] = _outcome(answer.json())
    finally:
        chain.close()
    assert outcomes["alice"] == "answer alice"
    assert outcomes["bob"] == f"consent {link}"
    assert outcomes["carol"] == "answer carol"
    assert toolbox.stats().get("missing_features", 0) == 0


def _outcome(payload: dict[str, Any]) -> str:
    for item in payload.get("output", []):
        if item.get("type") == "oauth_consent_request":
            return f"consent {item.get('consent_link')}"
    for item in payload.get("output", []):
        if item.get("type") == "message":
            for part in item.get("content", []):
                text = part.get("text", "")
                start = text.find("{")
                if start >= 0:
                    return f"answer {json.loads(text[start:])['user']}"
    return json.dumps(payload)[:300]
