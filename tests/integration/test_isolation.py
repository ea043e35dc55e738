"""Many users, one agent, one MCP server: every tools/call carries the token of the user whose run
made it, through a real ResponsesHostServer, a real mcp server and the emulator.

Each request's input is the user's oid; the scripted model passes it to the tool as ``who``, so
the MCP server records (token oid, who) for every tools/call and any mix-up shows.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from agent_framework import Agent

from _support.mcp_world import (
    Recorder,
    ServerThread,
    agent_token,
    calls,
    host_app,
    lifecycle,
    make_chain,
    mcp_scopes,
    respond,
    seen_oid,
    serve_asgi,
    tool_outputs,
)
from _support.sizes import SOAK
from entra_passthrough.agent_framework import entra_mcp_tool, entra_middleware
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.testing import FOUNDRY_AUDIENCE, EntraEmulator
from entra_passthrough.testing._world import User

#: Quick in ``make test`` (every user in both halves of a run, interleaved, twice per half); the
#: full size with ``ENTRA_SOAK=1`` (``make soak``). The integration conftest makes at least
#: USERS + 6 users.
USERS = 200 if SOAK else 16
CALLS_PER_USER = 100 if SOAK else 4
CONCURRENCY = 64 if SOAK else 16

pytestmark = pytest.mark.slow


def _client() -> ScriptedChatClient:
    return ScriptedChatClient(tool="whoami", input_argument="who")


async def _drive(
    base: str,
    jobs: list[tuple[User, str]],
    *,
    on_half: Callable[[], Any] | None = None,
) -> list[tuple[User, dict[str, Any]]]:
    """Send every job (user, token) at CONCURRENCY; ``on_half`` runs once, between two halves."""
    semaphore = asyncio.Semaphore(CONCURRENCY)
    results: list[tuple[User, dict[str, Any]]] = []
    limits = httpx2.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx2.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def one(user: User, token: str) -> None:
            async with semaphore:
                payload = await respond(client, token, user.oid)
            results.append((user, payload))

        half = len(jobs) // 2 if on_half is not None else len(jobs)
        await asyncio.gather(*(one(u, t) for u, t in jobs[:half]))
        if on_half is not None:
            await asyncio.to_thread(on_half)
            await asyncio.gather(*(one(u, t) for u, t in jobs[half:]))
    return results


def _jobs(idp: EntraEmulator, users: list[User], *, failing: int = 0) -> list[tuple[User, str]]:
    tokens = {u.oid: agent_token(idp, u) for u in users[:USERS]}
    # Interleaved: consecutive requests come from different users.
    jobs = [(u, tokens[u.oid]) for _ in range(CALLS_PER_USER) for u in users[:USERS]]
    # Auth failures mixed in: a token for https://ai.azure.com (refused before any request) and
    # carol, who has not consented (AADSTS65001). They must fail alone.
    carol = idp.users["carol"]
    bad = [
        (users[USERS + 1], idp.user_token(users[USERS + 1], audience=FOUNDRY_AUDIENCE)),
        (carol, agent_token(idp, carol)),
    ]
    for index in range(failing):
        jobs.insert(index * len(jobs) // max(failing, 1), bad[index % 2])
    return jobs


def _split(
    results: list[tuple[User, dict[str, Any]]], users: list[User]
) -> list[tuple[User, dict[str, Any]]]:
    """Check the failing jobs (no oid, nothing sent for them); return the others."""
    good_oids = {u.oid for u in users[:USERS]}
    failed = [(u, p) for u, p in results if u.oid not in good_oids]
    assert all(seen_oid(p) is None for _, p in failed)
    return [(u, p) for u, p in results if u.oid in good_oids]


def _check(results: list[tuple[User, dict[str, Any]]], recorder: Recorder) -> None:
    assert len(results) == USERS * CALLS_PER_USER
    wrong = [(u.name, seen_oid(p), tool_outputs(p)[:1]) for u, p in results if seen_oid(p) != u.oid]
    assert not wrong, f"{len(wrong)} responses name another user or none: {wrong[:5]}"
    tool_calls = [s for s in calls(recorder.snapshot()) if s.status == 200]
    assert len(tool_calls) >= USERS * CALLS_PER_USER
    mismatched = [s for s in tool_calls if s.oid != s.caller_tag]
    assert not mismatched, f"tools/call sent with another user's token: {mismatched[:5]}"
    per_user = Counter(s.oid for s in tool_calls)
    assert all(per_user[u.oid] >= CALLS_PER_USER for u, _ in results)


def _no_foreign_lifecycle_tokens(recorder: Recorder, users: list[User]) -> None:
    oids = {u.oid for u in users}
    for seen in lifecycle(recorder.snapshot()):
        assert seen.oid is None or seen.oid in oids, seen


def _sessions_carry_only_their_owner(recorder: Recorder) -> None:
    """Every request on a legacy session (tools/list, calls, GET stream, DELETE) carries the
    token of the user who opened it, or none: never another user's."""
    seen = recorder.snapshot()
    owners = {s.session: s.oid for s in seen if s.rpc == "initialize" and s.session}
    assert owners
    foreign = [s for s in seen if s.session and s.oid and s.oid != owners.get(s.session)]
    assert not foreign, f"another user's token on a session: {foreign[:5]}"


