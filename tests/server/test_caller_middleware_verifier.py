"""The capture middleware verifying with the real JwtVerifier against the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _support.servers import serve_in_thread
from entra_passthrough import CallerMiddleware, JwtVerifier, current_caller
from entra_passthrough.testing import EntraEmulator


@pytest.fixture(scope="module")
def api(entra_emulator: EntraEmulator) -> Iterator[str]:
    idp = entra_emulator

    async def me(request: Request) -> JSONResponse:
        caller = current_caller()
        assert caller is not None
        assert caller.verified is not None
        return JSONResponse({"oid": caller.verified["oid"]})

    def make(base: str) -> Any:
        verifier = JwtVerifier(
            audiences=[idp.mcp.client_id, idp.mcp.app_id_uri],
            tenants=[idp.tenant_id],
            authority_host=idp.url,
            verify=idp.ca_file,
            required_scopes=["access_as_user"],
        )
        return CallerMiddleware(
            Starlette(routes=[Route("/me", me)]),
            require_caller=True,
            verifier=verifier,
            resource_metadata_url=f"{base}/.well-known/oauth-protected-resource",
        )

    with serve_in_thread(make_app=make) as url:
        yield url


async def _get(url: str, token: str | None) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient() as http:
        return await http.get(url, headers=headers)


async def test_verified_caller(api: str, entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    token = idp.user_token(user="bob", audience=idp.mcp.client_id, scopes=("access_as_user",))
    r = await _get(f"{api}/me", token)
    assert r.status_code == 200
    assert r.json() == {"oid": idp.users["bob"].oid}


async def test_refusals(api: str, entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    r = await _get(f"{api}/me", None)
    assert r.status_code == 401
    foundry = idp.user_token(user="bob", audience="https://ai.azure.com")
    r = await _get(f"{api}/me", foundry)
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert foundry not in r.text
    other = idp.user_token(user="bob", audience=idp.mcp.client_id, scopes=("other",))
    r = await _get(f"{api}/me", other)
    assert r.status_code == 403
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    # Qualified with the API's App ID URI, as EntraChallengeMiddleware says it: a client asking
    # Entra for a bare scope gets a Microsoft Graph token.
    assert f'scope="{idp.mcp.app_id_uri}/access_as_user"' in r.headers["www-authenticate"]
