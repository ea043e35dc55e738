"""A request body built to crash a parser: the background-run capture reads the body of every
``POST .../responses`` of a caller to find ``"background": true``. A body nested deeper than the
JSON parser's recursion limit raised ``RecursionError`` out of the middleware (an HTTP 500)."""

from __future__ import annotations

from typing import Any

import pytest

from entra_passthrough import CallerMiddleware
from entra_passthrough.agent_framework import BackgroundRunCallers

BEARER = b"Bearer eyJhbGciOiJub25lIn0.eyJ0aWQiOiJ0In0.c2ln"
BODIES = {
    "deep-array": b"[" * 100_000,
    "deep-object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "deep-inside-background": b'{"background": true, "x": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}",
    "huge-int": b'{"background": true, "x": ' + b"9" * 5000 + b"}",
    "not-utf8": b'\xff\xfe{"background": true}',
    "nan": b'{"background": true, "x": NaN}',
}


async def _post(body: bytes) -> tuple[int, bool]:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        read = b""
        while True:
            message = await receive()
            read += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen["body"] = read
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/responses",
        "headers": [(b"authorization", BEARER)],
        "query_string": b"",
    }
    await CallerMiddleware(BackgroundRunCallers(app))(scope, receive, send)
    return sent[0]["status"], seen.get("body") == body


@pytest.mark.parametrize("body", list(BODIES.values()), ids=list(BODIES))
async def test_a_hostile_responses_body_reaches_the_app_untouched(body: bytes) -> None:
    status, intact = await _post(body)
    assert status == 200  # the app answered: the capture neither crashed nor refused
    assert intact  # and the app read the body exactly as sent
