"""The MCP server the server tests share: MCPServer behind EntraTokenVerifier and
EntraChallengeMiddleware, its tokens minted by one local issuer."""

from __future__ import annotations

from typing import Any

import httpx2
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _support.tokens import API, API_URI, TENANT, Issuer
from entra_passthrough import JwtVerifier
from entra_passthrough.server import (
    EntraChallengeMiddleware,
    EntraTokenVerifier,
    auth_settings,
    current_user,
    require_entra_auth,
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


TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


async def post_mcp(url: str, authorizations: list[str]) -> httpx2.Response:
    """A tools/list POST to the MCP server at ``url`` with these Authorization values."""
    headers = [
        ("Accept", "application/json, text/event-stream"),
        ("Content-Type", "application/json"),
        *(("Authorization", value) for value in authorizations),
    ]
    async with httpx2.AsyncClient() as http:
        return await http.post(f"{url}/mcp", json=TOOLS_LIST, headers=headers)


def guarded_api() -> Any:
    """A plain Starlette API (``/me``) behind require_entra_auth."""

    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"oid": current_user().oid})

    verifier = JwtVerifier(audiences=[API], tenants=[TENANT], http_client=ISSUER.async_client())
    return require_entra_auth(Starlette(routes=[Route("/me", me)]), verifier=verifier)
