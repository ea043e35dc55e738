"""``install(app, close_on_shutdown=[...])``: an entry the host cannot close at shutdown (no
``aclose()``, no async ``close()``) is refused at install, typed, with what to pass instead;
an ``EntraMCPTool`` (whose close is ``close()``, docs/agent-framework.md "What close() ends") is
accepted; and at shutdown an entry that fails does not keep the later ones open: each is closed,
and the failure is logged by its type.

Real components: a ``ResponsesHostServer`` on uvicorn with the capture installed, an
``EntraMCPToolPool`` against a real MCP server, the emulator behind it."""

from __future__ import annotations

import logging
from typing import Any

import httpx2
import pytest
from agent_framework import Agent
from agent_framework_foundry_hosting import ResponsesHostServer

from _support.mcp_world import (
    agent_token,
    host_app,
    make_chain,
    mcp_scopes,
    serve_asgi,
    tool_outputs,
)
from entra_passthrough import ConfigurationError
from entra_passthrough.agent_framework import entra_mcp_tool, entra_middleware, install
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User


class _Failing:
    """Closes with an error, as a closable whose server is already gone may."""

    closed = False

    async def aclose(self) -> None:
        self.closed = True
        raise RuntimeError("refused to close")


class _SyncClose:
    def close(self) -> None:
        return None


def _agent() -> Agent:
    return Agent(client=ScriptedChatClient(tool="whoami"), tools=[], middleware=entra_middleware())


@pytest.mark.parametrize(
    ("entries", "said"),
    [
        ([object()], "close_on_shutdown[0] (object) cannot be closed at shutdown: it has "
         "neither aclose() nor close()"),
        ([_Failing(), _SyncClose()], "close_on_shutdown[1] (_SyncClose) cannot be closed at "
         "shutdown: it has a synchronous close()"),
        (_Failing(), "close_on_shutdown takes a list, not one _Failing"),
    ],
    ids=["no-close", "sync-close", "not-a-list"],
)  # fmt: skip
def test_install_refuses_what_it_cannot_close_and_changes_nothing(entries: Any, said: str) -> None:
    host = ResponsesHostServer(_agent(), configure_observability=None)
    before = list(host.user_middleware)
    with pytest.raises(ConfigurationError) as info:
        install(host, close_on_shutdown=entries)
    assert said in str(info.value)
    assert info.value.fix is not None
    assert "async aclose()" in info.value.fix
    assert "EntraMCPTool" in info.value.fix
    assert host.user_middleware == before  # refused before anything was added


async def test_every_entry_is_closed_at_shutdown_even_after_one_fails(
    idp: EntraEmulator, users: list[User], mcp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = mcp_server(stateful=True)
    url = f"{server.base}/mcp"
    chain, scopes = make_chain(idp), mcp_scopes(idp)
    pool = entra_mcp_tool("records", url, chain=chain, scopes=scopes, per_user=True)
    shared = entra_mcp_tool("records", url, chain=chain, scopes=scopes)
    failing = _Failing()

    async def make_agent() -> Agent:
        return Agent(
            client=ScriptedChatClient(tool="whoami", input_argument="who"),
            tools=[await pool.tool()],
            middleware=entra_middleware(),
        )

    # The tool itself (its close is close()), and a pool after an entry that fails.
    app = host_app(make_agent, close_on_shutdown=[failing, shared, pool])
    host = serve_asgi(app, name="host")
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=60, trust_env=False) as client:
            answer = await client.post(
                "/responses",
                json={"input": "hi", "store": False},
                headers={"Authorization": f"Bearer {agent_token(idp, users[4])}"},
            )
        assert answer.status_code == 200, answer.text
        assert tool_outputs(answer.json()), answer.json()
        assert len(pool) == 1  # an open connection for the shutdown to close
        with caplog.at_level(logging.WARNING):
            host.stop()
    finally:
        host.stop()
    assert failing.closed
    assert len(pool) == 0  # closed after the entry that failed
    with pytest.raises(ConfigurationError, match="is closed"):
        await pool.tool()
    failures = [r.getMessage() for r in caplog.records if "close_on_shutdown" in r.getMessage()]
    assert failures == ["close_on_shutdown: closing entry 0 (_Failing) failed: RuntimeError"]
    assert not [r for r in caplog.records if "AttributeError" in r.getMessage()]
    assert not [r for r in caplog.records if "Error in on_shutdown" in r.getMessage()]
