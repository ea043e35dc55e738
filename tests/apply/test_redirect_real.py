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


def refusing_app(seen: list[dict[str, Any]]) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        seen.append(dict(request.headers))
        return JSONResponse(
            {"error": "invalid_token"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )

    return Starlette(routes=[Route("/echo", echo)])


async def test_a_401_from_a_configured_origin_the_token_never_reached_keeps_it() -> None:
    # Both origins are configured; the first redirects to the second, and the client drops
    # Authorization on that hop (another origin). The second's 401 says nothing about the token
    # the first accepted: it is not dropped, no new one is acquired, and the request is not sent
    # to the first origin again (before: one more acquisition and a replay on every request).
    first_seen: list[dict[str, Any]] = []
    second_seen: list[dict[str, Any]] = []
    chain = FakeChain()
    with (
        serve_in_thread(refusing_app(second_seen), lifespan="off") as second,
        serve_in_thread(redirecting_app(second, first_seen), lifespan="off") as first,
    ):
        auth = EntraAuth(chain, scopes=["api://api/.default"], origins=[first, second])
        async with httpx2.AsyncClient(follow_redirects=True) as client:
            auth.install(client)
            with bind_caller(user_caller("alice")):
                answers = [await client.get(f"{first}/go") for _ in range(3)]
    assert [a.status_code for a in answers] == [401, 401, 401]
    assert len(first_seen) == 3  # one per request: none replayed
    assert all(s["authorization"].startswith("Bearer user-alice-") for s in first_seen)
    assert len(second_seen) == 3
    assert all("authorization" not in s for s in second_seen)
    assert chain.invalidated == []
    assert len(chain.calls) == 3  # FakeChain has no cache: one acquisition per request, no more