async def test_shared_tool_stateless_server(
    idp: EntraEmulator,
    users: list[User],
    mcp_server: Callable[..., tuple[ServerThread, Recorder]],
) -> None:
    server, recorder = mcp_server()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    agent = Agent(client=_client(), tools=[tool], middleware=entra_middleware())
    host = serve_asgi(host_app(agent), name="host")
    try:
        results = await _drive(host.base, _jobs(idp, users, failing=40))
    finally:
        host.stop()
    _check(_split(results, users), recorder)
    _no_foreign_lifecycle_tokens(recorder, users)
    failing_oids = {users[USERS + 1].oid, idp.users["carol"].oid}
    assert not failing_oids & {s.oid for s in recorder.snapshot()}
    # One connection for everyone, never broken by the auth failures: discovery happened once.
    # (The very first request is a failing one: its connect went out without a token, was
    # refused, and the next request connected.)
    discovered = [s for s in recorder.snapshot() if s.rpc == "server/discover"]
    assert [s.status for s in discovered if s.status == 200] == [200]
    assert all(s.oid is None for s in discovered if s.status != 200)


async def test_shared_tool_survives_server_restart_mid_run(
    idp: EntraEmulator,
    users: list[User],
    mcp_server: Callable[..., tuple[ServerThread, Recorder]],
) -> None:
    server, recorder = mcp_server()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    agent = Agent(client=_client(), tools=[tool], middleware=entra_middleware())
    host = serve_asgi(host_app(agent), name="host")
    restarted: list[float] = []

    def restart() -> None:
        server.restart()
        restarted.append(time.monotonic())

    try:
        results = await _drive(host.base, _jobs(idp, users), on_half=restart)
    finally:
        host.stop()
    _check(results, recorder)
    _no_foreign_lifecycle_tokens(recorder, users)
    # The restart happened between the halves: every user's calls reached both servers.
    assert len(restarted) == 1
    before = {s.oid for s in calls(recorder.snapshot()) if s.status == 200 and s.at < restarted[0]}
    after = {s.oid for s in calls(recorder.snapshot()) if s.status == 200 and s.at > restarted[0]}
    assert before == after == {u.oid for u in users[:USERS]}


async def _pooled_run(
    idp: EntraEmulator,
    users: list[User],
    server: ServerThread,
    *,
    restart: bool,
) -> list[tuple[User, dict[str, Any]]]:
    pool = entra_mcp_tool(
        "records",
        f"{server.base}/mcp",
        chain=make_chain(idp),
        scopes=mcp_scopes(idp),
        per_user=True,
    )

    async def make_agent() -> Agent:
        return Agent(client=_client(), tools=[await pool.tool()], middleware=entra_middleware())

    host = serve_asgi(host_app(make_agent, close_on_shutdown=[pool]), name="host")
    try:
        return await _drive(
            host.base, _jobs(idp, users), on_half=server.restart if restart else None
        )
    finally:
        host.stop()
        assert len(pool) <= USERS


async def test_per_user_pool_principal_bound_server(
    idp: EntraEmulator,
    users: list[User],
    mcp_server: Callable[..., tuple[ServerThread, Recorder]],
) -> None:
    server, recorder = mcp_server(stateful=True)
    results = await _pooled_run(idp, users, server, restart=False)
    _check(results, recorder)
    seen = recorder.snapshot()
    # One session per user, opened with that user's token, and never a 404 "Session not found":
    # no reconnect when requests of different users interleave.
    opened = Counter(s.oid for s in seen if s.rpc == "initialize")
    assert set(opened) == {u.oid for u in users[:USERS]}
    assert all(count == 1 for count in opened.values()), opened
    assert not [s for s in calls(seen) if s.status == 404]
    # Discovery per user: each user's tool list came from a tools/list sent with their token,
    # so a server that filters tools per user is never shown to another user.
    listed = {s.oid for s in seen if s.rpc == "tools/list"}
    assert listed == {u.oid for u in users[:USERS]}
    _no_foreign_lifecycle_tokens(recorder, users)
    _sessions_carry_only_their_owner(recorder)


async def test_per_user_pool_survives_server_restart(
    idp: EntraEmulator,
    users: list[User],
    mcp_server: Callable[..., tuple[ServerThread, Recorder]],
) -> None:
    server, recorder = mcp_server(stateful=True)
    results = await _pooled_run(idp, users, server, restart=True)
    _check(results, recorder)
    seen = recorder.snapshot()
    # After the restart every session is gone (404 "Session not found"); each user's connection
    # reconnected by itself, as that user.
    opened = Counter(s.oid for s in seen if s.rpc == "initialize")
    assert all(count == 2 for count in opened.values()), opened
    for s in seen:
        if s.rpc == "initialize":
            assert s.oid in {u.oid for u in users}
    _sessions_carry_only_their_owner(recorder)
