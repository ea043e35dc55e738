"""``require_caller``'s 401 for a bearer the Caller could not use says what is wrong with it (the
header sent twice, too large, not a JWT), as the Caller records it, never a header's value.

It said "the bearer token is not a valid JWT" whatever the reason, also for two Authorization
headers, which the Caller records as "header 'authorization' sent 2 times".
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from _support.asgi import asgi_get
from _support.servers import serve_in_thread
from _support.tokens import unsigned_jwt
from entra_passthrough import CallerMiddleware


async def refused(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the app must not run for a refused bearer")


def token(oid: str = "alice") -> bytes:
    return unsigned_jwt(tid="t1", oid=oid, exp=time.time() + 3600).encode()


def description(challenge: bytes) -> str:
    text = challenge.decode("latin-1")
    assert 'error="invalid_token"' in text
    return text.split('error_description="', 1)[1].split('"', 1)[0]


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        (
            [(b"authorization", b"Bearer " + token()), (b"authorization", b"Bearer " + token())],
            "header 'authorization' sent 2 times",
        ),
        (
            [(b"authorization", b"Bearer " + token()), (b"Authorization", b"Bearer " + token("b"))],
            "header 'authorization' sent 2 times",
        ),
        (
            [(b"authorization", b"Bearer " + b"a" * 70000)],
            "header 'authorization' is larger than 16 KiB",
        ),
        (
            [(b"authorization", b"Bearer " + b"a" * 16500)],
            "header 'authorization' is larger than 16 KiB",
        ),
        ([(b"authorization", b"Bearer not-a-jwt")], "the bearer token is not a valid JWT: "),
        ([(b"authorization", b"Bearer ")], "no token in the form 'Authorization: Bearer <token>'"),
    ],
)
async def test_the_401_says_what_is_wrong(headers: list[tuple[bytes, bytes]], said: str) -> None:
    status, answer = await asgi_get(CallerMiddleware(refused, require_caller=True), headers)
    assert status == 401
    text = description(answer[b"www-authenticate"])
    assert text.startswith(said), text
    for _, value in headers:  # never a header's value
        body = value[7:].decode("latin-1")
        assert len(body) < 3 or body not in text


async def test_another_assertion_header_sent_twice_is_named() -> None:
    app = CallerMiddleware(
        refused, require_caller=True, assertion_headers=["x-ms-token-aad-access-token"]
    )
    headers = [(b"x-ms-token-aad-access-token", token())] * 2
    status, answer = await asgi_get(app, headers)
    assert status == 401
    assert description(answer[b"www-authenticate"]) == (
        "header 'x-ms-token-aad-access-token' sent 2 times"
    )


def test_two_authorization_headers_through_uvicorn() -> None:
    """A real server's header list: the 401's header and body both say the header came twice."""
    app = CallerMiddleware(refused, require_caller=True)
    with serve_in_thread(app, lifespan="off") as base:
        port = int(base.rsplit(":", 1)[1])
        request = (
            b"GET /me HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Authorization: Bearer " + token() + b"\r\n"
            b"Authorization: Bearer " + token("bob") + b"\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401")
    challenge = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"www-authenticate:")
    )
    assert description(challenge) == "header 'authorization' sent 2 times"
    assert json.loads(body) == {
        "error": "invalid_token",
        "error_description": "header 'authorization' sent 2 times",
    }
    assert b"not a valid JWT" not in raw
