"""A WebSocket handshake refused by ``CallerMiddleware`` gets the 401 and ``WWW-Authenticate``.

``require_caller=True`` (or a refusing verifier) closed the handshake, which the server answers
with 403 and no challenge, while docs/concepts.md promises a request without a bearer 401 with
``WWW-Authenticate: Bearer ... resource_metadata=...`` for every HTTP or WebSocket request. Where
the server offers the ASGI "websocket.http.response" extension (uvicorn and hypercorn do), the
middleware now sends the answer an HTTP request gets; elsewhere it still closes the handshake.

Real uvicorn and hypercorn on 127.0.0.1, a wsproto client, tokens the emulator issued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from _support.servers import serve_in_thread
from entra_passthrough import CallerMiddleware, JwtVerifier, current_caller
from entra_passthrough.testing import EntraEmulator

wsproto = pytest.importorskip("wsproto")
pytest.importorskip("hypercorn")

METADATA = "https://api.contoso.com/.well-known/oauth-protected-resource"


async def _ws_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    assert scope["type"] == "websocket"
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    caller = current_caller()
    oid = caller.claims.oid if caller is not None and caller.claims is not None else None
    await send({"type": "websocket.send", "text": json.dumps({"oid": oid})})
    await send({"type": "websocket.close", "code": 1000})


async def _handshake(base: str, headers: list[tuple[str, str]]) -> dict[str, Any]:
    """Open a WebSocket to ``base``; what the server answered: accepted (and the first
    message), or rejected with its status, headers and body."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import (
        AcceptConnection,
        RejectConnection,
        RejectData,
        Request,
        TextMessage,
    )

    host, port = base.split("://")[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    ws = WSConnection(ConnectionType.CLIENT)
    extra = [(k.encode(), v.encode()) for k, v in headers]
    writer.write(ws.send(Request(host=host, target="/ws", extra_headers=extra)))
    out: dict[str, Any] = {}
    body = b""
    try:
        for _ in range(50):  # bounded: a handful of reads answer a handshake
            data = await asyncio.wait_for(reader.read(65536), 10)
            if not data:
                break
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    out["accepted"] = True
                elif isinstance(event, TextMessage):
                    out["message"] = json.loads(event.data)
                    return out
                elif isinstance(event, RejectConnection):
                    out["status"] = event.status_code
                    out["headers"] = {k.decode(): v.decode() for k, v in event.headers}
                    if not event.has_body:
                        out["body"] = body
                        return out
                elif isinstance(event, RejectData):
                    body += bytes(event.data)
                    if event.body_finished:
                        out["body"] = body
                        return out
        return out
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def _hypercorn(app: Any) -> AsyncIterator[str]:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    try:
        for _ in range(200):  # until it listens (bounded)
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.025)
                continue
            writer.close()
            break
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        await asyncio.wait_for(server, 15)


@contextlib.asynccontextmanager
async def _server(kind: str, app: Any) -> AsyncIterator[str]:
    if kind == "hypercorn":
        async with _hypercorn(app) as base:
            yield base
    else:
        with serve_in_thread(app) as base:
            yield base


def _verifier(idp: EntraEmulator) -> JwtVerifier:
    return JwtVerifier(
        audiences=[idp.mcp.client_id, idp.mcp.app_id_uri],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        verify=idp.ca_file,
        required_scopes=["access_as_user"],
    )


@pytest.mark.parametrize("kind", ["uvicorn", "hypercorn"])
async def test_require_caller_answers_a_websocket_401_with_the_challenge(kind: str) -> None:
    app = CallerMiddleware(_ws_app, require_caller=True, resource_metadata_url=METADATA)
    async with _server(kind, app) as base:
        missing = await _handshake(base, [])
        garbage = await _handshake(base, [("authorization", "Bearer xx")])
    assert missing["status"] == 401, missing
    assert missing["headers"]["www-authenticate"] == f'Bearer resource_metadata="{METADATA}"'
    assert json.loads(missing["body"]) == {"error": "unauthorized"}
    assert garbage["status"] == 401, garbage
    challenge = garbage["headers"]["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert f'resource_metadata="{METADATA}"' in challenge
    assert json.loads(garbage["body"])["error"] == "invalid_token"


@pytest.mark.parametrize("kind", ["uvicorn", "hypercorn"])
async def test_a_refusing_verifier_answers_a_websocket_as_it_answers_http(
    kind: str, entra_emulator: EntraEmulator
) -> None:
    idp = entra_emulator
    good = idp.user_token("alice", audience=idp.mcp.client_id, scopes=("access_as_user",))
    foreign = idp.user_token("alice", audience=idp.agent.client_id)
    scoped = idp.user_token("alice", audience=idp.mcp.client_id, scopes=("other",))
    app = CallerMiddleware(_ws_app, verifier=_verifier(idp), resource_metadata_url=METADATA)
    async with _server(kind, app) as base:
        accepted = await _handshake(base, [("authorization", f"Bearer {good}")])
        audience = await _handshake(base, [("authorization", f"Bearer {foreign}")])
        scope = await _handshake(base, [("authorization", f"Bearer {scoped}")])
    assert accepted == {"accepted": True, "message": {"oid": idp.users["alice"].oid}}
    assert audience["status"] == 401, audience
    assert 'error="invalid_token"' in audience["headers"]["www-authenticate"]
    assert foreign.encode() not in audience["body"]
    assert scope["status"] == 403, scope
    assert 'error="insufficient_scope"' in scope["headers"]["www-authenticate"]
    assert "access_as_user" in scope["headers"]["www-authenticate"]


async def test_without_the_extension_the_handshake_is_closed() -> None:
    # A server that does not offer "websocket.http.response": the middleware can only close
    # the handshake (the server then answers 403 with no challenge, as docs/concepts.md says).
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = CallerMiddleware(_ws_app, require_caller=True, resource_metadata_url=METADATA)
    for extensions in (None, {}, {"websocket.http.response": {}}):
        sent.clear()
        scope: dict[str, Any] = {"type": "websocket", "path": "/ws", "headers": []}
        if extensions is not None:
            scope["extensions"] = extensions
        await app(scope, receive, send)
        if extensions:
            assert [m["type"] for m in sent] == [
                "websocket.http.response.start",
                "websocket.http.response.body",
            ]
            assert sent[0]["status"] == 401
        else:
            assert sent == [{"type": "websocket.close", "code": 1008}]
