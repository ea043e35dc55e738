"""The churn suite against MCP servers that answer with SSE streams (``json_response=False``,
the mcp SDK's default), which every server of ``test_churn.py`` does not.

On a legacy (stateful) session every answer is an SSE stream whose headers go out when the
call arrives and whose body carries the result once the tool returns: a crash or a restart
between the two loses the answer of a call that ran, after a 200. A modern (stateless) server
in SSE mode answers a handler that returns within its deferral window (15 s) with JSON, so
the shared-tool variant mostly checks that the mode changes nothing. The same per-call
assertions as ``test_churn.py`` (``_check``): at most once on the server, by its own user,
with its own user's token, and no failure but an explained one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest

from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

from ._churn import MidBurst, _check, _drive, _evictions, _pooled_host, _restarts, _shared_host
from .conftest import POOL_SIZE, SIZE, McpUnderTest

pytestmark = [
    pytest.mark.slow,
    # A server stopped with calls in flight (the point of these tests) may leave uvicorn's
    # cancelled connections to the garbage collector.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning"
    ),
]


@pytest.mark.parametrize("handover", [False, True], ids=["gap", "handover"])
async def test_sse_shared_tool_restarts_mid_burst(
    idp_users: tuple[EntraEmulator, list[User]],
    start_mcp: Callable[..., McpUnderTest],
    handover: bool,
) -> None:
    idp, users = idp_users
    mcp = start_mcp(idp, json_response=False)
    host = _shared_host(idp, mcp)
    restarts = _restarts(mcp.server, handover=handover)
    try:
        results = await _drive(host.base, idp, users, events=restarts.events)
    finally:
        host.stop()
    restarts.assert_ran_with_calls_in_flight(results)
    outcomes = _check(results, mcp, allowed=frozenset({"ok", "unknown"}))
    assert outcomes["unknown"] <= SIZE.restarts, outcomes


@pytest.mark.parametrize(
    ("bound", "handover"), [(1, False), (4, True)], ids=["1-gap", "4-handover"]
)
async def test_sse_pool_small_bounds_with_restarts(
    idp_users: tuple[EntraEmulator, list[User]],
    start_mcp: Callable[..., McpUnderTest],
    bound: int,
    handover: bool,
) -> None:
    """Legacy sessions answering with SSE, one per user, through restarts: a call on a session
    the new server does not know is refused (404) before it runs, reconnects and is sent
    again."""
    idp, users = idp_users
    mcp = start_mcp(idp, stateful=True, json_response=False)
    host, _ = _pooled_host(idp, mcp, bound=bound)
    restarts = _restarts(mcp.server, handover=handover, size=POOL_SIZE)
    try:
        results = await _drive(host.base, idp, users, events=restarts.events, size=POOL_SIZE)
        evicted = _evictions(mcp, restarts)  # before the host's shutdown closes what the pool holds
    finally:
        host.stop()
    restarts.assert_ran_with_calls_in_flight(results)
    assert evicted > 0, "the pool's bound never closed a connection"
    print(f"connections the bound closed during the run: {evicted}")
    outcomes = _check(results, mcp, allowed=frozenset({"ok", "unknown"}), size=POOL_SIZE)
    assert outcomes["unknown"] <= SIZE.restarts, outcomes


async def test_sse_answers_cut_off_after_their_headers_never_run_twice(
    idp_users: tuple[EntraEmulator, list[User]],
    start_mcp: Callable[..., McpUnderTest],
) -> None:
    """Twice, mid-burst, the server crashes while SSE answers of calls it ran have sent their
    headers (200, text/event-stream) but not their result (``CrashPoint(after_headers=True)``
    makes sure at least one is held, whatever the load). Each such call "may have run"
    (``CallOutcomeUnknown``), never a bare "SSE stream ended without a response", and none is
    sent again (``_check`` counts executions)."""
    idp, users = idp_users
    mcp = start_mcp(
        idp, stateful=True, json_response=False, graceful=0.01, crash_after_headers=True
    )
    host, _ = _pooled_host(idp, mcp, bound=4)
    crashes = MidBurst(partial(mcp.crash.crash_after_a_held_call, mcp.server), size=POOL_SIZE)
    try:
        results = await _drive(host.base, idp, users, events=crashes.events, size=POOL_SIZE)
    finally:
        host.stop()
    crashes.assert_ran_with_calls_in_flight(results)
    outcomes = _check(results, mcp, allowed=frozenset({"ok", "unknown"}), size=POOL_SIZE)
    assert mcp.crash.held >= POOL_SIZE.restarts
    assert outcomes["unknown"] >= mcp.crash.held, (outcomes, mcp.crash.held)
    print(f"answers withheld at the crashes: {mcp.crash.held}")
