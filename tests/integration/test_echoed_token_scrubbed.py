"""An MCP server's answer that quotes the token it was sent never carries it on.

A server's error that repeats the request's Authorization header (a debugging server, a gateway
quoting the request), or a tool that returns it: the text went on, whole, into the mcp SDK's
``MCPError`` (and its span), Agent Framework's tool result, the model's context and the stored
response. The MCP client's transport now replaces that exact token in every answer to a request
that carried it, across chunk boundaries; nothing else a tool returns changes."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from _support.mcp_world import (
    Recorder,
    ServerThread,
    agent_token,
    build_mcp_app,
    make_chain,
    mcp_scopes,
    read_json_request,
)
from entra_passthrough import bind_caller
from entra_passthrough.mcp import entra_call, entra_http_client
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

ASGI = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _echoing(app: ASGI, seen: list[str], accepted: list[str]) -> ASGI:
    """Answers a ``tools/call`` whose ``who`` starts with ``echo-`` itself, quoting the
    Authorization header it got: ``echo-error`` as a JSON-RPC error, ``echo-result`` as a tool
    result, ``echo-sse`` as a result in an SSE event sent in two body parts cut inside the
    token."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await app(scope, receive, send)
        body, replay = await read_json_request(receive)
        params = body.get("params") if isinstance(body, dict) else None
        who = ((params or {}).get("arguments") or {}).get("who", "")
        if not (isinstance(body, dict) and body.get("method") == "tools/call"):
            return await app(scope, replay, send)
        if not who.startswith("echo-"):
            return await app(scope, replay, send)
        header = dict(scope["headers"]).get(b"authorization", b"").decode()
        seen.append(header.partition(" ")[2])
        quoted = f"invalid request: Authorization: {header}"
        if who == "echo-error":
            answer: dict[str, Any] = {"code": -32603, "message": quoted}
            payload = {"jsonrpc": "2.0", "id": body["id"], "error": answer}
        else:
            text = {"type": "text", "text": quoted}
            result = {
                "content": [text],
                "structuredContent": {"result": quoted},  # whoami's output schema
                "resultType": "complete",
            }
            payload = {"jsonrpc": "2.0", "id": body["id"], "result": result}
        data = json.dumps(payload).encode()
        if who == "echo-sse":
            event = b"event: message\ndata: " + data + b"\n\n"
            cut = event.index(seen[-1].encode()) + 40  # inside the token
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": event[:cut], "more_body": True})
            await send({"type": "http.response.body", "body": event[cut:]})
            return None
        accepted.append(dict(scope["headers"]).get(b"accept-encoding", b"").decode())
        headers = [(b"content-type", b"application/json")]
        if who == "echo-gzip":  # compressed whatever the request asked for
            data = gzip.compress(data)
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})
        return None

    return wrapper


@pytest.fixture
def echo_server(idp: EntraEmulator) -> Iterator[tuple[ServerThread, list[str], list[str]]]:
    seen: list[str] = []
    accepted: list[str] = []
    server = ServerThread(
        lambda base: _echoing(
            build_mcp_app(idp, base_url=base, recorder=Recorder(), executions=[]),
            seen,
            accepted,
        ),
        name="mcp-echo",
    )
    server.start()
    try:
        yield server, seen, accepted
    finally:
        server.stop()


async def test_a_server_quoting_the_token_never_passes_it_on(
    idp: EntraEmulator,
    users: list[User],
    echo_server: tuple[ServerThread, list[str], list[str]],
) -> None:
    server, seen, accepted = echo_server
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    try:
        async with (
            bind_caller(token=agent_token(idp, users[36])),
            Client(streamable_http_client(f"{server.base}/mcp", http_client=http)) as client,
        ):
            with pytest.raises(MCPError) as raised:
                async with entra_call(http):
                    await client.call_tool("whoami", {"who": "echo-error"})
            async with entra_call(http):
                result = await client.call_tool("whoami", {"who": "echo-result"})
            async with entra_call(http):
                streamed = await client.call_tool("whoami", {"who": "echo-sse"})
            async with entra_call(http):
                packed = await client.call_tool("whoami", {"who": "echo-gzip"})
    finally:
        await http.aclose()
    assert len(seen) == 4
    # Asked uncompressed (httpx2 asks for gzip by default, decoded after the transport).
    assert accepted
    assert set(accepted) == {"identity"}
    assert all(len(token) > 100 for token in seen)
    texts = [str(raised.value), repr(raised.value), result.content[0].text]  # type: ignore[union-attr]
    texts.append(streamed.content[0].text)  # type: ignore[union-attr]
    texts.append(packed.content[0].text)  # type: ignore[union-attr]  # compressed anyway
    for text in texts:
        assert "Authorization: Bearer [redacted]" in text, text
        assert not any(token in text for token in seen)


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class _Parts(httpx2.AsyncByteStream):
    def __init__(self, parts: list[bytes]) -> None:
        self._parts = parts

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in _chunks(self._parts):
            yield part


@pytest.mark.parametrize("size", [1, 2, 3, 7, 50])
async def test_the_token_is_replaced_whatever_the_chunks(size: int) -> None:
    from entra_passthrough.mcp import _Scrubbed

    token = b"eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    body = b'{"e": "ey", "x": "Bearer ' + token + b'", "y": "' + token + b'" , "end": "eyJ"}'
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    out = b"".join([chunk async for chunk in _Scrubbed(_Parts(parts), token)])
    assert out == body.replace(token, b"[redacted]")
    # A tail that only looks like the token's start is given back at the end.
    assert out.endswith(b'"end": "eyJ"}')
