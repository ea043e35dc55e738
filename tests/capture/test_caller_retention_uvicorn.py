"""A request's Caller (and its token) must not outlive the request in the server: uvicorn
schedules handles while it handles the response's last message (the keep-alive timer, reads
resumed on the connection), and those copy the current context. With the Caller still bound
then, every cancelled keep-alive timer kept one ended Caller alive until the loop purged it."""

from __future__ import annotations

import asyncio
import gc

import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from _support.servers import serve_in_thread
from _support.tokens import unsigned_jwt
from entra_passthrough import Caller, CallerMiddleware, current_caller

REQUESTS = 100


def _live_callers() -> int:
    gc.collect()  # only Callers something still references are counted
    return sum(1 for o in gc.get_objects() if type(o) is Caller)


async def test_ended_callers_are_not_kept_alive_by_the_server() -> None:
    seen: list[bool] = []

    async def tool(request: Request) -> PlainTextResponse:
        caller = current_caller()
        seen.append(caller is not None and caller.active)
        return PlainTextResponse("ok")

    app = CallerMiddleware(Starlette(routes=[Route("/", tool)]))
    # uvicorn in this test's loop (port 0), so its scheduled handles are inspected as they are
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(2000):  # readiness, polled
            if server.started or task.done():
                break
            await asyncio.sleep(0.005)
        assert server.started
        port = server.servers[0].sockets[0].getsockname()[1]
        token = unsigned_jwt(oid="alice", tid="t")
        before = _live_callers()
        async with httpx2.AsyncClient() as client:  # one keep-alive connection
            for _ in range(REQUESTS):
                response = await client.get(
                    f"http://127.0.0.1:{port}/", headers={"authorization": f"Bearer {token}"}
                )
                assert response.text == "ok"
            alive = _live_callers() - before  # connection and server still up
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
    assert seen == [True] * REQUESTS
    assert alive <= 2, f"{alive} ended Callers kept alive by the server's handles"


def test_no_caller_is_bound_after_the_last_message() -> None:
    """Once the last body message is handed to the server, the request's task has no Caller
    bound (the unbinding is not undone: that would cost a coroutine per response), and the
    Caller the app read before is ended."""
    bound_after: list[object] = []

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        caller = current_caller()
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]
        bound_after.append(current_caller() is None and caller is not None and not caller.active)

    token = unsigned_jwt(oid="alice", tid="t")
    with serve_in_thread(CallerMiddleware(app), lifespan="off") as url, httpx2.Client() as client:
        assert client.get(f"{url}/", headers={"authorization": f"Bearer {token}"}).text == "ok"
        for _ in range(200):
            if bound_after:
                break
            client.get(f"{url}/", headers={"authorization": f"Bearer {token}"})
    assert bound_after
    assert all(bound_after)
