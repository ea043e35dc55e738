"""``CallerMiddleware(assertion_headers=)`` of the wrong type (``None``, a number, bytes, a
list holding bytes) is a ``ConfigurationError`` naming the argument, never a bare
``TypeError``/``AttributeError``; one string, a tuple or a generator of names still work."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from _support.asgi import asgi_get
from _support.tokens import unsigned_jwt
from entra_passthrough import CallerMiddleware, ConfigurationError, current_caller


async def app(scope: Any, receive: Any, send: Any) -> None:
    caller = current_caller()
    await send({"type": "http.response.start", "status": 200 if caller else 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize(
    "value",
    [None, 5, b"authorization", [b"authorization"], ["authorization", None]],
    ids=["None", "int", "bytes", "bytes-entry", "None-entry"],
)
def test_wrong_types_are_refused_typed(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="assertion_headers") as info:
        CallerMiddleware(app, assertion_headers=value)
    assert "header name" in str(info.value)
    assert "assertion_headers=['authorization']" in (info.value.fix or "")


@pytest.mark.parametrize(
    "value",
    ["x-ms-token-aad-access-token", ("x-ms-token-aad-access-token",)],
    ids=["str", "tuple"],
)
def test_names_still_work(value: Any) -> None:
    middleware = CallerMiddleware(app, assertion_headers=value)
    assert middleware.assertion_headers == ("x-ms-token-aad-access-token",)
    token = unsigned_jwt(aud="api://agent", oid="o1", tid="t1")
    status, _ = asyncio.run(
        asgi_get(middleware, [(b"x-ms-token-aad-access-token", token.encode())])
    )
    assert status == 200


def test_a_generator_of_names_is_read_once() -> None:
    names = (n for n in ["authorization", "x-ms-token-aad-access-token"])
    middleware = CallerMiddleware(app, assertion_headers=names)
    assert middleware.assertion_headers == ("authorization", "x-ms-token-aad-access-token")
