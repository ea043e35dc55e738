"""Churn suite fixtures: an emulator per lifetime setting, a recording MCP server that also logs
every execution of its tool, and the quick/full sizes (``ENTRA_SOAK=1``: ``make soak``)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from _support.mcp_world import (  # the autouse fixtures apply to this package
    Recorder,
    agentserver_state_root,  # noqa: F401
    build_mcp_app,
    legacy_ping_is_expected,  # noqa: F401
    read_json_request,
    world_with_users,
)
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
    return Size(200, 100, 64, 2) if SOAK else Size(16, 2, 8, 2)


#: Quick in ``make test`` (a few seconds each); full in ``make soak``. The quick size still has
#: calls in flight at every restart and crash, pool bounds far below the user count, and
#: tokens that expire mid-run: each test counts the events it is about (printed with -rP).
SIZE = _size()

#: The per-user pool cases bounded far below the user count (1 or 4 connections for 200 users):
#: there every call opens a new MCP session (discover, initialize, initialized, GET stream, ping,
#: tools/list, the call, DELETE: 8 requests; ~50 ms of this process's CPU per call against ~25 ms
#: on a kept connection, measured at 100 users x 20 calls). At full size they run 25 calls per
#: user, 5,000 new sessions per case; at 100 each case took ~17 min of CPU (20,000 sessions) and
#: make soak never ended. The per-user pool at 200 x 100 is tests/integration/test_isolation.py.
POOL_SIZE = replace(SIZE, calls_per_user=min(SIZE.calls_per_user, 25))

#: The per-user pool with short tokens: quick, as many users as the pool's bound (4), so that
#: their connections are kept and outlive their tokens (with more users than the bound, each
#: connection is closed for another user's within a token's lifetime); full: ``POOL_SIZE``.
POOL_TOKEN_SIZE = POOL_SIZE if SOAK or os.environ.get("ENTRA_CHURN_SIZE") else Size(4, 6, 4, 2)


class CrashPoint:
    """Makes "a crash with calls in flight" certain, however loaded the machine: once armed,
    the server instance running at that moment withholds its answers to the ``tools/call``
    requests it has run (they ran, the client has no answer yet); ``crash_after_a_held_call``
    then waits (bounded) until at least one is held and restarts the server without waiting for
    them. The next instance answers normally. ``after_headers``: the answers' headers go out
    and their bodies are withheld (an SSE answer cut off mid-stream, after the tool ran)."""

    def __init__(self, *, after_headers: bool = False) -> None:
        self._withheld = "http.response.body" if after_headers else "http.response.start"
        self._lock = threading.Lock()
        self._generation = 0
        self._armed: int | None = None
        self._held = threading.Event()
        self.held = 0  # answers withheld, over every crash

    def wrap(self, app: Any) -> Any:
        """``app`` for one server instance (called on every start)."""
        with self._lock:
            self._generation += 1
            generation = self._generation

        async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["method"] != "POST":
                await app(scope, receive, send)
                return
            parsed, replay = await read_json_request(receive)
            is_call = isinstance(parsed, dict) and parsed.get("method") == "tools/call"
            first = {"http.response.start": True, "http.response.body": True}

            async def withholding(message: dict[str, Any]) -> None:
                # Only an answer's first message of the kind: a later body message (the end of
                # a stream whose result already went out) withheld would count as a held call
                # that the client has its answer for.
                is_first = first.get(message["type"], False)
                first[message["type"]] = False
                if is_call and is_first and message["type"] == self._withheld:
                    with self._lock:
                        hold = self._armed == generation
                        if hold:
                            self.held += 1
                    if hold:
                        self._held.set()
                        await asyncio.Event().wait()  # until the crash cancels this request
                await send(message)

            await app(scope, replay, withholding)

        return wrapper

    def crash_after_a_held_call(self, server: ServerThread, *, timeout: float = 60.0) -> None:
        with self._lock:
            self._held.clear()
            self._armed = self._generation
        self._held.wait(timeout)  # bounded: the test then fails on its count of cut-off calls
        server.restart()  # the new instance is not armed


@dataclass(frozen=True)
class Bearer:
    """A request that reached the MCP server with a user's token."""

    at: float  # time.time() when it arrived (the clock of the token's exp)
    oid: str
    exp: float  # the token's exp
    jti: str  # the token's id (uti/jti): a token told apart from the next one of its user
    session: str | None  # mcp-session-id sent


