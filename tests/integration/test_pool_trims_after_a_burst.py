"""A per-user pool that a burst took over ``max_connections`` (it may, for a moment, rather
than close a connection it handed out) is back at its bound once the burst's leases end: the
least recently used idle connections are closed then, not at the reaper's next pass (every
``min(idle_timeout / 2, 30)`` s: 30 s by default), which held their server sessions and sockets.

Real components: the emulator and MSAL behind the pool's tools, a real MCP server."""

from __future__ import annotations

import asyncio

from _support.mcp_world import (
    Recorder,
    ServerThread,
    agent_token,
    build_mcp_app,
    make_chain,
    mcp_scopes,
)
from entra_passthrough import bind_caller
from entra_passthrough.agent_framework import PoolOptions, entra_mcp_tool
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

BOUND = 2
USERS = 5


async def test_the_pool_is_back_at_its_bound_when_the_bursts_leases_end(
    idp: EntraEmulator, users: list[User]
) -> None:
    executions: list[tuple[str, str]] = []
    server = ServerThread(
        lambda base: build_mcp_app(idp, base_url=base, recorder=Recorder(), executions=executions),
        name="mcp",
    ).start()
    pool = entra_mcp_tool(
        "records",
        f"{server.base}/mcp",
        chain=make_chain(idp),
        scopes=mcp_scopes(idp),
        per_user=PoolOptions(max_connections=BOUND, idle_timeout=600),
    )
    everyone_in = asyncio.Barrier(USERS)
    peaks: list[int] = []

    async def run(user: User) -> None:
        async with bind_caller(token=agent_token(idp, user)):
            tool = await pool.tool()
            async with tool:
                await tool.call_tool("whoami", who=user.oid)
                await everyone_in.wait()  # every user's connection is leased at once
                peaks.append(len(pool))

    try:
        await asyncio.wait_for(asyncio.gather(*(run(u) for u in users[:USERS])), 60)
        for _ in range(100):  # the trim runs in the background (bounded wait)
            if len(pool) <= BOUND:
                break
            await asyncio.sleep(0.05)
        after = len(pool)
    finally:
        await pool.aclose()
        server.stop()
    assert max(peaks) == USERS  # over the bound while every lease was held
    assert after == BOUND
    assert sorted(oid for _, oid in executions) == sorted(u.oid for u in users[:USERS])
