"""The RFC 8707 pitfall (docs/server.md): Entra v2 refuses a `resource` that is the MCP server's
URL (AADSTS9010010); the scope alone gets a token the protected server accepts."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from _support.servers import serve_in_thread
from entra_passthrough.testing import EntraEmulator

from ._example import load_example


@pytest.fixture(scope="module")
def mcp_url(entra_emulator: EntraEmulator) -> Iterator[str]:
    idp = entra_emulator
    example = load_example()

    def make(base: str) -> Any:
        return example.create_app(
            example.Config(
                tenant_id=idp.tenant_id,
                client_id=idp.mcp.client_id,
                resource_url=f"{base}/mcp",
                authority_host=idp.url,
                verify=idp.ca_file,
            )
        )

    with serve_in_thread(make_app=make) as url:
        yield f"{url}/mcp"


async def _password_grant(idp: EntraEmulator, extra: dict[str, str]) -> httpx2.Response:
    alice = idp.users["alice"]
    form = {
        "grant_type": "password",
        "client_id": idp.agent.client_id,
        "client_secret": idp.agent.secret,
        "username": alice.upn,
        "password": alice.password,
        "scope": f"{idp.mcp.app_id_uri}/access_as_user",
        **extra,
    }
    ctx = ssl.create_default_context(cafile=idp.ca_file)
    async with httpx2.AsyncClient(verify=ctx) as http:
        return await http.post(f"{idp.authority}/oauth2/v2.0/token", data=form)


async def test_resource_parameter_is_refused_scope_alone_works(
    entra_emulator: EntraEmulator, mcp_url: str
) -> None:
    idp = entra_emulator
    async with httpx2.AsyncClient() as http:
        prm = await http.get(mcp_url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp"))
    metadata = prm.json()
    assert metadata["resource"] == mcp_url
    # what a generic MCP OAuth client sends: the advertised scope *and* resource=<server URL>
    refused = await _password_grant(idp, {"resource": metadata["resource"]})
    assert refused.status_code == 400
    assert refused.json()["error_codes"] == [9010010]
    # the scope alone (what OBO and MSAL send) works, and the server accepts the token
    issued = await _password_grant(idp, {})
    assert issued.status_code == 200, issued.text
    token = issued.json()["access_token"]
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
    }
    async with httpx2.AsyncClient() as http:
        r = await http.post(mcp_url, json=body, headers=headers)
    assert r.status_code == 200
    assert "whoami" in r.text
