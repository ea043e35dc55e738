"""examples/mcp_server runs in CI: on uvicorn against the emulator, called by mcp's client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from _support.servers import serve_in_thread
from entra_passthrough.testing import EntraEmulator

from ._example import load_example


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_example()


@pytest.fixture(scope="module")
def server_url(example: ModuleType, entra_emulator: EntraEmulator) -> Iterator[str]:
    idp = entra_emulator

    def make(base: str) -> Any:
        config = example.Config(
            tenant_id=idp.tenant_id,
            client_id=idp.mcp.client_id,
            resource_url=f"{base}/mcp",
            authority_host=idp.url,
            verify=idp.ca_file,
        )
        return example.create_app(config)

    with serve_in_thread(make_app=make) as url:
        yield url


@asynccontextmanager
async def session(url: str, token: str) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": "Bearer " + token}) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as s,
    ):
        await s.initialize()
        yield s


async def call(s: ClientSession, tool: str, args: dict[str, Any]) -> Any:
    result = await s.call_tool(tool, args)
    assert not result.is_error, result
    if result.structured_content is not None:
        return result.structured_content.get("result", result.structured_content)
    return json.loads(result.content[0].text)  # type: ignore[union-attr]


async def test_whoami_and_per_user_notes(server_url: str, entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    alice, bob = idp.users["alice"], idp.users["bob"]
    token_a = idp.user_token(user="alice", audience=idp.mcp.client_id, scopes=("access_as_user",))
    token_b = idp.user_token(user="bob", audience=idp.mcp.client_id, scopes=("access_as_user",))
    async with session(server_url, token_a) as s:
        me = await call(s, "whoami", {})
        assert me["oid"] == alice.oid
        assert me["upn"] == alice.upn
        assert await call(s, "notes", {"add": "alice's secret"}) == ["alice's secret"]
    async with session(server_url, token_b) as s:
        assert (await call(s, "whoami", {}))["oid"] == bob.oid
        assert await call(s, "notes", {}) == []  # bob never sees alice's notes


async def test_example_refusals(server_url: str, entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    headers = {"Accept": "application/json, text/event-stream"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with httpx2.AsyncClient() as http:
        r = await http.post(f"{server_url}/mcp", json=body, headers=headers)
        assert r.status_code == 401
        assert "resource_metadata=" in r.headers["www-authenticate"]
        wrong_scope = idp.user_token(user="alice", audience=idp.mcp.client_id, scopes=("other",))
        r = await http.post(
            f"{server_url}/mcp",
            json=body,
            headers={**headers, "Authorization": f"Bearer {wrong_scope}"},
        )
        assert r.status_code == 403
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
        foundry = idp.user_token(user="alice", audience="https://ai.azure.com")
        r = await http.post(
            f"{server_url}/mcp",
            json=body,
            headers={**headers, "Authorization": f"Bearer {foundry}"},
        )
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        r = await http.get(f"{server_url}/.well-known/oauth-protected-resource/mcp")
        assert r.json()["authorization_servers"] == [f"{idp.url}/{idp.tenant_id}/v2.0"]


def test_main_is_importable(example: ModuleType) -> None:
    assert callable(example.main)
    with pytest.raises(SystemExit):
        example.main(["--help"])
