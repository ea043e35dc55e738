"""A ``tools/call`` answered with an HTTP error that carries no JSON-RPC error (429 with
``Retry-After``, a bare 400, 503 with ``Retry-After``): a typed ``CallOutcomeUnknown`` that
names the status, keeps the ``Retry-After`` and says the call may have run, never the SDK's bare
"Server returned an error response", and never sent again. A legacy session refused with 404
on every attempt is reported as refused, not as an unreachable server.

Real components: the emulator and MSAL behind ``EntraMCPTool``, a real MCP server under uvicorn
behind an ASGI wrapper that answers the marked calls itself (after letting the tool run, where
the case says so), counting executions and every request received."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from agent_framework.exceptions import ToolException

from _support.mcp_world import (
    Recorder,
    agent_token,
    build_mcp_app,
    make_chain,
    mcp_scopes,
    read_json_request,
)
from _support.servers import ServerThread
from entra_passthrough import bind_caller
from entra_passthrough.agent_framework import CallOutcomeUnknown, entra_mcp_tool
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

pytestmark = [pytest.mark.slow]

#: name: (status, content type, body, Retry-After, whether the tool runs before the answer)
ANSWERS: dict[str, tuple[int, bytes, bytes, bytes | None, bool]] = {
    "429-retry-after": (429, b"text/plain", b"slow down", b"2", False),
    "429-after-running": (429, b"text/plain", b"slow down", b"2", True),
    "400-text": (400, b"text/plain", b"bad request", None, False),
    "503-retry-after": (503, b"text/html", b"<html>busy</html>", b"1", False),
    # A server without sessions: the SDK's stand-in is METHOD_NOT_FOUND "Not Found", no status.
    "404-text": (404, b"text/plain", b"not found", None, False),
}


def _answering(
    app: Any, answer: tuple[int, bytes, bytes, bytes | None, bool], answered: list[str]
) -> Any:
    """Answers each ``tools/call`` whose ``who`` starts with "F" with ``answer`` (noting its
    ``who`` in ``answered``: the recorder, inside, sees only what reaches the app)."""
    status, content_type, body, retry_after, run = answer

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        parsed, replay = await read_json_request(receive)
        params = parsed.get("params") if isinstance(parsed, dict) else None
        who = str(((params or {}).get("arguments") or {}).get("who", ""))
        if not who.startswith("F"):
            await app(scope, replay, send)
            return
        answered.append(who)
        if run:

            async def discard(message: Any) -> None:
                return None

            await app(scope, replay, discard)
        headers = [(b"content-type", content_type)]
        if retry_after is not None:
            headers.append((b"retry-after", retry_after))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return wrapper


def _serve(idp: EntraEmulator, wrap: Any, *, stateful: bool, json_response: bool) -> Any:
    recorder = Recorder()
    executions: list[tuple[str, str]] = []
    server = ServerThread(
        lambda base: wrap(
            build_mcp_app(
                idp,
                base_url=base,
                recorder=recorder,
                executions=executions,
                stateful=stateful,
                json_response=json_response,
            )
        ),
        name="mcp",
    ).start()
    return server, recorder, executions


@pytest.mark.parametrize(
    ("answer", "stateful", "json_response"),
    [
        pytest.param(answer, stateful, not stateful, id=f"{kind}-{answer}")
        for kind, stateful in (("modern", False), ("legacy-sse", True))
        for answer in ANSWERS
        # A 404 on a session is the session refused (test_a_session_refused_on_every_...).
        if not (stateful and ANSWERS[answer][0] == 404)
    ],
)
async def test_an_http_error_without_json_rpc_is_typed_and_never_resent(
    answer: str, stateful: bool, json_response: bool, idp: EntraEmulator, users: list[User]
) -> None:
    status, _, _, retry_after, run = ANSWERS[answer]
    answered: list[str] = []
    server, _, executions = _serve(
        idp,
        lambda app: _answering(app, ANSWERS[answer], answered),
        stateful=stateful,
        json_response=json_response,
    )
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    user = users[30]
    token = agent_token(idp, user)
    failure: BaseException | None = None
    try:
        with bind_caller(token=token):
            await tool.call_tool("whoami", who="warm")
            try:
                await tool.call_tool("whoami", who="F1")
            except Exception as exc:
                failure = exc
            after = await tool.call_tool("whoami", who="after")  # the connection was kept
    finally:
        await tool.close()
        server.stop()
    assert answered == ["F1"]  # never sent again
    assert Counter(who for who, _ in executions)["F1"] == (1 if run else 0)
    assert Counter(who for who, _ in executions)["after"] == 1, after
    assert isinstance(failure, CallOutcomeUnknown), repr(failure)
    assert failure.status == status
    assert failure.retry_after == (float(retry_after) if retry_after is not None else None)
    message = str(failure.args[0])
    assert f"HTTP {status}" in message
    assert "may have run" in message
    assert "Server returned an error response" not in message
    if retry_after is not None:
        assert f"wait {retry_after.decode()} s (Retry-After)" in message
    if status < 500:
        assert "Fix:" in message
    assert token not in message
    assert "eyJ" not in message


def _refusing_sessions(app: Any, refused: list[str]) -> Any:
    """Answers each ``tools/call`` on a session with 404, as a server that loses every session
    it opens does (noting its ``who`` in ``refused``); the rest goes on."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        parsed, replay = await read_json_request(receive)
        method = parsed.get("method") if isinstance(parsed, dict) else None
        if method != "tools/call":
            await app(scope, replay, send)
            return
        arguments = (parsed.get("params") or {}).get("arguments") or {}
        refused.append(str(arguments.get("who", "")))
        body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "nope"}}
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    return wrapper


async def test_a_session_refused_on_every_attempt_is_named_so(
    idp: EntraEmulator, users: list[User]
) -> None:
    refused: list[str] = []
    server, _, executions = _serve(
        idp, lambda app: _refusing_sessions(app, refused), stateful=True, json_response=True
    )
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    failure: BaseException | None = None
    try:
        with bind_caller(token=agent_token(idp, users[31])):
            await tool.connect()  # opened first, as an agent does: every attempt is refused
            try:
                await tool.call_tool("whoami", who="R1")
            except Exception as exc:
                failure = exc
    finally:
        await tool.close()
        server.stop()
    assert executions == []
    assert set(refused) == {"R1"}
    assert isinstance(failure, ToolException), repr(failure)
    assert not isinstance(failure, CallOutcomeUnknown)
    message = str(failure.args[0])
    assert "it did not run" in message
    assert "unreachable" not in message
    attempts = len(refused)
    assert f"refused its session (HTTP 404 to the call) on {attempts} of {attempts} " in message
    assert "Fix:" in message
    assert attempts > 1  # refused before anything ran: sent again on a new session (bounded)
