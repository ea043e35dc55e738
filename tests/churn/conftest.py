"""Churn suite fixtures: an emulator per lifetime setting, a recording MCP server that also logs
every execution of its tool, and the quick/full sizes (``ENTRA_SOAK=1``: ``make soak``)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mcp import MCPDeprecationWarning

from _support.mcp_world import Recorder, build_mcp_app, world_with_users
from _support.servers import ServerThread
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import Lifetimes, User

SOAK = os.environ.get("ENTRA_SOAK", "") not in ("", "0")


@dataclass(frozen=True)
class Size:
    users: int
    calls_per_user: int
    concurrency: int
    restarts: int


def _size() -> Size:
    custom = os.environ.get("ENTRA_CHURN_SIZE", "")  # "users,calls_per_user,concurrency"
    if custom:
        users, calls, concurrency = (int(x) for x in custom.split(","))
        return Size(users, calls, concurrency, 2)
    return Size(200, 100, 64, 2) if SOAK else Size(30, 2, 16, 2)


#: Quick in ``make test`` (a few seconds each); full in ``make soak``.
SIZE = _size()


@dataclass
class McpUnderTest:
    server: ServerThread
    recorder: Recorder
    executions: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def idp_users() -> Iterator[tuple[EntraEmulator, list[User]]]:
    world, users = world_with_users(SIZE.users)
    with EntraEmulator(world=world) as idp:
        yield idp, users


@pytest.fixture(scope="module")
def short_idp_users() -> Iterator[tuple[EntraEmulator, list[User]]]:
    """Tokens for the MCP server live 3 s: they expire many times during a run."""
    world, users = world_with_users(SIZE.users)
    with EntraEmulator(world=world.with_lifetimes(Lifetimes(access_token=3))) as idp:
        yield idp, users


@pytest.fixture(autouse=True)
def _legacy_ping_is_expected() -> None:
    # As in tests/integration: mcp 2.3 warns that ping is gone in protocol 2026-07-28.
    warnings.filterwarnings("ignore", message="ping is removed", category=MCPDeprecationWarning)


@pytest.fixture(autouse=True)
def _state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSERVER_STATE_ROOT", str(tmp_path / "agentserver"))


@pytest.fixture
def start_mcp() -> Iterator[Callable[..., McpUnderTest]]:
    started: list[ServerThread] = []

    def start(
        idp: EntraEmulator, *, stateful: bool = False, hold: float = 0.0, graceful: float = 1.0
    ) -> McpUnderTest:
        recorder = Recorder()
        executions: list[tuple[str, str]] = []
        server = ServerThread(
            lambda base: build_mcp_app(
                idp,
                base_url=base,
                recorder=recorder,
                stateful=stateful,
                executions=executions,
                hold=hold,
            ),
            name="mcp",
            graceful=graceful,
        ).start()
        started.append(server)
        return McpUnderTest(server, recorder, executions)

    yield start
    for server in started:
        server.stop()
