"""A caller whose own token cannot be used, once a shared tool is open (another user's run
opened it): the response fails with the same explanation as when that caller's request is the
one that opens the tool, streamed or not, with the host's default settings (no
``include_detailed_errors``). Before, it came back "completed" with only "Error: Function
failed." from the model. Nothing is sent for that caller, and the tool goes on serving everyone
else. Errors the model should see and act on (a call that may have run, a server's refusal of
the call's token, conditional access) stay tool results.

Real components: the emulator over HTTPS with MSAL, a real mcp server under uvicorn, a real
``ResponsesHostServer`` behind ``install(app)``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from agent_framework import Agent
from agent_framework import tool as function_tool

from _support.mcp_world import (
    Recorder,
    ServerThread,
    agent_token,
    calls,
    host_app,
    make_chain,
    mcp_scopes,
    respond,
    seen_oid,
    serve_asgi,
    tool_outputs,
)
from entra_passthrough import (
    AssertionExpired,
    InsufficientScope,
    InteractionRequired,
    TenantNotAllowed,
)
from entra_passthrough.agent_framework import (
    CallOutcomeUnknown,
    entra_mcp_tool,
    entra_middleware,
)
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.testing import FOUNDRY_AUDIENCE, EntraEmulator
from entra_passthrough.testing._world import User

Start = Callable[..., tuple[ServerThread, Recorder]]

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")


async def _failure(client: httpx2.AsyncClient, token: str, *, stream: bool) -> str:
    """The error message of a failed response (from its ``response.failed`` event when
    streamed). Asserts that it failed, with no tool result and no token in the answer."""
    response = await client.post(
        "/responses",
        json={"input": "who am I", "store": False, "stream": stream},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text[:500]
    assert not JWT.search(response.text)
    assert "Function failed" not in response.text
    if not stream:
        payload = response.json()
        assert payload["status"] == "failed", payload
        assert tool_outputs(payload) == []
        return str(payload["error"]["message"])
    failed = [
        json.loads(line.removeprefix("data:"))
        for line in response.text.splitlines()
        if line.startswith("data:") and '"response.failed"' in line
    ]
    assert len(failed) == 1, response.text[-2000:]
    return str(failed[0]["response"]["error"]["message"])


async def test_a_caller_whose_token_cannot_work_is_told_why_after_the_tool_opened(
    idp: EntraEmulator, users: list[User], mcp_server: Start
) -> None:
    server, recorder = mcp_server()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    # The host's defaults: no include_detailed_errors (it would show the model the error).
    agent = Agent(
        client=ScriptedChatClient(tool="whoami", input_argument="who"),
        tools=[tool],
        middleware=entra_middleware(),
    )
    host = serve_asgi(host_app(agent), name="host")
    foundry_user, expired_user = users[33], users[34]
    foundry = idp.user_token(foundry_user, audience=FOUNDRY_AUDIENCE)
    expired = agent_token(idp, expired_user, lifetime=-60)
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=60) as client:
            # The first request, before the tool is open: its explanation (tested before).
            first = await _failure(client, foundry, stream=False)
            opened = await respond(client, agent_token(idp, users[35]), users[35].oid)
            # The tool is open now: later callers reach it through their runs.
            later = await _failure(client, foundry, stream=False)
            streamed = await _failure(client, foundry, stream=True)
            expired_plain = await _failure(client, expired, stream=False)
            expired_streamed = await _failure(client, expired, stream=True)
            after = await respond(client, agent_token(idp, users[36]), users[36].oid)
    finally:
        host.stop()
    assert "https://ai.azure.com" in first
    assert "AADSTS500131" in first
    assert "Fix:" in first
    # The same explanation whether or not another user's run opened the tool first.
    assert later == first
    assert streamed == first
    assert expired_plain == expired_streamed
    assert "The caller's token has expired" in expired_plain
    assert "AADSTS500133" in expired_plain
    assert "Fix:" in expired_plain
    # The tool served the others on one connection; nothing was sent for the failing callers.
    assert seen_oid(opened) == users[35].oid
    assert seen_oid(after) == users[36].oid
    seen = recorder.snapshot()
    assert {foundry_user.oid, expired_user.oid}.isdisjoint({s.oid for s in seen})
    assert len([s for s in seen if s.rpc == "server/discover"]) == 1
    assert all(s.oid == s.caller_tag for s in calls(seen))


def _raising(error: Exception) -> Any:
    @function_tool(name="notes")
    async def notes() -> str:
        raise error

    return notes


def _expired_then_unknown() -> CallOutcomeUnknown:
    # A call that may have run, whose resend then found the user's token expired.
    try:
        raise AssertionExpired(expired_at=0.0)
    except AssertionExpired as expired:
        unknown = CallOutcomeUnknown("The call to tool 'notes' may have run: ...")
        unknown.__cause__ = expired
        return unknown


@pytest.mark.parametrize(
    ("error", "ends_run"),
    [
        pytest.param(lambda: AssertionExpired(expired_at=0.0), True, id="expired"),
        pytest.param(
            lambda: TenantNotAllowed(tenant="0" * 8 + "-0000-0000-0000-" + "0" * 12, allowed=[]),
            True,
            id="tenant-not-allowed",
        ),
        pytest.param(_expired_then_unknown, False, id="may-have-run"),
        pytest.param(lambda: InsufficientScope("no scope"), False, id="insufficient-scope"),
        pytest.param(
            lambda: InteractionRequired("MFA needed", claims=None), False, id="interaction"
        ),
        pytest.param(lambda: ValueError("the tool's own error"), False, id="tool-error"),
    ],
)
async def test_only_errors_about_the_callers_own_token_end_the_run(
    idp: EntraEmulator, users: list[User], error: Callable[[], Exception], ends_run: bool
) -> None:
    """``entra_middleware()`` on any function tool, with a caller whose token is fine: only an
    error that says the caller's own token cannot be used ends the run (with its message);
    anything else stays a tool result for the model."""
    raised = error()
    agent = Agent(
        client=ScriptedChatClient(tool="notes"),
        tools=[_raising(raised)],
        middleware=entra_middleware(),
    )
    host = serve_asgi(host_app(agent), name="host")
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=60) as client:
            if ends_run:
                plain = await _failure(client, agent_token(idp, users[37]), stream=False)
                streamed = await _failure(client, agent_token(idp, users[37]), stream=True)
            else:
                payload = await respond(client, agent_token(idp, users[37]), "hi")
    finally:
        host.stop()
    if ends_run:
        assert plain == streamed == str(raised)
    else:
        assert payload["status"] == "completed", payload
        outputs = tool_outputs(payload)
        assert len(outputs) == 1
        assert "Function failed" in outputs[0]
