"""Fixtures: one emulator (with synthetic users) per module, a recording MCP server per test,
and a ResponsesHostServer factory whose state goes to the test's tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from _support.mcp_world import (  # the autouse fixtures apply to this package
    Recorder,
    ServerThread,
    agentserver_state_root,  # noqa: F401
    build_mcp_app,
    legacy_ping_is_expected,  # noqa: F401
    world_with_users,
)
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