class BearerLog:
    """Notes the token of every request that reaches the MCP server (decoded unverified: the
    server verifies it): the evidence that tokens expired during a run and were replaced."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: list[Bearer] = []

    def wrap(self, app: Any) -> Any:
        async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                self._note(scope.get("headers") or [])
            await app(scope, receive, send)

        return wrapper

    def _note(self, headers: list[tuple[bytes, bytes]]) -> None:
        found = dict((name.lower(), value.decode("latin-1")) for name, value in headers)
        scheme, _, token = found.get(b"authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.count(".") != 2:
            return
        payload = token.split(".")[1]
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except ValueError:
            return
        bearer = Bearer(
            at=time.time(),
            oid=str(claims.get("oid")),
            exp=float(claims.get("exp", 0)),
            jti=str(claims.get("uti") or claims.get("jti") or token[-16:]),
            session=found.get(b"mcp-session-id"),
        )
        with self._lock:
            self.seen.append(bearer)

    def wait_until_seen_tokens_expired(self, timeout: float = 30.0) -> None:
        """Sleeps until every token seen so far has expired (bounded): the requests sent next
        need new ones, on connections the earlier requests opened."""
        with self._lock:
            latest = max((b.exp for b in self.seen), default=0.0)
        time.sleep(max(0.0, min(timeout, latest + 0.05 - time.time())))

    def replaced_after_expiry(self) -> int:
        """Requests that carried a new token of their user after an earlier token of that user
        had expired: a token expired mid-run and the next request did not reuse it."""
        with self._lock:
            seen = list(self.seen)
        earliest_exp: dict[str, float] = {}
        count = 0
        for bearer in seen:
            first = earliest_exp.setdefault(bearer.oid, bearer.exp)
            if bearer.at > first and bearer.exp > first:
                count += 1
        return count

    def sessions_outliving_a_token(self) -> int:
        """Sessions (legacy, pooled) that carried a request after the token of their first
        request had expired: a pooled connection outlived its user's token."""
        with self._lock:
            seen = list(self.seen)
        first_exp: dict[str, float] = {}
        outliving: set[str] = set()
        for bearer in seen:
            if bearer.session is None:
                continue
            first = first_exp.setdefault(bearer.session, bearer.exp)
            if bearer.at > first:
                outliving.add(bearer.session)
        return len(outliving)


@dataclass
class McpUnderTest:
    server: ServerThread
    recorder: Recorder
    executions: list[tuple[str, str]] = field(default_factory=list)
    crash: CrashPoint = field(default_factory=CrashPoint)
    bearers: BearerLog = field(default_factory=BearerLog)


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


@pytest.fixture
def start_mcp() -> Iterator[Callable[..., McpUnderTest]]:
    started: list[ServerThread] = []

    def start(
        idp: EntraEmulator,
        *,
        stateful: bool = False,
        graceful: float = 1.0,
        json_response: bool = True,
        crash_after_headers: bool = False,
    ) -> McpUnderTest:
        recorder = Recorder()
        executions: list[tuple[str, str]] = []
        crash = CrashPoint(after_headers=crash_after_headers)
        bearers = BearerLog()
        server = ServerThread(
            lambda base: bearers.wrap(
                crash.wrap(
                    build_mcp_app(
                        idp,
                        base_url=base,
                        recorder=recorder,
                        stateful=stateful,
                        executions=executions,
                        json_response=json_response,
                    )
                )
            ),
            name="mcp",
            graceful=graceful,
        ).start()
        started.append(server)
        return McpUnderTest(server, recorder, executions, crash, bearers)

    yield start
    for server in started:
        server.stop()
