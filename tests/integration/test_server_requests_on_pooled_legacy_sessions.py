"""A legacy (stateful, SSE) MCP server asks the client something during a call (``ping``,
``roots/list``): on the per-user pool, the client's answer carries the token of the user's run
that is active, in every run on the pooled connection, not only the run that opened it.

Before, the transport task that posts these answers (the GET stream, on which the server sends
them, and the handlers it spawns) kept a copy of the context of the run that connected. From the
second run of a user on, the answer went out with no token: the server refused it (401), never
got its answer, and the call failed ``CallOutcomeUnknown`` after ``request_timeout`` although the
tool ran. docs/agent-framework.md: the pool's connection-lifetime requests act for "the user the
connection belongs to, while one of that user's runs is active".

Real components: the emulator over HTTPS with MSAL's OBO, a real ``MCPServer`` +
``EntraTokenVerifier`` under uvicorn (legacy sessions, SSE answers), the library's pool.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import MCPDeprecationWarning

from _support.life_server_requests import BOUND, ServerLog, asking_legacy_server
from _support.mcp_world import agent_token, make_chain, mcp_scopes
from _support.servers import ServerThread
from entra_passthrough import bind_caller
from entra_passthrough.agent_framework import entra_mcp_tool
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

pytestmark = pytest.mark.slow

#: Long enough never to end a call that gets its answer; a call whose answer is refused waits
#: this long (the failure this test catches), then fails.
REQUEST_TIMEOUT = 8


@pytest.fixture(autouse=True)
def legacy_roots_are_expected() -> None:
    """mcp 2.3 warns that roots are deprecated in protocol 2026-07-28: this server asks a legacy
    session on purpose (pytest restores the filters after each test)."""
    warnings.filterwarnings(
        "ignore", message="The roots capability is deprecated", category=MCPDeprecationWarning
    )


@pytest.fixture
def asking(idp: EntraEmulator) -> Iterator[tuple[ServerThread, ServerLog]]:
    server, log = asking_legacy_server(idp)
    try:
        yield server, log
    finally:
        log.ask_now.set()  # a question still waiting is asked (and refused) now, not at exit
        server.stop()


def _pool(idp: EntraEmulator, server: ServerThread) -> Any:
    """The per-user pool of the ``records`` server, with a short request timeout."""
    return entra_mcp_tool(
        "records",
        f"{server.base}/mcp",
        chain=make_chain(idp),
        scopes=mcp_scopes(idp),
        per_user=True,
        request_timeout=REQUEST_TIMEOUT,
    )


async def test_every_run_answers_the_servers_requests_with_its_own_token(
    idp: EntraEmulator, users: list[User], asking: tuple[ServerThread, ServerLog]
) -> None:
    server, log = asking
    user = users[0]
    pool = _pool(idp, server)
    questions = ["ping", "roots", "ping"]  # run 1 opens the connection; runs 2 and 3 reuse it
    try:
        for number, what in enumerate(questions, start=1):
            who = f"run{number}"
            with bind_caller(token=agent_token(idp, user)):
                tool = await pool.tool()
                async with tool:
                    result = await tool.call_tool("ask", who=who, what=what)
            text = json.dumps([getattr(item, "text", None) for item in result])
            assert who in text, text
            assert user.oid in text, text
            # The question got the client's answer: pong, or the client's "no roots" error.
            assert "error: TimeoutError" not in text, text
        assert len(pool) == 1  # one pooled connection served the three runs
    finally:
        await pool.aclose()

    answers = log.snapshot_answers()
    assert len(answers) == len(questions), answers
    for number, answer in enumerate(answers, start=1):
        # Each answer carried the user's token, the very token of that run's own tools/call
        # (resolved from that run's assertion), and the server took it.
        assert answer.oid == user.oid, (number, answer)
        assert answer.bearer_sha is not None
        assert answer.bearer_sha == log.call_bearers[f"run{number}"], number
        assert answer.status == 202, (number, answer)
    assert len(set(log.call_bearers.values())) == len(questions)  # three runs, three tokens
    for number in range(1, len(questions) + 1):
        assert log.runs_of(f"run{number}") == 1  # each call ran exactly once
    outcomes = dict(log.asked)
    assert outcomes["run1"].startswith("ping:")
    assert outcomes["run3"].startswith("ping:")
    assert outcomes["run2"] == "error: MCPError"  # the client's own answer: no roots


async def test_a_connection_whose_user_has_no_run_answers_with_no_token(
    idp: EntraEmulator, users: list[User], asking: tuple[ServerThread, ServerLog]
) -> None:
    """User A's run ended; user B's run is active on another pooled connection. A question the
    server asks on A's session then is answered with no token: never B's, never A's."""
    server, log = asking
    alice, bob = users[1], users[2]
    pool = _pool(idp, server)
    try:
        with bind_caller(token=agent_token(idp, alice)):
            tool = await pool.tool()
            async with tool:
                # Answered at once; the server asks its question on A's session later.
                await tool.call_tool("ask", who="alice", what="ping", later=True)
        with bind_caller(token=agent_token(idp, bob)):
            tool = await pool.tool()
            async with tool:
                await tool.call_tool("ask", who="bob", what="ping")  # B's own, answered
                log.ask_now.set()  # A's question, while B's run is active
                loop = asyncio.get_running_loop()
                deadline = loop.time() + BOUND
                while len(log.snapshot_answers()) < 2 and loop.time() < deadline:
                    await asyncio.sleep(0.05)  # polled, bounded: not a timed assertion
                answers = log.snapshot_answers()
        assert len(pool) == 2
    finally:
        await pool.aclose()

    assert len(answers) == 2, answers
    by_token = {answer.oid for answer in answers}
    # B's answer carried B's token; A's carried none (refused), and never B's.
    assert by_token == {bob.oid, None}, answers
    refused = [answer for answer in answers if answer.oid is None]
    assert refused[0].status == 401
    assert log.runs_of("alice") == 1
    assert log.runs_of("bob") == 1
