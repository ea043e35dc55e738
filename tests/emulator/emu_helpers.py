"""Helpers for the emulator's tests (imported by module name: tests/ is not a package)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx
import httpx2
import jwt
import msal

from entra_passthrough.testing import EntraEmulator

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
TIMESTAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"


def no_http_cache() -> dict[str, Any]:
    """MSAL caches 400s for 60 s keyed on the POST (docs/platform-facts.md): keep nothing."""

    class Nothing(dict[str, Any]):
        def __setitem__(self, key: str, value: Any) -> None:
            return None

    return Nothing()


def msal_app(
    idp: EntraEmulator,
    client_id: str | None = None,
    credential: Any = None,
    authority: str | None = None,
) -> msal.ConfidentialClientApplication:
    """MSAL as an app would build it, pointed at ``idp`` (the agent and its secret by default)."""
    return msal.ConfidentialClientApplication(
        client_id or idp.agent.client_id,
        client_credential=credential if credential is not None else idp.agent.secret,
        authority=authority or idp.authority,
        instance_discovery=False,
        http_client=idp.msal_http_client(),
        http_cache=no_http_cache(),
    )


def verify_with_jwks(
    idp: EntraEmulator, token: str, *, audience: str, issuer: str
) -> dict[str, Any]:
    """Verify a token the way a third-party resource would: PyJWT + the published JWKS."""
    client = jwt.PyJWKClient(idp.jwks_uri(), cache_keys=False, ssl_context=idp.ssl_context())
    key = client.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["RS256"], audience=audience, issuer=issuer
    )
    return claims


def aadsts(result: dict[str, Any]) -> int | None:
    codes = result.get("error_codes") or [None]
    return codes[0]  # type: ignore[no-any-return]


def post_token(
    idp: EntraEmulator,
    data: Mapping[str, str] | None = None,
    *,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    auth: tuple[str, str] | None = None,
    v1: bool = False,
) -> httpx.Response:
    """POST a raw request to the home tenant's token endpoint (v2, or v1 with ``v1=True``)."""
    path = "oauth2/token" if v1 else "oauth2/v2.0/token"
    with httpx.Client(verify=idp.ssl_context()) as http:
        return http.post(
            f"{idp.authority}/{path}", data=data, content=content, headers=headers, auth=auth
        )


def obo_form(idp: EntraEmulator, assertion: str) -> dict[str, str]:
    """The agent's OBO request for the mcp API, with its shared secret (v2-oauth2-on-behalf-of)."""
    return {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "client_id": idp.agent.client_id,
        "client_secret": idp.agent.secret or "",
        "assertion": assertion,
        "requested_token_use": "on_behalf_of",
        "scope": f"{idp.mcp.app_id_uri}/.default",
    }


def token_url(idp: EntraEmulator, tenant: str | None = None) -> str:
    return f"{idp.url}/{tenant or idp.tenant_id}/oauth2/v2.0/token"


def assert_entra_error(resp: httpx2.Response, code: int, error: str, status: int = 400) -> dict:
    """The documented error body (reference-error-codes, "Sample error response")."""
    # https://learn.microsoft.com/entra/identity-platform/reference-error-codes#handling-error-codes-in-your-application
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = resp.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    desc = body["error_description"]
    m = re.fullmatch(
        rf"AADSTS{code}: (.+)\r\nTrace ID: ({UUID})\r\nCorrelation ID: ({UUID})\r\n"
        rf"Timestamp: ({TIMESTAMP})",
        desc,
        flags=re.S,
    )
    assert m, desc
    assert re.fullmatch(TIMESTAMP, body["timestamp"])
    assert (m[2], m[3], m[4]) == (body["trace_id"], body["correlation_id"], body["timestamp"])
    assert body["error_uri"] == f"https://login.microsoftonline.com/error?code={code}"
    return body
