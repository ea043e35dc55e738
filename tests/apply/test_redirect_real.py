"""Redirects between two real loopback servers: the token never reaches the other origin."""

from __future__ import annotations

from typing import Any

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

from _support.servers import serve_in_thread
from entra_passthrough import EntraAuth, bind_caller

from ._fakes import FakeChain, user_caller


def echo_app(seen: list[dict[str, Any]]) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        seen.append(dict(request.headers))
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/echo", echo)])


def redirecting_app(target: str, seen: list[dict[str, Any]]) -> Starlette:
    async def go(request: Request) -> RedirectResponse:
        seen.append(dict(request.headers))
        return RedirectResponse(f"{target}/echo", status_code=307)

    async def echo(request: Request) -> JSONResponse:
        seen.append(dict(request.headers))
        return JSONResponse({"ok": True})

    async def local(request: Request) -> RedirectResponse:
        return RedirectResponse("/echo", status_code=307)

    return Starlette(routes=[Route("/go", go), Route("/echo", echo), Route("/local", local)])


async def test_cross_origin_redirect_between_real_servers() -> None:
    other_seen: list[dict[str, Any]] = []
    api_seen: list[dict[str, Any]] = []
    chain = FakeChain(headers={"x-agent-foundry-call-id": "call-1"})
    with (
        serve_in_thread(echo_app(other_seen), lifespan="off") as other,
        serve_in_thread(redirecting_app(other, api_seen), lifespan="off") as api,
    ):
        auth = EntraAuth(chain, scopes=["api://api/.default"], origins=[api])
        async with httpx2.AsyncClient(follow_redirects=True) as client:
            auth.install(client)
            with bind_caller(user_caller("alice")):
                away = await client.get(f"{api}/go")
                home = await client.get(f"{api}/local")
    assert away.status_code == 200
    assert home.status_code == 200
    assert len(other_seen) == 1
    assert "authorization" not in other_seen[0]
    assert "x-agent-foundry-call-id" not in other_seen[0]
    assert api_seen[0]["authorization"].startswith("Bearer user-alice-")
    assert api_seen[1]["authorization"].startswith("Bearer user-alice-")  # same-origin hop
