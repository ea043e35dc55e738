"""The demo's hosted agents: ``ResponsesHostServer`` apps with a scripted chat client (no model,
no network) and a user-correct MCP tool from ``entra_passthrough.agent_framework``."""

from __future__ import annotations

from typing import Any

from agent_framework import Agent
from agent_framework_foundry_hosting import ResponsesHostServer

from .._chain import TokenChain
from ..agent_framework import entra_mcp_tool, entra_middleware, install
from ..agent_framework.testing import ScriptedChatClient

SERVER_LABEL = "contoso-records"


def hosted_agent(*, chain: TokenChain, mcp_url: str, scopes: list[str], tool: str) -> Any:
    """A hosted agent whose one MCP tool carries each user's own token."""
    mcp_tool = entra_mcp_tool(
        SERVER_LABEL, mcp_url, chain=chain, scopes=scopes, server_label=SERVER_LABEL
    )
    client = ScriptedChatClient(tool=tool)
    # Our errors carry no token or secret, so the run may show them: the user then reads *why*
    # (e.g. "the caller's token is for https://ai.azure.com...") instead of "Function failed".
    client.function_invocation_configuration["include_detailed_errors"] = True
    agent = Agent(
        client=client,
        tools=[mcp_tool],
        middleware=entra_middleware(server_label=SERVER_LABEL),
    )
    # No console telemetry exporter: the demo prints its own table (the host's default exports
    # spans to stdout when no other exporter is configured).
    return install(ResponsesHostServer(agent, configure_observability=None))
