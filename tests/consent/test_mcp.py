"""After consent, a real MCP server (mcp SDK + entra_passthrough.server) sees the user."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer

from _support.consent import ConsentEnv, follow_link, platform_caller
from _support.servers import serve_in_thread
from entra_passthrough import ConsentRequired, EntraAuth, JwtVerifier, TokenChain, bind_caller
from entra_passthrough.server import (
    EntraChallengeMiddleware,
    EntraTokenVerifier,
    auth_settings,
    current_user,
)


@contextmanager
def mcp_server(env: ConsentEnv) -> Iterator[str]:
    idp = env.idp
    auth = auth_settings(
        resource_server_url="http://127.0.0.1/mcp",
        tenant_id=idp.tenant_id,
        scopes=["access_as_user"],
        app_id_uri=idp.mcp.app_id_uri,
    )
    verifier = JwtVerifier(
        audiences=[idp.mcp.client_id, idp.mcp.app_id_uri],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        verify=idp.ca_file,
    )
    server = MCPServer("consent-test", token_verifier=EntraTokenVerifier(verifier), auth=auth)

    @server.tool()
    async def whoami() -> dict[str, Any]:
        user = current_user()
        return {"oid": user.oid, "upn": user.upn}

    app = EntraChallengeMiddleware(server.streamable_http_app(stateless_http=True), settings=auth)
    with serve_in_thread(app, lifespan="auto") as base:
        yield base


async def test_mcp_server_sees_the_consenting_user(consent_env: ConsentEnv) -> None:
    env = consent_env
    bob = env.idp.users["bob"]
    source, _ = env.make()
    chain = TokenChain([source])
    with mcp_server(env) as base:
        auth = EntraAuth(chain, scopes=[env.mcp_scope], origins=[base])
        caller = platform_caller("mcp-bob", upn=bob.upn)
        async with bind_caller(caller):
            with pytest.raises(ConsentRequired) as info:
                await chain.get_token_async([env.mcp_scope])
            assert info.value.link is not None
            page = await follow_link(env, info.value.link)
            assert page.status_code == 200
            async with (
                httpx2.AsyncClient(auth=auth) as http,
                streamable_http_client(f"{base}/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                result = await session.call_tool("whoami", {})
    assert not result.is_error
    payload = json.loads(result.content[0].text)  # type: ignore[union-attr]
    assert payload == {"oid": bob.oid, "upn": bob.upn}
