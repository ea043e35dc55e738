"""What the churn suites (JSON and SSE answers) share: the scripted host, the drive loop, the
per-call checks and the restart schedule."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2
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

from .conftest import SIZE, McpUnderTest, Size

#: How long after a run's end the server may still be handling a request the run sent (the
#: recorder notes when its handler ran); far shorter than any stale caller's reuse.
RECORDING_LAG = 1.0

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
    pause: tuple[int, Callable[[], None]] | None = None,
    size: Size = SIZE,
) -> list[Result]:
    """Every user makes ``calls_per_user`` requests, interleaved, at ``concurrency``.
    ``events[n]`` runs (in a thread, while the burst goes on) once ``n`` responses are in; an
    event that must wait for the previous one holds the burst's next requests until it begins
    (a short burst would otherwise be over before it, and it would restart an idle server).
    ``pause = (n, wait)``: once ``n`` responses are in, no request is sent until ``wait``
    returns (run in a thread; the calls in flight go on)."""
    jobs = [u for _ in range(size.calls_per_user) for u in users]
    semaphore = asyncio.Semaphore(size.concurrency)
    results: list[Result] = []
    pending_events = dict(events or {})
    background: list[asyncio.Task[None]] = []
    sending = asyncio.Event()  # cleared: the next requests wait
    sending.set()
    limits = httpx2.Limits(
        max_connections=size.concurrency, max_keepalive_connections=size.concurrency
    )
    async with httpx2.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def one(user: User) -> None:
            async with semaphore:
                await sending.wait()
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
                background.append(asyncio.create_task(_after(previous, event, sending)))
            if pause is not None and len(results) == pause[0]:
                sending.clear()
                background.append(asyncio.create_task(_after(None, pause[1], sending, hold=True)))

        await asyncio.gather(*(one(u) for u in jobs))
        await asyncio.gather(*background)
    return results


async def _after(
    previous: asyncio.Task[None] | None,
    event: Callable[[], None],
    sending: asyncio.Event,
    *,
    hold: bool = False,
) -> None:
    if previous is not None and not previous.done():
        sending.clear()
        await previous
    if not hold:
        sending.set()  # the event begins now, with the burst going on
    try:
        await asyncio.to_thread(event)
    finally:
        sending.set()


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
    # ``at`` is when the server's handler ran, not when the request was sent: a request the
    # host sent during a run (its lease ends before the host answers the client) can be
    # handled after the client got its answer when the machine is loaded (a CI run of 8
    # workers on 2 cores once saw one). A stale caller outlives a run by far more: a reaper's
    # or another user's request, seconds to minutes later.
    runs: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        runs.setdefault(r.user.oid, []).append((r.start, r.end + RECORDING_LAG))
    outside = [
        s
        for s in lifecycle(mcp.recorder.snapshot())
        if s.oid is not None and not any(a <= s.at <= b for a, b in runs.get(s.oid, []))
    ]
    where = [
        (s.method, s.rpc, round(min((s.at - b for _, b in runs.get(s.oid, [])), default=0), 3))
        for s in outside[:5]
    ]
    assert not outside, (
        f"{len(outside)} lifecycle requests with a user's token outside their run "
        f"(method, rpc, seconds past the nearest run's end): {where}"
    )
    print(f"churn outcomes: {dict(outcomes)}")  # shown with -rP / on failure
    return outcomes


class MidBurst:
    """An action (a restart, a crash) run ``size.restarts`` times spread over a run's burst
    (``_drive(events=...)``), noting when each ran: the test then counts the calls that were
    in flight as each began (``in_flight``)."""

    def __init__(self, action: Callable[[], None], *, size: Size = SIZE) -> None:
        self.action = action
        self.size = size
        self.windows: list[tuple[float, float]] = []  # time.monotonic() before and after

    @property
    def events(self) -> dict[int, Callable[[], None]]:
        total = self.size.users * self.size.calls_per_user
        step = total // (self.size.restarts + 1)
        return {step * (i + 1): self for i in range(self.size.restarts)}

    def __call__(self) -> None:
        began = time.monotonic()
        self.action()
        self.windows.append((began, time.monotonic()))

    def in_flight(self, results: list[Result]) -> list[int]:
        """Per run of the action: the calls in flight while it ran (sent before it ended,
        answered after it began)."""
        return [
            sum(1 for r in results if r.start < ended and r.end > began)
            for began, ended in self.windows
        ]

    def assert_ran_with_calls_in_flight(self, results: list[Result]) -> None:
        in_flight = self.in_flight(results)
        assert len(in_flight) == self.size.restarts, in_flight
        assert all(n > 0 for n in in_flight), f"calls in flight at each restart: {in_flight}"
        print(f"calls in flight at each restart: {in_flight}")


def _restarts(server: ServerThread, *, handover: bool, size: Size = SIZE) -> MidBurst:
    """Restarts in the middle of the burst (spread over the run)."""
    return MidBurst(server.handover if handover else server.restart, size=size)


def _evictions(mcp: McpUnderTest, restarts: MidBurst | None = None) -> int:
    """Sessions the client closed (DELETE) while the server that opened them still ran, during
    the run: the per-user pool's bound closed a user's connection to make room for another's
    (its idle timeout, 60 s, is never reached). Count before the host's shutdown, which closes
    what the pool holds."""
    began = [b for b, _ in (restarts.windows if restarts is not None else [])]

    def generation(at: float) -> int:
        return sum(1 for b in began if b <= at)

    seen = mcp.recorder.snapshot()
    opened = {s.session: generation(s.at) for s in seen if s.rpc == "initialize" and s.session}
    return sum(
        1
        for s in seen
        if s.method == "DELETE" and s.session in opened and opened[s.session] == generation(s.at)
    )


def _shared_host(idp: EntraEmulator, mcp: McpUnderTest) -> ServerThread:
    tool = entra_mcp_tool(
        "records", f"{mcp.server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    agent = Agent(client=_client(), tools=[tool], middleware=entra_middleware())
    return serve_asgi(host_app(agent), name="host")


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
