"""Regression tests from the security review of the server side."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from entra_passthrough import JwtVerifier
from entra_passthrough.server import current_user, require_entra_auth

from ._tokens import API, TENANT, Issuer

ISSUER = Issuer()


async def _call(app: Any, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[bytes, bytes]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": "/me",
        "raw_path": b"/me",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "server": ("api.test", 443),
        "client": ("127.0.0.1", 5000),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start.get("headers") or [])


def _api() -> Any:
    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"oid": current_user().oid})

    verifier = JwtVerifier(audiences=[API], tenants=[TENANT], http_client=ISSUER.async_client())
    return require_entra_auth(Starlette(routes=[Route("/me", me)]), verifier=verifier)


async def test_two_authorization_headers_are_refused() -> None:
    # Two bearers (two users, or a valid one beside junk): which one counts would depend on
    # who reads the headers; refuse the request instead of picking one.
    app = _api()
    alice = ISSUER.token(oid="alice-oid")
    bob = ISSUER.token(oid="bob-oid")
    status, _ = await _call(app, [(b"authorization", f"Bearer {alice}".encode())])
    assert status == 200
    for pair in ((alice, bob), (alice, alice), (alice, "junk")):
        headers = [(b"authorization", f"Bearer {t}".encode()) for t in pair]
        status, response_headers = await _call(app, headers)
        assert status == 401
        assert b"invalid_token" in response_headers[b"www-authenticate"]
