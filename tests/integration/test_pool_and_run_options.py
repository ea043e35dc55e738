"""The integration's numeric options are checked where they are given, as a typed
``ConfigurationError`` with a fix: ``BackgroundRunCallers(max_run_seconds=)`` (and ``install(app,
max_run_seconds=)``, whose middleware Starlette builds only when the app starts),
``PoolOptions(max_connections=, idle_timeout=)`` and ``entra_mcp_tool(per_user=)``. Before, a
string was a bare ``TypeError``, NaN was accepted, and ``per_user=None`` built a pool."""

from __future__ import annotations

import math
from typing import Any

import pytest
from agent_framework import Agent
from agent_framework_foundry_hosting import ResponsesHostServer

from _support.mcp_world import make_chain, mcp_scopes
from entra_passthrough import ConfigurationError
from entra_passthrough.agent_framework import (
    BackgroundRunCallers,
    EntraMCPTool,
    EntraMCPToolPool,
    PoolOptions,
    entra_mcp_tool,
    install,
)
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.testing import EntraEmulator

NOT_SECONDS = ["60", math.nan, -1, 0, 0.0, True, None, math.inf, -math.inf, [60]]


async def _app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    raise AssertionError


@pytest.mark.parametrize("value", NOT_SECONDS, ids=repr)
def test_max_run_seconds_is_checked_when_given(value: Any) -> None:
    with pytest.raises(ConfigurationError) as raised:
        BackgroundRunCallers(_app, max_run_seconds=value)
    assert "max_run_seconds must be a number of seconds, above 0" in str(raised.value)
    assert raised.value.fix is not None
    assert "max_run_seconds=" in raised.value.fix


@pytest.mark.parametrize("value", ["60", math.nan, -5])
def test_install_checks_max_run_seconds_before_the_app_starts(value: Any) -> None:
    app = ResponsesHostServer(
        Agent(client=ScriptedChatClient(tool="none")), configure_observability=None
    )
    with pytest.raises(ConfigurationError, match="max_run_seconds"):
        install(app, max_run_seconds=value)


def test_good_values_are_kept() -> None:
    assert BackgroundRunCallers(_app, max_run_seconds=90).max_run_seconds == 90.0
    assert BackgroundRunCallers(_app, max_run_seconds=0.5).max_run_seconds == 0.5
    options = PoolOptions(max_connections=3, idle_timeout=2)
    assert (options.max_connections, options.idle_timeout) == (3, 2.0)
    assert PoolOptions() == PoolOptions(max_connections=256, idle_timeout=300.0)


@pytest.mark.parametrize("value", NOT_SECONDS, ids=repr)
def test_pool_idle_timeout_is_checked_when_given(value: Any) -> None:
    with pytest.raises(ConfigurationError) as raised:
        PoolOptions(idle_timeout=value)
    assert "idle_timeout must be a number of seconds, above 0" in str(raised.value)
    assert raised.value.fix is not None


@pytest.mark.parametrize("value", ["5", 2.5, math.nan, True, None, 0, -1], ids=repr)
def test_pool_max_connections_is_checked_when_given(value: Any) -> None:
    with pytest.raises(ConfigurationError) as raised:
        PoolOptions(max_connections=value)
    assert "max_connections must be a whole number, at least 1" in str(raised.value)
    assert raised.value.fix is not None
    assert "max_connections=" in raised.value.fix


@pytest.mark.parametrize("value", [None, 0, 1, "yes", {"max_connections": 4}], ids=repr)
def test_per_user_is_true_false_or_pool_options(idp: EntraEmulator, value: Any) -> None:
    with pytest.raises(ConfigurationError) as raised:
        entra_mcp_tool(
            "records",
            "https://mcp.example.com/mcp",
            chain=make_chain(idp),
            scopes=mcp_scopes(idp),
            per_user=value,
        )
    assert "per_user must be True, False or a PoolOptions" in str(raised.value)
    assert raised.value.fix is not None


def test_per_user_accepted_values(idp: EntraEmulator) -> None:
    def make(per_user: Any) -> Any:
        return entra_mcp_tool(
            "records",
            "https://mcp.example.com/mcp",
            chain=make_chain(idp),
            scopes=mcp_scopes(idp),
            per_user=per_user,
        )

    assert isinstance(make(False), EntraMCPTool)
    assert isinstance(make(True), EntraMCPToolPool)
    pool = make(PoolOptions(max_connections=2))
    assert isinstance(pool, EntraMCPToolPool)
    assert pool.options.max_connections == 2
