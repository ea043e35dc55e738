"""require_entra_auth on a real (non-MCP) Starlette API, current_user(), auth_settings()."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _support.servers import serve_in_thread
from _support.tokens import API, API_URI, TENANT, USER_OID, Issuer
from entra_passthrough import ConfigurationError, JwtVerifier, NoCallerError
from entra_passthrough._errors import InsufficientScope, TokenVerificationError
from entra_passthrough.server import (
    EntraUser,
    auth_settings,
    challenge,
    current_user,
    require_entra_auth,
)

ISSUER = Issuer()


def build_api(base: str) -> Any:
    async def me(request: Request) -> JSONResponse:
        user = current_user()
        assert request.scope["state"]["entra_user"] == user
        return JSONResponse({"oid": user.oid, "key": user.user_key.value})

    verifier = JwtVerifier(
        audiences=[API, API_URI],
        tenants=[TENANT],
        required_scopes=["access_as_user"],
        http_client=ISSUER.async_client(),
    )
    return require_entra_auth(
        Starlette(routes=[Route("/me", me)]),
        verifier=verifier,
        resource_metadata_url=f"{base}/.well-known/oauth-protected-resource",
        scopes=[f"{API_URI}/access_as_user"],
    )


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    with serve_in_thread(make_app=build_api) as url:
        yield url


async def _get(url: str, headers: dict[str, str] | None = None) -> httpx2.Response:
    async with httpx2.AsyncClient() as http:
        return await http.get(url, headers=headers or {})


async def test_api_sees_the_verified_user(api: str) -> None:
    r = await _get(f"{api}/me", {"Authorization": f"Bearer {ISSUER.token()}"})
    assert r.status_code == 200
    assert r.json() == {"oid": USER_OID, "key": f"{TENANT}:{USER_OID}"}


async def test_api_without_token(api: str) -> None:
    r = await _get(f"{api}/me")
    assert r.status_code == 401
    header = r.headers["www-authenticate"]
    assert "error=" not in header
    assert f'resource_metadata="{api}/.well-known/oauth-protected-resource"' in header


@pytest.mark.parametrize("auth", ["Basic abc", "Bearer", "Bearer not-a-jwt", "bearer x.y.z"])
async def test_api_bad_authorization(api: str, auth: str) -> None:
    r = await _get(f"{api}/me", {"Authorization": auth})
    assert r.status_code == 401


async def test_api_wrong_scope_is_403(api: str) -> None:
    r = await _get(f"{api}/me", {"Authorization": f"Bearer {ISSUER.token(scp='x')}"})
    assert r.status_code == 403
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert f'scope="{API_URI}/access_as_user"' in r.headers["www-authenticate"]


def test_current_user_outside_a_request() -> None:
    with pytest.raises(NoCallerError):
        current_user()


def test_entra_user_repr_has_no_claims() -> None:
    user = EntraUser(
        oid="o",
        tid="t",
        upn=None,
        name=None,
        scopes=(),
        roles=(),
        client_id="c",
        app_only=False,
        claims={"secret-ish": "x"},
    )
    assert "secret-ish" not in repr(user)


def test_auth_settings_qualifies_scopes() -> None:
    s = auth_settings(
        resource_server_url="https://mcp.contoso.com/mcp",
        tenant_id=TENANT,
        scopes=["access_as_user", "api://other/x"],
        app_id_uri=API_URI,
    )
    assert s.required_scopes == [f"{API_URI}/access_as_user", "api://other/x"]
    assert str(s.issuer_url) == f"https://login.microsoftonline.com/{TENANT}/v2.0"
    assert s.validate_token_resource is False


def test_auth_settings_refuses_api_uri_resource() -> None:
    with pytest.raises(ConfigurationError, match="http"):
        auth_settings(resource_server_url=API_URI, tenant_id=TENANT)
    with pytest.raises(ConfigurationError, match="app_id_uri"):
        auth_settings(
            resource_server_url="https://mcp.contoso.com/mcp",
            tenant_id=TENANT,
            scopes=["access_as_user"],
        )


def test_challenge_escapes_attacker_text() -> None:
    err = TokenVerificationError("the token is for audience 'a\"b\\c\r\nX-Evil: 1'")
    status, header, _ = challenge(error=err, resource_metadata=None)
    assert status == 401
    assert "\r" not in header
    assert "\n" not in header
    assert header.count('"') == 4  # error="..." and error_description="..."
    status, header, body = challenge(
        error=InsufficientScope("missing"),
        resource_metadata="https://x/.well-known/p",
        scopes=["s"],
    )
    assert status == 403
    assert 'scope="s"' in header
    assert b"insufficient_scope" in body


def test_websocket_without_token_is_closed() -> None:
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(current_user().oid)
        await websocket.close()

    verifier = JwtVerifier(
        audiences=[API],
        tenants=[TENANT],
        sync_http_client=ISSUER.sync_client(),
        http_client=ISSUER.async_client(),
    )
    app = require_entra_auth(Starlette(routes=[WebSocketRoute("/ws", ws)]), verifier=verifier)
    with TestClient(app) as client:
        with pytest.raises(WebSocketDisconnect) as info, client.websocket_connect("/ws"):
            pass
        assert info.value.code == 1008
        headers = {"Authorization": f"Bearer {ISSUER.token()}"}
        with client.websocket_connect("/ws", headers=headers) as conn:
            assert conn.receive_text() == USER_OID


async def test_access_token_repr_hides_the_token() -> None:
    from entra_passthrough.server import EntraTokenVerifier

    verifier = EntraTokenVerifier(
        JwtVerifier(audiences=[API, API_URI], tenants=[TENANT], http_client=ISSUER.async_client())
    )
    token = ISSUER.token()
    access = await verifier.verify_token(token)
    assert access is not None
    assert access.token == token  # the SDK needs it
    assert token not in repr(access)
    assert token not in str(access)
    assert f"{API_URI}/access_as_user" in access.scopes
    assert access.claims is not None
    assert access.claims["oid"] == USER_OID
    assert await verifier.verify_token("junk") is None


def test_missing_mcp_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    from entra_passthrough import MissingExtraError

    monkeypatch.setitem(sys.modules, "mcp.server.auth.middleware.auth_context", None)
    monkeypatch.delitem(sys.modules, "entra_passthrough.server")
    with pytest.raises(MissingExtraError, match=r"entra-passthrough\[mcp\]"):
        importlib.import_module("entra_passthrough.server")
    monkeypatch.undo()
    assert importlib.import_module("entra_passthrough.server").current_user is not None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400), st.lists(st.text(max_size=30), max_size=3))
def test_challenge_header_is_always_well_formed(reason: str, scopes: list[str]) -> None:
    for err in (TokenVerificationError(reason), InsufficientScope(reason, required=scopes)):
        status, header, body = challenge(
            error=err,
            resource_metadata="https://x/.well-known/oauth-protected-resource",
            scopes=scopes,
        )
        assert status in (401, 403)
        header.encode("latin-1")
        assert all(" " <= c <= "~" for c in header)
        inner = header[len("Bearer ") :]
        # every parameter is name="value" with no stray quotes
        assert inner.count('"') % 2 == 0
        assert json.loads(body)["error"] == err.error
