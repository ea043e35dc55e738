"""An answer read from a ``tools/call``'s own HTTP response belongs to that request. A server (or
a cache, a gateway in front of it) that answers user A's POST with the JSON-RPC id of user B's
call in flight on the same shared connection must not hand A's result to B: the mcp SDK routes
a JSON answer by its id alone. The answer is dropped, B gets its own answer, and A's call fails
at once saying the server answered another request's id and that the call may have run (before:
B's call returned A's result, and A waited for its request timeout).

A real MCP server (Entra tokens verified against the emulator) on uvicorn, with a stand-in in
front of it that answers A's call with B's id (JSON, or an SSE stream that first sends A a
progress notification); the mcp SDK's ``Client`` with ``entra_http_client``, and
``EntraMCPTool``. Then the check itself, byte for byte, on SSE streams cut at every byte."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx2
import pytest
from agent_framework.exceptions import ToolException
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

import entra_passthrough.mcp as mcp_module
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
from entra_passthrough.agent_framework import CallOutcomeUnknown, entra_mcp_tool
from entra_passthrough.mcp import CallAttempt, entra_call, entra_http_client
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

ASGI = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

MISROUTED = "answered this tools/call with the JSON-RPC id of another request"


class _Misrouting:
    """In front of the real server: the ``tools/call`` whose ``who`` is ``"a"`` is answered, once
    the call of ``"b"`` has arrived, with a result naming A's oid under B's JSON-RPC id (JSON, or
    SSE after a progress notification for A's own request); B's call reaches the real server
    only once that answer went out, so B's call is in flight when it comes. Bounded waits."""

    def __init__(self, a_oid: str, *, sse: bool) -> None:
        self.a_oid = a_oid
        self.sse = sse
        self.calls: list[str] = []  # the ``who`` of each tools/call that reached the server
        self._b_id: Any = None
        self._b_arrived = threading.Event()
        self._a_answered = threading.Event()

    def wrap(self, app: ASGI) -> ASGI:
        async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["method"] != "POST":
                return await app(scope, receive, send)
            body, replay = await read_json_request(receive)
            if not isinstance(body, dict) or body.get("method") != "tools/call":
                return await app(scope, replay, send)
            params = body.get("params") or {}
            who = (params.get("arguments") or {}).get("who")
            self.calls.append(who)
            if who == "b":
                self._b_id = body["id"]
                self._b_arrived.set()
                await asyncio.to_thread(self._a_answered.wait, 30)
                return await app(scope, replay, send)
            if who != "a":
                return await app(scope, replay, send)
            await asyncio.to_thread(self._b_arrived.wait, 30)
            text = json.dumps({"oid": self.a_oid, "who": "a"})
            answer = {
                "jsonrpc": "2.0",
                "id": self._b_id,
                "result": {
                    "content": [{"type": "text", "text": text}],
                    "isError": False,
                    "structuredContent": {"result": text},
                    "resultType": "complete",
                },
            }
            if self.sse:
                token = (params.get("_meta") or {}).get("progressToken", body["id"])
                progress = {
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {"progressToken": token, "progress": 1, "total": 2},
                }
                payload = b"".join(
                    b"event: message\r\ndata: " + json.dumps(m).encode() + b"\r\n\r\n"
                    for m in (progress, answer)
                )
                kind = b"text/event-stream"
            else:
                payload, kind = json.dumps(answer).encode(), b"application/json"
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}
            )
            await send({"type": "http.response.body", "body": payload})
            self._a_answered.set()

        return wrapper


@pytest.fixture
def started() -> Iterator[list[ServerThread]]:
    servers: list[ServerThread] = []
    yield servers
    for server in servers:
        server.stop()


def _server(idp: EntraEmulator, started: list[ServerThread], stand_in: _Misrouting) -> str:
    server = ServerThread(
        lambda base: stand_in.wrap(build_mcp_app(idp, base_url=base, recorder=Recorder())),
        name="mcp",
    )
    started.append(server)
    server.start()
    return server.base


