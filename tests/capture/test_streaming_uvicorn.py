"""A real Starlette app under uvicorn on loopback: the Caller stays active while a streaming
body is sent, ends when the app returns, and the 401 shapes are right on the wire."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from _support.servers import serve_in_thread
from _support.tokens import unsigned_jwt
from entra_passthrough import CallerMiddleware, current_caller


class Probe:
    """Outermost ASGI wrapper: records what is bound after CallerMiddleware returned."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.after: list[Any] = []
        self.done = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            self.after.append(current_caller())
            self.done.set()


def build() -> tuple[Probe, list[Any]]:
    callers: list[Any] = []

    async def stream(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for i in range(3):
                caller = current_caller()  # read inside the generator, chunk by chunk
                if caller is not None and not caller.active:
                    caller = None
                callers.append(caller)
                oid = caller.claims.oid if caller is not None and caller.claims else None
                yield f"{i}:{oid};".encode()

        return StreamingResponse(body(), media_type="text/plain")

    async def who(request: Request) -> JSONResponse:
        caller = request.state.entra_caller
        return JSONResponse({"oid": caller.claims.oid if caller.claims else None})

    app = Starlette(routes=[Route("/stream", stream), Route("/who", who)])
    return Probe(
        CallerMiddleware(
            app,
            require_caller=True,
            resource_metadata_url="https://api.example/.well-known/oauth-protected-resource",
        )
    ), callers


def test_streaming_body_sees_the_caller_and_it_ends_after() -> None:
    probe, callers = build()
    token = unsigned_jwt(oid="alice", tid="t")
    with serve_in_thread(probe, lifespan="off") as url, httpx2.Client() as client:
        response = client.get(f"{url}/stream", headers={"authorization": f"Bearer {token}"})
        assert probe.done.wait(10)
        who = client.get(f"{url}/who", headers={"authorization": f"Bearer {token}"})
    assert response.text == "0:alice;1:alice;2:alice;"
    assert len(callers) == 3
    assert all(c is callers[0] for c in callers)
    assert not callers[0].active  # ended once the app returned, after the last chunk
    assert probe.after[0] is None  # and the ContextVar was reset
    assert who.json() == {"oid": "alice"}


def test_401_shapes_on_the_wire() -> None:
    probe, _ = build()
    with serve_in_thread(probe, lifespan="off") as url, httpx2.Client() as client:
        missing = client.get(f"{url}/who")
        junk = client.get(f"{url}/who", headers={"authorization": "Bearer junk"})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == (
        'Bearer resource_metadata="https://api.example/.well-known/oauth-protected-resource"'
    )
    assert junk.status_code == 401
    assert 'error="invalid_token"' in junk.headers["www-authenticate"]
    assert junk.json()["error"] == "invalid_token"
