"""The MCP tool under churn, through a real ResponsesHostServer, a real JWKS-verifying mcp server
and OBO against the emulator: server restarts with and without a gap (some in the middle of a
burst), tokens that expire during the run, a slow token endpoint, small pool bounds.

Each request's input is ``"<oid>|<nonce>"``; the scripted model passes it to the tool as
``who``. The server records every request (with the bearer's oid) and every execution of the
tool. Per call the suite asserts: executed at most once on the server (exactly once when the
response has its result), by its own user, with its own user's token; no ``tools/call`` ever
reached the server without a token; and no call failed except with an explained outcome
(a call cut off by a restart "may have run"; a token that expired before its exchange).

Quick size in ``make test``; ``make soak`` (``ENTRA_SOAK=1``) runs 200 users x 100 calls at
concurrency 64.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest

from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

from ._churn import (
    MidBurst,
    Result,
    _check,
    _drive,
    _evictions,
    _pooled_host,
    _restarts,
    _shared_host,
)
from .conftest import POOL_SIZE, POOL_TOKEN_SIZE, SIZE, SOAK, McpUnderTest, Size

pytestmark = [
    pytest.mark.slow,
    # A server stopped with calls in flight (the point of these tests) may leave uvicorn's
    # cancelled connections to the garbage collector.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning"
    ),
]


@pytest.mark.parametrize("handover", [False, True], ids=["gap", "handover"])
async def test_shared_tool_restarts_mid_burst(
    idp_users: tuple[EntraEmulator, list[User]],
    start_mcp: Callable[..., McpUnderTest],
    handover: bool,
) -> None:
    idp, users = idp_users
    mcp = start_mcp(idp)
    host = _shared_host(idp, mcp)
    restarts = _restarts(mcp.server, handover=handover)
    try:
        results = await _drive(host.base, idp, users, events=restarts.events)
    finally:
        host.stop()
    restarts.assert_ran_with_calls_in_flight(results)
    # A graceful restart answers the calls it runs, and a call it reset unread is sent again:
    # every call succeeds. (At most one per restart may end "may have run": a server whose
    # graceful timeout, 1 s here, cuts off a call it was still running on a loaded machine.)
    outcomes = _check(results, mcp, allowed=frozenset({"ok", "unknown"}))
    assert outcomes["unknown"] <= SIZE.restarts, outcomes


async def test_calls_cut_off_by_a_crash_never_run_twice(
    idp_users: tuple[EntraEmulator, list[User]],
    start_mcp: Callable[..., McpUnderTest],
) -> None:
    """Twice, mid-burst, the server stops without waiting for its requests (a crash, as the
    client sees it) while calls it has run are still unanswered (``CrashPoint`` makes sure there
    is at least one, whatever the load): they are cut off after they ran. They fail with "may
    have run" and are never resent (a resend would show here as a second execution); the calls
    that never left are retried and succeed."""
    idp, users = idp_users
    mcp = start_mcp(idp, graceful=0.01)
    host = _shared_host(idp, mcp)
    crashes = MidBurst(partial(mcp.crash.crash_after_a_held_call, mcp.server))
    try:
        results = await _drive(host.base, idp, users, events=crashes.events)
    finally:
        host.stop()
    crashes.assert_ran_with_calls_in_flight(results)
    outcomes = _check(results, mcp, allowed=frozenset({"ok", "unknown"}))
    # Every call cut off after it ran is "may have run" (none resent: _check counts executions).
    assert mcp.crash.held >= SIZE.restarts
    assert outcomes["unknown"] >= mcp.crash.held, (outcomes, mcp.crash.held)
    print(f"answers withheld at the crashes: {mcp.crash.held}")
    assert outcomes["unknown"] <= SIZE.concurrency * SIZE.restarts, outcomes


async def test_shared_tool_short_tokens_slow_token_endpoint(
    short_idp_users: tuple[EntraEmulator, list[User]],
    start_mcp: Callable[..., McpUnderTest],
) -> None:
    idp, users = short_idp_users
    mcp = start_mcp(idp)
    host = _shared_host(idp, mcp)
    idp.inject_fault("token", status=None, delay=0.2, count=SIZE.users)  # slow token endpoint
    try:
        # Assertions live 4 s, MCP tokens 3 s: both expire during the run, some between the
        # exchange and the call. A call either carries its user's token or is not sent.
        results = await _drive_past_expiry(host.base, idp, users, mcp)
    finally:
        idp.clear_faults()
        host.stop()
    _check(results, mcp, allowed=frozenset({"ok", "token"}))
    replaced = mcp.bearers.replaced_after_expiry()
    assert replaced > 0, "no token of a user expired before the user's next call"
    print(f"calls with a new token after their user's earlier one expired: {replaced}")


def _sessions_carry_only_their_owner(mcp: McpUnderTest) -> None:
    """Every request on a legacy session carries the token of the user who opened it, or none."""
    seen = mcp.recorder.snapshot()
    owners = {s.session: s.oid for s in seen if s.rpc == "initialize" and s.session}
    foreign = [s for s in seen if s.session and s.oid and s.oid != owners.get(s.session)]
    assert not foreign, f"another user's token on a session: {foreign[:3]}"


#: Pool bound x restart kind: two of the four in ``make test``, all four in ``make soak``.
_POOL_CASES = [(1, False), (4, True), (1, True), (4, False)] if SOAK else [(1, False), (4, True)]


@pytest.mark.parametrize(
    ("bound", "handover"),
    _POOL_CASES,
    ids=[f"{b}-{'handover' if h else 'gap'}" for b, h in _POOL_CASES],
)
async def test_pool_small_bounds_with_restarts(
    idp_users: tuple[EntraEmulator, list[User]],
    start_mcp: Callable[..., McpUnderTest],
    bound: int,
    handover: bool,
) -> None:
    idp, users = idp_users
    mcp = start_mcp(idp, stateful=True)
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
    assert outcomes["unknown"] <= SIZE.restarts, outcomes  # as for the shared tool
    _sessions_carry_only_their_owner(mcp)


async def test_pool_short_tokens_slow_token_endpoint(
    short_idp_users: tuple[EntraEmulator, list[User]],
    start_mcp: Callable[..., McpUnderTest],
) -> None:
    """The per-user pool (bound 4) with 3 s MCP tokens, 4 s assertions and a slow token
    endpoint: a pooled connection outlives many of its user's tokens; each call carries the one
    resolved for it, or is not sent. Halfway, no request is sent until every token seen so far
    has expired: the connections the pool kept carry their users' next tokens."""
    idp, all_users = short_idp_users
    users = all_users[: POOL_TOKEN_SIZE.users]
    mcp = start_mcp(idp, stateful=True)
    host, _ = _pooled_host(idp, mcp, bound=4)
    idp.inject_fault("token", status=None, delay=0.2, count=SIZE.users)
    try:
        results = await _drive_past_expiry(host.base, idp, users, mcp, size=POOL_TOKEN_SIZE)
    finally:
        idp.clear_faults()
        host.stop()
    _check(results, mcp, allowed=frozenset({"ok", "token"}), size=POOL_TOKEN_SIZE)
    _sessions_carry_only_their_owner(mcp)
    replaced = mcp.bearers.replaced_after_expiry()
    outliving = mcp.bearers.sessions_outliving_a_token()
    print(f"new tokens after an expiry: {replaced}; sessions outliving a token: {outliving}")
    assert replaced > 0, "no token of a user expired before the user's next call"
    if POOL_TOKEN_SIZE.users <= 4:  # make soak: 200 users, the bound closes them first
        assert outliving > 0, "no pooled connection outlived its user's token"


async def _drive_past_expiry(
    base: str, idp: EntraEmulator, users: list[User], mcp: McpUnderTest, *, size: Size = SIZE
) -> list[Result]:
    """The burst with 4 s assertions, paused halfway until every token the MCP server has seen
    has expired: the second half runs on expired tokens, whatever the machine's speed."""
    return await _drive(
        base,
        idp,
        users,
        assertion_lifetime=4,
        pause=(
            len(users) * size.calls_per_user // 2,
            mcp.bearers.wait_until_seen_tokens_expired,
        ),
        size=size,
    )
