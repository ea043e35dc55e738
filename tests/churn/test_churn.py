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

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx2
import pytest
from agent_framework import Agent

from _support.mcp_world import (
    ServerThread,
    agent_token,
    calls,
    host_app,
    lifecycle,
    make_chain,
    mcp_scopes,
    serve_asgi,
    tool_outputs,
)
from entra_passthrough.agent_framework import (
    EntraMCPToolPool,
    PoolOptions,
    entra_mcp_tool,
    entra_middleware,
)
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

from .conftest import POOL_SIZE, SIZE, SOAK, McpUnderTest, Size

pytestmark = [
    pytest.mark.slow,
    # A server stopped with calls in flight (the point of these tests) may leave uvicorn's
    # cancelled connections to the garbage collector.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning"
    ),
]

_nonces = itertools.count()


@dataclass
class Result:
    user: User
    who: str
    status: str  # "ok", "unknown" (may have run), "token" (explained token error), "other"
    text: str
    start: float = 0.0  # time.monotonic() before the request was sent
    end: float = 0.0  # ... and once its response was complete


def _client() -> ScriptedChatClient:
    client = ScriptedChatClient(tool="whoami", input_argument="who")
    client.function_invocation_configuration["include_detailed_errors"] = True
    return client


def _classify(user: User, who: str, payload: dict[str, Any]) -> Result:
    outputs = tool_outputs(payload)
    for raw in outputs:
        try:
            outer = json.loads(raw)
            inner = json.loads(outer["result"]) if isinstance(outer, dict) else None
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(inner, dict) and inner.get("who") == who and inner.get("oid") == user.oid:
            return Result(user, who, "ok", "")
    text = " ".join(outputs) or json.dumps(payload.get("error"))[:500]
    if "may have run" in text:
        status = "unknown"
    elif any(k in text for k in ("Expired", "expired", "AADSTS500133", "ConsentRequired")):
        status = "token"
    else:
        status = "other"
    return Result(user, who, status, text[:500])


async def _drive(
    base: str,
    idp: EntraEmulator,
    users: list[User],
    *,
    assertion_lifetime: int = 3600,
    events: dict[int, Callable[[], None]] | None = None,
    size: Size = SIZE,
) -> list[Result]:
    """Every user makes ``calls_per_user`` requests, interleaved, at ``concurrency``.
    ``events[n]`` runs (in a thread, while the burst goes on) once ``n`` responses are in."""
    jobs = [u for _ in range(size.calls_per_user) for u in users]
    semaphore = asyncio.Semaphore(size.concurrency)
    results: list[Result] = []
    pending_events = dict(events or {})
    background: list[asyncio.Task[None]] = []
    limits = httpx2.Limits(
        max_connections=size.concurrency, max_keepalive_connections=size.concurrency
    )
    async with httpx2.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def one(user: User) -> None:
            async with semaphore:
                who = f"{user.oid}|{next(_nonces)}"
                token = agent_token(idp, user, lifetime=assertion_lifetime)
                start = time.monotonic()
                response = await client.post(
                    "/responses",
                    json={"input": who, "store": False},
                    headers={"Authorization": f"Bearer {token}"},
                )
                end = time.monotonic()
                assert response.status_code == 200, response.text[:300]
                result = _classify(user, who, response.json())
                result.start, result.end = start, end
                results.append(result)
            event = pending_events.pop(len(results), None)
            if event is not None:
                # One after the other: a restart never overlaps the previous one.
                previous = background[-1] if background else None
                background.append(asyncio.create_task(_after(previous, event)))

        await asyncio.gather(*(one(u) for u in jobs))
        await asyncio.gather(*background)
    return results


async def _after(previous: asyncio.Task[None] | None, event: Callable[[], None]) -> None:
    if previous is not None:
        await previous
    await asyncio.to_thread(event)


def _check(
    results: list[Result],
    mcp: McpUnderTest,
    *,
    allowed: frozenset[str] = frozenset({"ok"}),
    size: Size = SIZE,
) -> Counter[str]:
    assert len(results) == size.users * size.calls_per_user
    outcomes = Counter(r.status for r in results)
    unexplained = [r for r in results if r.status not in allowed]
    assert not unexplained, f"{outcomes}: {[r.text for r in unexplained[:3]]}"
    # Executed at most once, by its own user; exactly once when the response has the result.
    executed = Counter(who for who, _ in mcp.executions)
    twice = {who: n for who, n in executed.items() if n > 1}
    assert not twice, f"tool calls executed more than once: {list(twice.items())[:5]}"
    assert all(who.partition("|")[0] == oid for who, oid in mcp.executions)
    assert all(executed[r.who] == 1 for r in results if r.status == "ok")
    # Nothing ran for a call whose token expired before its exchange.
    assert all(executed[r.who] == 0 for r in results if r.status == "token")
    # Every tools/call that reached the server carried its own user's token.
    seen = calls(mcp.recorder.snapshot())
    tokenless = [s for s in seen if s.oid is None]
    assert not tokenless, f"{len(tokenless)} tools/call sent without a token"
    foreign = [s for s in seen if s.oid != (s.caller_tag or "").partition("|")[0]]
    assert not foreign, f"tools/call with another user's token: {foreign[:3]}"
    # Connection-lifetime requests (discover, initialize, tools/list, GET, DELETE...) carry a
    # user's token only while one of that user's requests is in progress.
    runs: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        runs.setdefault(r.user.oid, []).append((r.start, r.end))
    outside = [
        s
        for s in lifecycle(mcp.recorder.snapshot())
        if s.oid is not None and not any(a <= s.at <= b for a, b in runs.get(s.oid, []))
    ]
    assert not outside, f"{len(outside)} lifecycle requests with a user's token outside their run"
    print(f"churn outcomes: {dict(outcomes)}")  # shown with -rP / on failure
    return outcomes