def _no_content_logged(caplog: pytest.LogCaptureFixture, a: User) -> None:
    warnings = [
        r for r in caplog.records if r.name == "entra_passthrough.mcp" and r.levelname == "WARNING"
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    text = warnings[0].getMessage()
    assert "another request" in text, text
    assert a.oid not in text, text


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
async def test_plain_client_an_answer_with_another_calls_id_reaches_neither_caller(
    idp: EntraEmulator,
    users: list[User],
    started: list[ServerThread],
    caplog: pytest.LogCaptureFixture,
    sse: bool,
) -> None:
    a, b, opener = users[33], users[34], users[37]
    stand_in = _Misrouting(a.oid, sse=sse)
    base = _server(idp, started, stand_in)
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[base])
    progress: list[float] = []
    outcomes: dict[str, Any] = {}

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    caplog.set_level(logging.WARNING, logger="entra_passthrough.mcp")
    async with (
        http,
        bind_caller(token=agent_token(idp, opener)),  # opens the shared connection
        # read_timeout_seconds: a safety net (the fixed call fails at once).
        Client(
            streamable_http_client(f"{base}/mcp", http_client=http), read_timeout_seconds=10
        ) as client,
    ):

        async def run(user: User, who: str) -> None:
            try:
                async with bind_caller(token=agent_token(idp, user)), entra_call(http):
                    result = await client.call_tool(
                        "whoami", {"who": who}, progress_callback=on_progress
                    )
                outcomes[who] = json.loads(result.content[0].text)
            except MCPError as exc:
                outcomes[who] = exc

        await asyncio.gather(run(a, "a"), run(b, "b"))
        # The shared connection still serves A.
        async with bind_caller(token=agent_token(idp, a)), entra_call(http):
            again = await client.call_tool("whoami", {"who": "a-again"})

    assert outcomes["b"] == {"oid": b.oid, "upn": b.upn, "who": "b"}, outcomes["b"]
    error = outcomes["a"]
    assert isinstance(error, MCPError), error
    assert MISROUTED in error.error.message, error.error.message
    assert "may have run" in error.error.message
    assert "timed out" not in error.error.message
    assert a.oid not in str(error)
    notes = getattr(error, "__notes__", [])
    assert any("another request" in n and "may have run" in n for n in notes), notes
    assert json.loads(again.content[0].text)["oid"] == a.oid
    assert sorted(stand_in.calls) == ["a", "a-again", "b"]  # each sent once
    if sse:
        assert progress == [1]  # the server's notification on A's stream still reached A
    _no_content_logged(caplog, a)


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
async def test_tool_an_answer_with_another_calls_id_reaches_neither_caller(
    idp: EntraEmulator,
    users: list[User],
    started: list[ServerThread],
    caplog: pytest.LogCaptureFixture,
    sse: bool,
) -> None:
    a, b, warm = users[35], users[36], users[37]
    stand_in = _Misrouting(a.oid, sse=sse)
    base = _server(idp, started, stand_in)
    tool = entra_mcp_tool(
        "records",
        f"{base}/mcp",
        chain=make_chain(idp),
        scopes=mcp_scopes(idp),
        request_timeout=10,  # a safety net: the fixed call fails at once
    )
    outcomes: dict[str, Any] = {}

    async def run(user: User, who: str) -> None:
        try:
            async with bind_caller(token=agent_token(idp, user)):
                result = await tool.call_tool("whoami", who=who)
            outcomes[who] = result[0].text
        except ToolException as exc:
            outcomes[who] = exc

    caplog.set_level(logging.WARNING, logger="entra_passthrough.mcp")
    try:
        async with bind_caller(token=agent_token(idp, warm)):
            await tool.call_tool("whoami", who="warm")
        await asyncio.gather(run(a, "a"), run(b, "b"))
        await run(a, "a-again")
    finally:
        await tool.close()

    assert isinstance(outcomes["b"], str), outcomes["b"]
    assert b.oid in outcomes["b"], outcomes["b"]
    assert a.oid not in outcomes["b"], outcomes["b"]
    error = outcomes["a"]
    # Typed: the call was sent and may have run (never resent).
    assert isinstance(error, CallOutcomeUnknown), repr(error)
    text = str(error)
    assert "JSON-RPC id of another request" in text, text
    assert "may have run" in text, text
    assert "timed out" not in text, text
    assert a.oid not in text, text
    assert isinstance(outcomes["a-again"], str), outcomes["a-again"]
    assert a.oid in outcomes["a-again"]
    assert sorted(stand_in.calls) == ["a", "a-again", "b", "warm"]  # each sent once
    _no_content_logged(caplog, a)


# -- the check itself, byte for byte ---------------------------------------------------------------


class _Chunks(httpx2.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


async def _read(
    chunks: list[bytes], *, sse: bool, ids: tuple[Any, ...] = (7,)
) -> tuple[bytes, bool]:
    attempt = CallAttempt()
    keys = frozenset(mcp_module._rpc_key(i) for i in ids)
    check = mcp_module._AnswerCheck(
        _Chunks(chunks), attempt, keys, ids[0], sse=sse, origin="http://x"
    )
    out = b"".join([piece async for piece in check])
    return out, attempt.misrouted


def _event(message: dict[str, Any], end: bytes = b"\n", *, extra: bytes = b"") -> bytes:
    return extra + b"data: " + json.dumps(message).encode() + end + end


SERVER_REQUEST = {"jsonrpc": "2.0", "id": 8, "method": "ping"}  # the server's own id space
PROGRESS = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 7}}
OWN = {"jsonrpc": "2.0", "id": 7, "result": {"content": []}}
OTHER = {"jsonrpc": "2.0", "id": 8, "result": {"content": [{"type": "text", "text": "B's"}]}}


