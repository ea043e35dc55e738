"""A token presented in a header that is not ``Bearer <token>`` gets ``invalid_token``.

The capture middleware counts such a header (``Bearer<TAB><token>``, the raw token,
``Bearer:<token>``, DPoP) as a presented, unusable token; the server side answered 401 with the
challenge for a request that sent no token at all ("a bearer token is required"), so the client
was told it sent nothing. Both sides now agree: ``invalid_token``, saying the header is not
``Bearer <token>``. A scheme that carries no user token (Basic) and a bare ``Bearer`` still get
the plain challenge. The MCP server runs on a real uvicorn (``base_url``).
"""

from __future__ import annotations

import httpx2
import pytest

from _support.asgi import asgi_get

from ._mcp_app import ISSUER, guarded_api, post_mcp

MALFORMED = ["Bearer\t{t}", "{t}", "Bearer:{t}", "DPoP {t}", "Token {t}"]
NO_TOKEN = ["Basic dXNlcjpwYXNz", "Bearer", "Negotiate abc"]


def _error_of(header: str) -> str | None:
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.lower().endswith("error"):
            return value.strip('"')
    return None


@pytest.mark.parametrize("shape", MALFORMED)
async def test_mcp_server_says_invalid_token(base_url: str, shape: str) -> None:
    response = await post_mcp(base_url, [shape.format(t=ISSUER.token())])
    assert response.status_code == 401, response.text
    header = response.headers["www-authenticate"]
    assert _error_of(header) == "invalid_token", header
    assert "not 'Bearer <token>'" in header


@pytest.mark.parametrize("value", NO_TOKEN)
async def test_mcp_server_plain_challenge_without_a_token(base_url: str, value: str) -> None:
    response: httpx2.Response = await post_mcp(base_url, [value])
    assert response.status_code == 401
    assert _error_of(response.headers["www-authenticate"]) is None


async def test_require_entra_auth_says_invalid_token() -> None:
    app = guarded_api()
    token = ISSUER.token()
    for shape in MALFORMED:
        status, headers = await asgi_get(app, [(b"authorization", shape.format(t=token).encode())])
        assert status == 401, shape
        challenge = headers[b"www-authenticate"].decode()
        assert _error_of(challenge) == "invalid_token", (shape, challenge)
    for value in NO_TOKEN:
        status, headers = await asgi_get(app, [(b"authorization", value.encode())])
        assert status == 401, value
        assert _error_of(headers[b"www-authenticate"].decode()) is None, value
