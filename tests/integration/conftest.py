"""Fixtures: one emulator (with synthetic users) per module, a recording MCP server per test,
and a ResponsesHostServer factory whose state goes to the test's tmp_path."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mcp import MCPDeprecationWarning

from _support.mcp_world import Recorder, ServerThread, build_mcp_app, world_with_users
from _support.sizes import SOAK
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

#: test_isolation.py uses USERS (32; 200 with ENTRA_SOAK=1) of them, and two more.
N_USERS = 206 if SOAK else 38


@pytest.fixture(scope="module")
def idp_users() -> Iterator[tuple[EntraEmulator, list[User]]]:
    world, users = world_with_users(N_USERS)
    with EntraEmulator(world=world) as idp:
        yield idp, users


@pytest.fixture
def idp(idp_users: tuple[EntraEmulator, list[User]]) -> EntraEmulator:
    return idp_users[0]


@pytest.fixture
def users(idp_users: tuple[EntraEmulator, list[User]]) -> list[User]:
    return idp_users[1]


@pytest.fixture(autouse=True)
def _legacy_ping_is_expected() -> None:
    # agent-framework pings legacy (mcp 1.x-style) sessions and mcp 2.3 warns that ping is gone
    # in protocol 2026-07-28. Under filterwarnings=error that warning would fail every ping
    # (in the host's thread too) and force a reconnect: ignore it, it is not ours.
    warnings.filterwarnings("ignore", message="ping is removed", category=MCPDeprecationWarning)


@pytest.fixture(autouse=True)
def _state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSERVER_STATE_ROOT", str(tmp_path / "agentserver"))


@pytest.fixture
def mcp_server(idp: EntraEmulator) -> Iterator[Callable[..., tuple[ServerThread, Recorder]]]:
    started: list[ServerThread] = []

    def start(*, stateful: bool = False, allow_app: bool = False) -> tuple[ServerThread, Recorder]:
        recorder = Recorder()
        server = ServerThread(
            lambda base: build_mcp_app(
                idp, base_url=base, recorder=recorder, stateful=stateful, allow_app=allow_app
            ),
            name="mcp",
        ).start()
        started.append(server)
        return server, recorder

    yield start
    for server in started:
        server.stop()