def _splits(stream: bytes) -> Iterator[list[bytes]]:
    yield [stream]
    for at in range(1, len(stream)):
        yield [stream[:at], stream[at:]]


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
async def test_an_sse_answer_with_its_own_id_passes_byte_for_byte_however_it_is_cut(
    end: bytes,
) -> None:
    stream = (
        b"id: 1"
        + end
        + b"data:"
        + end
        + end  # a priming event
        + b": keep-alive"
        + end
        + end
        + _event(SERVER_REQUEST, end)
        + _event(PROGRESS, end, extra=b"event: message" + end)
        + _event({"jsonrpc": "2.0", "id": 9, "result": {}}, end, extra=b"event: other" + end)
        + _event({**OWN, "id": "7"}, end)  # "7" is 7 to the mcp SDK
    )
    for chunks in _splits(stream):
        out, misrouted = await _read(chunks, sse=True)
        assert out == stream, chunks
        assert not misrouted


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
async def test_an_sse_answer_with_another_id_is_replaced_however_it_is_cut(end: bytes) -> None:
    before = _event(SERVER_REQUEST, end) + _event(PROGRESS, end)
    stream = before + b"id: 5" + end + _event(OTHER, end)
    for chunks in _splits(stream):
        out, misrouted = await _read(chunks, sse=True)
        assert misrouted, chunks
        assert out.startswith(before), chunks
        replaced = out[len(before) :]
        assert b"B's" not in replaced
        data = json.loads(replaced.split(b"data: ", 1)[1])
        assert data["id"] == 7
        assert MISROUTED in data["error"]["message"]


@pytest.mark.parametrize(
    ("message", "dropped"),
    [
        (OWN, False),
        ({**OWN, "id": "7"}, False),
        ({**OWN, "id": 7.0}, False),
        ({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "x"}}, False),
        (SERVER_REQUEST, False),
        (OTHER, True),
        ({"jsonrpc": "2.0", "id": 8, "error": {"code": -32603, "message": "B's"}}, True),
        ({**OWN, "id": None}, True),
        ({**OWN, "id": True}, True),
    ],
    ids=[
        "own",
        "own-str",
        "own-float",
        "null-error",
        "request",
        "other",
        "other-error",
        "null-result",
        "bool",
    ],
)
async def test_a_json_answer_is_checked_by_its_id(message: dict[str, Any], dropped: bool) -> None:
    body = json.dumps(message).encode()
    out, misrouted = await _read([body[:5], body[5:]], sse=False)
    assert misrouted is dropped
    if dropped:
        assert b"B's" not in out
        assert MISROUTED in json.loads(out)["error"]["message"]
    else:
        assert out == body


async def test_an_sse_event_larger_than_the_bound_passes_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An event too large to hold (far above the mcp SDK's own bound, which fails it) streams
    through as it comes; the events after it are checked again."""
    monkeypatch.setattr(mcp_module, "_MAX_CHECKED_EVENT", 150)
    large = _event({**OTHER, "pad": "x" * 300})
    stream = large + _event(OTHER)
    chunks = [stream[i : i + 16] for i in range(0, len(stream), 16)]
    out, misrouted = await _read(chunks, sse=True)
    assert out.startswith(large)
    assert misrouted
    assert b"B's" not in out[len(large) :]


@pytest.mark.parametrize("status", [200, 400, 500])
async def test_the_json_error_of_an_http_error_is_checked_too(status: int) -> None:
    """The mcp SDK gives the JSON-RPC error of a 4xx/5xx answer to the POST's request whatever
    its id: another request's is dropped there too."""
    request = httpx2.Request("POST", "http://x/mcp", json={"id": 7, "method": "tools/call"})
    other = {"jsonrpc": "2.0", "id": 8, "error": {"code": -32603, "message": "B's"}}
    response = httpx2.Response(
        status,
        headers={"content-type": "application/json"},
        stream=_Chunks([json.dumps(other).encode()]),
        request=request,
    )
    attempt = CallAttempt()
    mcp_module._check_answer(request, response, attempt, frozenset((7,)), reply_id=7)
    body = await response.aread()
    assert attempt.misrouted
    assert b"B's" not in body
    assert json.loads(body)["id"] == 7


@pytest.mark.parametrize("rpc_id", [None, "server-error"], ids=["null", "sdk-server-error"])
@pytest.mark.parametrize("status", [401, 403, 404])
async def test_the_servers_own_error_of_an_http_refusal_passes(
    status: int, rpc_id: str | None
) -> None:
    """The mcp SDK's server answers an HTTP-level refusal (401, 403, 404 "Session not found")
    with a JSON-RPC error whose id is ``"server-error"`` (others: ``null``): the server's own,
    naming no other request. Taken as another request's answer, every refused call became
    "may have run" instead of the refusal it is."""
    request = httpx2.Request("POST", "http://x/mcp", json={"id": 7, "method": "tools/call"})
    own = {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": -32600, "message": "refused"}}
    response = httpx2.Response(
        status,
        headers={"content-type": "application/json"},
        stream=_Chunks([json.dumps(own).encode()]),
        request=request,
    )
    attempt = CallAttempt()
    mcp_module._check_answer(request, response, attempt, frozenset((7,)), reply_id=7)
    assert json.loads(await response.aread()) == own
    assert not attempt.misrouted
