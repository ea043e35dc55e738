"""Two Authorization headers are refused, on the EntraTokenVerifier path as by
require_entra_auth: the mcp SDK reads the first one only, so a valid first token let a request
through whatever the second said (and a proxy or a later reader may pick the other one)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.responses import JSONResponse

from _support.asgi import asgi_get

from ._mcp_app import ISSUER, guarded_api, post_mcp


@pytest.mark.parametrize(
    "second",
    ["valid-again", "garbage", "Basic dXNlcjpwYXNz", "Bearer"],
)
async def test_two_authorization_headers_are_refused(base_url: str, second: str) -> None:
    valid = f"Bearer {ISSUER.token()}"
    other = valid if second == "valid-again" else second
    response = await post_mcp(base_url, [valid, other])
    assert response.status_code == 401, response.text
    header = response.headers["www-authenticate"]
    assert header.startswith("Bearer")
    assert 'error="invalid_token"' in header
    assert "more than one Authorization header" in header


async def test_one_valid_header_still_passes(base_url: str) -> None:
    response = await post_mcp(base_url, [f"Bearer {ISSUER.token()}"])
    assert response.status_code == 200, response.text


# --- the same rule on require_entra_auth (plain ASGI, no server needed) ---


async def test_require_entra_auth_refuses_two_authorization_headers() -> None:
    # Two bearers (two users, or a valid one beside junk): which one counts would depend on
    # who reads the headers; refuse the request instead of picking one.
    app = guarded_api()
    alice = ISSUER.token(oid="alice-oid")
    bob = ISSUER.token(oid="bob-oid")
    status, _ = await asgi_get(app, [(b"authorization", f"Bearer {alice}".encode())])
    assert status == 200
    for pair in ((alice, bob), (alice, alice), (alice, "junk")):
        headers = [(b"authorization", f"Bearer {t}".encode()) for t in pair]
        status, response_headers = await asgi_get(app, headers)
        assert status == 401
        assert b"invalid_token" in response_headers[b"www-authenticate"]


@pytest.mark.parametrize(
    "order",
    [
        ("authorization", "x-ms-token-aad-access-token"),
        ("x-ms-token-aad-access-token", "authorization"),
    ],
)
async def test_a_repeated_assertion_header_is_not_rescued_by_another_one(
    order: tuple[str, str],
) -> None:
    """Authorization sent twice beside one valid ``x-ms-token-aad-access-token``: the request
    is ambiguous whatever order the headers are configured in (fail closed: 401)."""
    from entra_passthrough import CallerMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await JSONResponse({"ok": True})(scope, receive, send)

    token = ISSUER.token()
    headers = [
        (b"authorization", f"Bearer {token}".encode()),
        (b"authorization", f"Bearer {token}".encode()),
        (b"x-ms-token-aad-access-token", token.encode()),
    ]
    middleware = CallerMiddleware(app, assertion_headers=order, require_caller=True)
    status, _ = await asgi_get(middleware, headers)
    assert status == 401


async def test_the_mcp_verifier_accepts_more_than_one_space_after_bearer(base_url: str) -> None:
    # RFC 6750: "Bearer" 1*SP b64token. The mcp SDK hands over ``header[7:]``.
    response = await post_mcp(base_url, [f"Bearer   {ISSUER.token()}"])
    assert response.status_code == 200, response.text
