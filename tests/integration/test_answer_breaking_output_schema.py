"""A tool that declares an outputSchema, whose (real, ran) call the server answers with a result
that breaks it: structured content that does not match, or none at all. The mcp SDK's client
refuses such a result; the caller gets a typed ``CallOutcomeUnknown`` that says the call ran, why
its answer was dropped, and what to fix on the server, never agent-framework's bare "Failed to
call tool" (which reads as "it did not run" and invites a retry that runs it twice). The call is
not sent again, and the connection stays usable.

Real components: the emulator over HTTPS with MSAL's OBO, a real ``MCPServer`` +
``EntraTokenVerifier`` under uvicorn (the typed tool runs; its JSON answer is rewritten on the
way out), the library's shared tool.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from _support.life_server_requests import MISSING, WRONG, WRONG_VALUE, schema_breaking_server
from _support.mcp_world import Recorder, agent_token, calls, make_chain, mcp_scopes
from _support.servers import ServerThread
from entra_passthrough import bind_caller
from entra_passthrough.agent_framework import CallOutcomeUnknown, entra_mcp_tool
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

pytestmark = pytest.mark.slow


@pytest.fixture
def typed_server(
    idp: EntraEmulator,
) -> Iterator[tuple[ServerThread, Recorder, list[tuple[str, str]]]]:
    executions: list[tuple[str, str]] = []
    server, recorder = schema_breaking_server(idp, executions)
    try:
        yield server, recorder, executions
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("who", "says"),
    [
        (WRONG, "does not match the outputSchema the server declared for the tool"),
        (MISSING, "has no structured content"),
    ],
    ids=["wrong", "missing"],
)
async def test_a_result_breaking_the_declared_output_schema_says_the_call_ran(
    idp: EntraEmulator,
    users: list[User],
    typed_server: tuple[ServerThread, Recorder, list[tuple[str, str]]],
    who: str,
    says: str,
) -> None:
    server, recorder, executions = typed_server
    user = users[0]
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    token = agent_token(idp, user)
    try:
        with bind_caller(token=token):
            await tool.connect()
            with pytest.raises(CallOutcomeUnknown) as raised:
                await tool.call_tool("typed", who=who)
            # The connection is fine: a conforming answer of the same tool comes through.
            ok = await tool.call_tool("typed", who="fine")
    finally:
        await tool.close()

    message = raised.value.args[0]
    assert message.startswith("The call to tool 'typed' on MCP server 'records' ran: "), message
    assert says in message, message
    assert "not retried automatically" in message
    assert "Fix: correct the MCP server's tool" in message
    assert "Failed to call tool" not in message
    # Neither the answer's content nor any token is quoted.
    assert WRONG_VALUE not in message
    assert token not in message
    assert raised.value.status is None  # no HTTP error: the server answered 200
    # The broken call ran once and was sent once (never again), and the next call ran once.
    assert executions == [(who, user.oid), ("fine", user.oid)]
    sent = [seen.caller_tag for seen in calls(recorder.snapshot())]
    assert sent == [who, "fine"]
    assert any(getattr(item, "text", None) and user.oid in item.text for item in ok), ok
