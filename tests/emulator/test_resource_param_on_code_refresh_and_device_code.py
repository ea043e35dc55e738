"""RFC 8707 ``resource`` on the v2 token endpoint must name the resource of the scopes, on every
grant (AADSTS9010010, "The resource parameter provided in the request doesn't match with the
requested scopes."): also when a code is redeemed, a refresh token used (what breaks the MCP SDKs'
token refresh against Entra: modelcontextprotocol/csharp-sdk#1587; the Python MCP SDK sends
``resource`` on code exchange and refresh alike) and a device code polled. The emulator checked
it only for client credentials, OBO and ROPC, and issued a token for the scopes' resource with
``resource`` dropped. A matching ``resource`` keeps working; a refused request spends no code.
Raw protocol requests over HTTPS, as an MCP client's OAuth code sends them."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from entra_passthrough.testing import EntraEmulator

from .emu_helpers import assert_entra_error, post_token, token_url

REDIRECT = "http://localhost/callback"
#: What an MCP client sends as ``resource``: the MCP server's URL, not the App ID URI.
MCP_SERVER_URL = "https://mcp.contoso.example/mcp"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"


def _scope(idp: EntraEmulator) -> str:
    return f"openid offline_access {idp.mcp.app_id_uri}/access_as_user"


def _aud(token: str) -> Any:
    return jwt.decode(token, options={"verify_signature": False})["aud"]


@pytest.fixture
def http(idp: EntraEmulator) -> Any:
    with httpx.Client(verify=idp.ssl_context(), follow_redirects=False, timeout=30) as client:
        yield client


def _refresh_token(idp: EntraEmulator, http: httpx.Client) -> str:
    """Alice's refresh token for the frontend (ROPC, a public client)."""
    answer = http.post(
        token_url(idp),
        data={
            "grant_type": "password",
            "client_id": idp.frontend.client_id,
            "scope": _scope(idp),
            "username": idp.users["alice"].upn,
            "password": "alice-password",
        },
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["refresh_token"]
    return token


def test_refresh_with_another_resource_is_refused(idp: EntraEmulator, http: httpx.Client) -> None:
    refresh_token = _refresh_token(idp, http)
    form = {
        "grant_type": "refresh_token",
        "client_id": idp.frontend.client_id,
        "refresh_token": refresh_token,
        "scope": _scope(idp),
    }
    refused = http.post(token_url(idp), data={**form, "resource": MCP_SERVER_URL})
    assert_entra_error(refused, 9010010, "invalid_request")
    # Without a scope the refresh token's own scopes are the ones `resource` must name.
    no_scope = {k: v for k, v in form.items() if k != "scope"}
    refused = http.post(token_url(idp), data={**no_scope, "resource": MCP_SERVER_URL})
    assert_entra_error(refused, 9010010, "invalid_request")
    # The resource of the scopes (any of its identifiers, a trailing slash or not) is accepted.
    for resource in (idp.mcp.app_id_uri, f"{idp.mcp.app_id_uri}/", idp.mcp.client_id):
        answer = http.post(token_url(idp), data={**form, "resource": resource})
        assert answer.status_code == 200, answer.text
        assert _aud(answer.json()["access_token"]) == idp.mcp.client_id
    # So is no resource at all; the v1 endpoint's `resource` (no scope) names the resource.
    assert http.post(token_url(idp), data=form).status_code == 200
    v1 = post_token(idp, {**no_scope, "resource": idp.mcp.app_id_uri}, v1=True)
    assert v1.status_code == 200, v1.text


def _code(idp: EntraEmulator, http: httpx.Client) -> str:
    answer = http.get(
        f"{idp.authority}/oauth2/v2.0/authorize",
        params={
            "client_id": idp.agent.client_id,
            "response_type": "code",
            "redirect_uri": REDIRECT,
            "scope": _scope(idp),
            "login_hint": "alice",
            "emulator_consent": "accept",
        },
    )
    assert answer.status_code == 302, answer.text
    code: str = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    return code


def test_code_redemption_with_another_resource_is_refused_and_the_code_not_spent(
    idp: EntraEmulator, http: httpx.Client
) -> None:
    form = {
        "grant_type": "authorization_code",
        "client_id": idp.agent.client_id,
        "client_secret": idp.agent.secret or "",
        "code": _code(idp, http),
        "redirect_uri": REDIRECT,
    }
    # As the MCP SDK redeems a code: no scope, `resource` = the MCP server's URL.
    refused = http.post(token_url(idp), data={**form, "resource": MCP_SERVER_URL})
    assert_entra_error(refused, 9010010, "invalid_request")
    refused = http.post(
        token_url(idp), data={**form, "scope": _scope(idp), "resource": MCP_SERVER_URL}
    )
    assert_entra_error(refused, 9010010, "invalid_request")
    # The refusals did not spend the code: redeemed with the resource of its scopes.
    answer = http.post(token_url(idp), data={**form, "resource": idp.mcp.app_id_uri})
    assert answer.status_code == 200, answer.text
    assert _aud(answer.json()["access_token"]) == idp.mcp.client_id
    # Without `resource`, as before.
    other = http.post(token_url(idp), data={**form, "code": _code(idp, http)})
    assert other.status_code == 200, other.text


def test_device_code_poll_with_another_resource_is_refused(
    idp: EntraEmulator, http: httpx.Client
) -> None:
    client = idp.frontend.client_id
    start = http.post(
        f"{idp.authority}/oauth2/v2.0/devicecode",
        data={"client_id": client, "scope": _scope(idp)},
    )
    assert start.status_code == 200, start.text
    device_code = start.json()["device_code"]
    idp.approve_device_code(start.json()["user_code"], "alice")
    poll = {"grant_type": DEVICE_CODE, "client_id": client, "device_code": device_code}
    refused = http.post(token_url(idp), data={**poll, "resource": MCP_SERVER_URL})
    assert_entra_error(refused, 9010010, "invalid_request")
    answer = http.post(token_url(idp), data={**poll, "resource": idp.mcp.app_id_uri})
    assert answer.status_code == 200, answer.text
    assert _aud(answer.json()["access_token"]) == idp.mcp.client_id