def _restarts(
    server: ServerThread, *, handover: bool, size: Size = SIZE
) -> dict[int, Callable[[], None]]:
    """Restarts in the middle of the burst (spread over the run)."""
    total = size.users * size.calls_per_user
    step = total // (size.restarts + 1)
    action = server.handover if handover else server.restart
    return {step * (i + 1): action for i in range(size.restarts)}


def _shared_host(idp: EntraEmulator, mcp: McpUnderTest) -> ServerThread:
    tool = entra_mcp_tool(
        "records", f"{mcp.server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    agent = Agent(client=_client(), tools=[tool], middleware=entra_middleware())
    return serve_asgi(host_app(agent), name="host")


@pytest.mark.parametrize("handover", [False, True], ids=["gap", "handover"])
async def test_shared_tool_restarts_mid_burst(
    idp_users: tuple[EntraEmulator, list[User]],
    start_mcp: Callable[..., McpUnderTest],
    handover: bool,
) -> None:
    idp, users = idp_users
    mcp = start_mcp(idp)
    host = _shared_host(idp, mcp)
    try:
        results = await _drive(
            host.base, idp, users, events=_restarts(mcp.server, handover=handover)
        )
    finally:
        host.stop()
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
    crash = partial(mcp.crash.crash_after_a_held_call, mcp.server)
    total = SIZE.users * SIZE.calls_per_user
    step = total // (SIZE.restarts + 1)
    try:
        results = await _drive(
            host.base, idp, users, events={step * (i + 1): crash for i in range(SIZE.restarts)}
        )
    finally:
        host.stop()
    outcomes = _check(results, mcp, allowed=frozenset({"ok", "unknown"}))
    # Every call cut off after it ran is "may have run" (none resent: _check counts executions).
    assert mcp.crash.held >= SIZE.restarts
    assert outcomes["unknown"] >= mcp.crash.held, (outcomes, mcp.crash.held)
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
        results = await _drive(host.base, idp, users, assertion_lifetime=4)
    finally:
        idp.clear_faults()
        host.stop()
    _check(results, mcp, allowed=frozenset({"ok", "token"}))


def _pooled_host(
    idp: EntraEmulator, mcp: McpUnderTest, *, bound: int
) -> tuple[ServerThread, EntraMCPToolPool]:
    pool = entra_mcp_tool(
        "records",
        f"{mcp.server.base}/mcp",
        chain=make_chain(idp),
        scopes=mcp_scopes(idp),
        per_user=PoolOptions(max_connections=bound, idle_timeout=60),
    )

    async def make_agent() -> Agent:
        return Agent(client=_client(), tools=[await pool.tool()], middleware=entra_middleware())

    return serve_asgi(host_app(make_agent, close_on_shutdown=[pool]), name="host"), pool


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
    try:
        results = await _drive(
            host.base,
            idp,
            users,
            events=_restarts(mcp.server, handover=handover, size=POOL_SIZE),
            size=POOL_SIZE,
        )
    finally:
        host.stop()
    outcomes = _check(results, mcp, allowed=frozenset({"ok", "unknown"}), size=POOL_SIZE)
    assert outcomes["unknown"] <= SIZE.restarts, outcomes  # as for the shared tool
    _sessions_carry_only_their_owner(mcp)


async def test_pool_short_tokens_slow_token_endpoint(
    short_idp_users: tuple[EntraEmulator, list[User]],
    start_mcp: Callable[..., McpUnderTest],
) -> None:
    """The per-user pool (bound 4) with 3 s MCP tokens, 4 s assertions and a slow token
    endpoint: a pooled connection outlives many of its user's tokens; each call carries the one
    resolved for it, or is not sent."""
    idp, users = short_idp_users
    mcp = start_mcp(idp, stateful=True)
    host, _ = _pooled_host(idp, mcp, bound=4)
    idp.inject_fault("token", status=None, delay=0.2, count=SIZE.users)
    try:
        results = await _drive(host.base, idp, users, assertion_lifetime=4, size=POOL_SIZE)
    finally:
        idp.clear_faults()
        host.stop()
    _check(results, mcp, allowed=frozenset({"ok", "token"}), size=POOL_SIZE)
    _sessions_carry_only_their_owner(mcp)
