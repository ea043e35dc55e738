"""The MCP server the server tests share: MCPServer behind EntraTokenVerifier and
EntraChallengeMiddleware, its tokens minted by one local issuer."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer

from _support.tokens import API, API_URI, TENANT, Issuer
from entra_passthrough import JwtVerifier
from entra_passthrough.server import (
    EntraChallengeMiddleware,
    EntraTokenVerifier,
    auth_settings,
    current_user,
)

ISSUER = Issuer()


def build_app(*, resource_url: str) -> Any:
    verifier = JwtVerifier(
        audiences=[API, API_URI], tenants=[TENANT], http_client=ISSUER.async_client()
    )
    auth = auth_settings(
        resource_server_url=resource_url,
        tenant_id=TENANT,
        scopes=["access_as_user"],
        app_id_uri=API_URI,
    )
    server = MCPServer("t", token_verifier=EntraTokenVerifier(verifier), auth=auth)

    @server.tool()
    async def whoami() -> dict[str, Any]:
        user = current_user()
        return {"oid": user.oid, "upn": user.upn, "scopes": list(user.scopes)}

    return EntraChallengeMiddleware(server.streamable_http_app(stateless_http=True), settings=auth)
