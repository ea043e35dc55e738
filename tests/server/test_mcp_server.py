"""A real MCP server (MCPServer on uvicorn) protected by EntraTokenVerifier."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer

from _support.servers import serve_in_thread
from _support.tokens import API, API_URI, TENANT, USER_OID
from entra_passthrough import JwtVerifier
from entra_passthrough.server import (
    EntraChallengeMiddleware,
    EntraTokenVerifier,
    auth_settings,
    current_user,
)

from ._mcp_app import ISSUER


@asynccontextmanager
async def session(url: str, token: str | None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as s,
    ):
        await s.initialize()
        yield s


async def test_whoami_sees_the_caller(base_url: str) -> None:
    async with session(base_url, ISSUER.token()) as s:
        result = await s.call_tool("whoami", {})
    assert not result.is_error
    payload = json.loads(result.content[0].text)  # type: ignore[union-attr]
    assert payload["oid"] == USER_OID
    assert payload["upn"] == "alice@contoso.com"
    assert "access_as_user" in payload["scopes"]


async def _post(url: str, token: str | None) -> httpx2.Response:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with httpx2.AsyncClient() as http:
        return await http.post(f"{url}/mcp", json=body, headers=headers)


def _params(header: str) -> dict[str, str]:
    assert header.startswith("Bearer")
    out = {}
    for part in header[len("Bearer") :].split(","):
        if "=" in part:
            k, v = part.strip().split("=", 1)
            out[k] = v.strip('"')
    return out


async def test_no_token_gets_401_with_resource_metadata(base_url: str) -> None:
    r = await _post(base_url, None)
    assert r.status_code == 401
    params = _params(r.headers["www-authenticate"])
    assert params["resource_metadata"] == f"{base_url}/.well-known/oauth-protected-resource/mcp"
    assert params["scope"] == f"{API_URI}/access_as_user"
    assert "error" not in params  # RFC 6750 3.1: no error code when no credentials were sent


async def test_wrong_audience_gets_401_invalid_token(base_url: str) -> None:
    token = ISSUER.token(aud="https://ai.azure.com")
    r = await _post(base_url, token)
    assert r.status_code == 401
    params = _params(r.headers["www-authenticate"])
    assert params["error"] == "invalid_token"
    assert "audience" in params["error_description"]
    assert "resource_metadata" in params
    assert token not in r.text
    assert token not in r.headers["www-authenticate"]


async def test_expired_token_gets_401(base_url: str) -> None:
    r = await _post(base_url, ISSUER.token(exp=1_000_000))
    assert r.status_code == 401
    assert "expired" in _params(r.headers["www-authenticate"])["error_description"]


async def test_missing_scope_gets_403_insufficient_scope(base_url: str) -> None:
    r = await _post(base_url, ISSUER.token(scp="other.scope"))
    assert r.status_code == 403
    params = _params(r.headers["www-authenticate"])
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == f"{API_URI}/access_as_user"
    assert params["resource_metadata"].endswith("/.well-known/oauth-protected-resource/mcp")
    assert r.json()["error"] == "insufficient_scope"


async def test_app_only_token_gets_403(base_url: str) -> None:
    r = await _post(base_url, ISSUER.token(scp=None, roles=["Notes.Read.All"]))
    assert r.status_code == 403
    assert _params(r.headers["www-authenticate"])["error"] == "insufficient_scope"


async def test_protected_resource_metadata(base_url: str) -> None:
    async with httpx2.AsyncClient() as http:
        r = await http.get(f"{base_url}/.well-known/oauth-protected-resource/mcp")
    assert r.status_code == 200
    doc = r.json()
    assert doc["resource"] == f"{base_url}/mcp"
    assert doc["authorization_servers"] == [f"https://login.microsoftonline.com/{TENANT}/v2.0"]
    assert doc["scopes_supported"] == [f"{API_URI}/access_as_user"]


async def test_valid_token_passes_plain_post(base_url: str) -> None:
    r = await _post(base_url, ISSUER.token())
    assert r.status_code == 200


async def test_stateful_server_sees_the_caller() -> None:
    def make(base: str) -> Any:
        verifier = JwtVerifier(
            audiences=[API, API_URI], tenants=[TENANT], http_client=ISSUER.async_client()
        )
        auth = auth_settings(
            resource_server_url=f"{base}/mcp",
            tenant_id=TENANT,
            scopes=["access_as_user"],
            app_id_uri=API_URI,
        )
        server = MCPServer("stateful", token_verifier=EntraTokenVerifier(verifier), auth=auth)

        @server.tool()
        async def whoami() -> str:
            return current_user().oid

        return EntraChallengeMiddleware(server.streamable_http_app(), settings=auth)

    with serve_in_thread(make_app=make) as url:
        async with session(url, ISSUER.token()) as s:
            first = await s.call_tool("whoami", {})
            second = await s.call_tool("whoami", {})
    assert first.content[0].text == USER_OID  # type: ignore[union-attr]
    assert second.content[0].text == USER_OID  # type: ignore[union-attr]


async def test_unreachable_keys_give_503_not_401() -> None:
    def down(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(503)

    def make(base: str) -> Any:
        verifier = JwtVerifier(
            audiences=[API],
            tenants=[TENANT],
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(down)),
        )
        auth = auth_settings(resource_server_url=f"{base}/mcp", tenant_id=TENANT)
        server = MCPServer("down", token_verifier=EntraTokenVerifier(verifier), auth=auth)
        return EntraChallengeMiddleware(server.streamable_http_app(), settings=auth)

    with serve_in_thread(make_app=make) as url:
        r = await _post(url, ISSUER.token())
    assert r.status_code == 503
    assert "www-authenticate" not in r.headers  # the token was not judged: keep it
    assert r.json()["error"] == "temporarily_unavailable"
