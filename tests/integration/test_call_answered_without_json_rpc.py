"""A ``tools/call`` answered 2xx with no JSON-RPC answer in it: ``202 Accepted`` with no body
(after the server ran the call), a proxy's ``200 text/html`` page, or ``200 application/json``
that is no JSON-RPC message. The call was taken and may have run: a typed
``CallOutcomeUnknown`` that names the status, says it may have run and what to check, never
sent again. Before, the tool raised the mcp SDK's stand-in ("server answered a request with 202
Accepted", "Unexpected content type: text/html") as a bare ``ToolExecutionException``.

Real components: the emulator and MSAL behind ``EntraMCPTool``, a real MCP server under uvicorn
behind an ASGI wrapper that answers the marked calls itself (after letting the tool run, where
the case says so), counting executions."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

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

#: name: (status, content type or None, body, whether the tool runs before the answer)
ANSWERS: dict[str, tuple[int, bytes | None, bytes, bool]] = {
    "202-after-running": (202, None, b"", True),
    "200-html-page": (200, b"text/html", b"<html><body>Proxy sign-in</body></html>", False),
    "200-json-not-json-rpc": (200, b"application/json", b'{"status": "ok"}', True),
}


def _answering(app: Any, answer: tuple[int, bytes | None, bytes, bool], answered: list[str]) -> Any:
    """Answers each ``tools/call`` whose ``who`` starts with "F" with ``answer`` (noting its
    ``who`` in ``answered``)."""
    status, content_type, body, run = answer

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
        headers = [(b"content-type", content_type)] if content_type is not None else []
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return wrapper


@pytest.mark.parametrize(
    ("answer", "stateful"),
    [
        pytest.param(answer, stateful, id=f"{kind}-{answer}")
        for kind, stateful in (("modern", False), ("legacy-sse", True))
        for answer in ANSWERS
    ],
)
async def test_a_2xx_without_an_answer_may_have_run_and_is_never_resent(
    answer: str, stateful: bool, idp: EntraEmulator, users: list[User]
) -> None:
    status, _, _, run = ANSWERS[answer]
    answered: list[str] = []
    executions: list[tuple[str, str]] = []
    server = ServerThread(
        lambda base: _answering(
            build_mcp_app(
                idp,
                base_url=base,
                recorder=Recorder(),
                executions=executions,
                stateful=stateful,
                json_response=not stateful,
            ),
            ANSWERS[answer],
            answered,
        ),
        name="mcp",
    ).start()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    token = agent_token(idp, users[32])
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
    ran = Counter(who for who, _ in executions)
    assert ran["F1"] == (1 if run else 0)
    assert ran["after"] == 1, after
    assert isinstance(failure, CallOutcomeUnknown), repr(failure)
    assert failure.status == status
    assert failure.retry_after is None
    message = str(failure.args[0])
    assert "may have run" in message
    assert f"HTTP {status}" in message
    assert "Check whether it took effect before calling it again." in message
    assert "Fix:" in message
    assert "connection was lost" not in message  # it was answered
    assert "Proxy sign-in" not in message  # the server's body is never quoted
    assert token not in str(failure)
    assert "eyJ" not in message
