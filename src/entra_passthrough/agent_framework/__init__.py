"""Agent Framework integration: user-correct MCP tools for hosted agents.

    from entra_passthrough.agent_framework import entra_mcp_tool, entra_middleware, install

    tool = entra_mcp_tool("files", "https://mcp.contoso.com/mcp", chain=chain,
                          scopes=["api://<mcp-app>/.default"])
    agent = Agent(client=client, tools=[tool], middleware=entra_middleware())
    app = install(ResponsesHostServer(agent))

See docs/agent-framework.md for why the plain ``MCPStreamableHTTPTool`` is not enough
(docs/platform-facts.md) and who authenticates connection-lifetime requests.
"""

from __future__ import annotations

from .._errors import require_extra

try:
    import agent_framework as _af  # noqa: F401
    import httpx2 as _httpx2  # noqa: F401
    import tenacity as _tenacity  # noqa: F401  (MCPTool needs it; agent-framework lists it in [all])

    from .. import mcp as _mcp  # noqa: F401  (checks mcp >= 2.2)
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    if "mcp >=" in str(_exc):
        raise
    raise require_extra("agent_framework", "agent-framework", _exc) from _exc

from ._factory import MCPToolOptions, entra_mcp_tool, entra_middleware
from ._hosting import (
    RESPONSE_OWNER_SECONDS,
    BackgroundRunCallers,
    ResponseOwners,
    end_run_caller,
    install,
)
from ._middleware import EntraToolMiddleware
from ._pool import EntraMCPToolPool, PoolOptions, issued_pool_key
from ._signals import (
    CallOutcomeUnknown,
    MCPServerUnreachable,
    ToolNotListed,
    consent_exception,
    is_dead_connection,
)
from ._tool import EntraMCPTool

__all__ = [
    "RESPONSE_OWNER_SECONDS",
    "BackgroundRunCallers",
    "CallOutcomeUnknown",
    "EntraMCPTool",
    "EntraMCPToolPool",
    "EntraToolMiddleware",
    "MCPServerUnreachable",
    "MCPToolOptions",
    "PoolOptions",
    "ResponseOwners",
    "ToolNotListed",
    "consent_exception",
    "end_run_caller",
    "entra_mcp_tool",
    "entra_middleware",
    "install",
    "is_dead_connection",
    "issued_pool_key",
]
