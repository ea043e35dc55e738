"""At most once, and never without its arguments, for three ways a ``tools/call`` was lost or
misread (a churn probe found each): a tool's own error whose text names a session, a call made
while the tool's first connect was still loading its tool list, and an SSE answer (the mcp
SDK's default response mode) cut off after the tool started running.

Real components throughout: the emulator over HTTPS, OBO through MSAL, a real ``MCPServer``
under uvicorn that counts every execution of its tools, and agent-framework's
``MCPStreamableHTTPTool`` through ``EntraMCPTool``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx2
import pytest
import requests
from agent_framework.exceptions import ToolException
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from _support.mcp_world import (
    ASGI,
    Recorder,
    agent_token,
    build_mcp_app,
    calls,
    make_chain,
    mcp_scopes,
    read_json_request,
)
from _support.servers import ServerThread
from entra_passthrough import OnBehalfOf, TokenChain, bind_caller
from entra_passthrough.agent_framework import CallOutcomeUnknown, entra_mcp_tool
from entra_passthrough.server import current_user
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

pytestmark = [
    pytest.mark.slow,
    # A server stopped with a call in flight leaves uvicorn's cancelled connection to the GC.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning"
    ),
]

#: Bound of every wait on the server's side (a gate a test forgot to open ends here).
GATE_BOUND = 30.0


class Mcp:
    """A recording MCP server that counts executions, started and stopped by the test."""

    def __init__(self, idp: EntraEmulator, **options: Any) -> None:
        self.recorder = Recorder()
        self.executions: list[tuple[str, str]] = []
        self.wrap: Callable[[ASGI], ASGI] = options.pop("wrap", lambda app: app)
        graceful = options.pop("graceful", 1.0)
        self.server = ServerThread(
            lambda base: self.wrap(
                build_mcp_app(
                    idp,
                    base_url=base,
                    recorder=self.recorder,
                    executions=self.executions,
                    **options,
                )
            ),
            name="mcp",
            graceful=graceful,
        )

    @property
    def url(self) -> str:
        return f"{self.server.base}/mcp"

    def ran(self, who: str) -> int:
        return Counter(w for w, _ in self.executions)[who]


@pytest.fixture
def start(idp: EntraEmulator) -> Iterator[Callable[..., Mcp]]:
    started: list[Mcp] = []

    def start(**options: Any) -> Mcp:
        mcp = Mcp(idp, **options)
        mcp.server.start()
        started.append(mcp)
        return mcp

    yield start
    for mcp in started:
        mcp.server.stop()


async def _until(predicate: Callable[[], bool], *, tries: int = 1000) -> bool:
    """Poll (bounded) until ``predicate()``; whether it came true."""
    for _ in range(tries):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


# --- 1. a tool's own error that says "Session not found" is its result, raised once -------------


def _session_erring_tool(executions: list[tuple[str, str]], message: str) -> Any:
    def register(server: MCPServer) -> None:
        @server.tool()
        async def close_browser_session(who: str = "", session_id: str = "") -> str:
            """Closes a browser session it manages (its own notion of a session)."""
            executions.append((who, current_user().oid))
            # It did its work, then reports that its (browser) session is gone: a JSON-RPC
            # error after running (HTTP 200 on a legacy session, 400 from a modern server).
            raise MCPError(INVALID_PARAMS, message.format(session_id=session_id))

    return register


@pytest.mark.parametrize(
    ("stateful", "json_response"),
    [(False, True), (True, True), (True, False)],
    ids=["modern-json", "legacy-json", "legacy-sse"],
)
@pytest.mark.parametrize(
    "message",
    [
        "Session not found: browser session {session_id!r} already closed",
        "Session terminated by the browser ({session_id})",
    ],
    ids=["not-found", "terminated"],
)
async def test_a_tool_error_that_names_a_session_runs_once(
    idp: EntraEmulator,
    users: list[User],
    start: Callable[..., Mcp],
    stateful: bool,
    json_response: bool,
    message: str,
) -> None:
    executions: list[tuple[str, str]] = []
    mcp = start(
        stateful=stateful,
        json_response=json_response,
        extra_tools=_session_erring_tool(executions, message),
    )
    tool = entra_mcp_tool("records", mcp.url, chain=make_chain(idp), scopes=mcp_scopes(idp))
    try:
        async with bind_caller(token=agent_token(idp, users[0])):
            await tool.call_tool("whoami", who="warm")
            with pytest.raises(ToolException) as raised:
                await tool.call_tool("close_browser_session", who="once-only", session_id="42")
            after = await tool.call_tool("whoami", who="after")
    finally:
        await tool.close()
    seen = mcp.recorder.snapshot()
    sent = [s for s in calls(seen) if s.caller_tag == "once-only"]
    assert [who for who, _ in executions] == ["once-only"], (len(sent), raised.value)
    assert len(sent) == 1
    # The tool's own failure, not "may have run", and the connection was kept: the session
    # was never refused, so nothing reconnected.
    assert not isinstance(raised.value, CallOutcomeUnknown)
    connects = Counter(s.rpc for s in seen)["initialize" if stateful else "server/discover"]
    assert connects == 1, Counter(s.rpc for s in seen)
    assert mcp.ran("after") == 1, after


# --- 2. a call made during the first connect goes out with its arguments -----------------------


def _held_tools_list(seen: threading.Event, gate: threading.Event) -> Callable[[ASGI], ASGI]:
    """The server answers ``tools/list`` only once ``gate`` is set (bounded); ``seen`` is set
    when one arrives."""

    def wrap(app: ASGI) -> ASGI:
        async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["method"] != "POST":
                await app(scope, receive, send)
                return
            parsed, replay = await read_json_request(receive)
            if isinstance(parsed, dict) and parsed.get("method") == "tools/list":
                seen.set()
                await asyncio.to_thread(gate.wait, GATE_BOUND)
            await app(scope, replay, send)

        return wrapper

    return wrap


class _HeldTokenRequests(requests.Session):
    """MSAL's HTTP session: once ``hold`` is set, a token request sets ``waiting`` and waits
    (bounded) until ``release`` is set; ``answered`` is set when its answer is in."""

    def __init__(self, base: requests.Session) -> None:
        super().__init__()
        self.verify = base.verify
        self.cert = base.cert
        self.trust_env = base.trust_env
        self.proxies = base.proxies
        self.hold = threading.Event()
        self.waiting = threading.Event()
        self.release = threading.Event()
        self.answered = threading.Event()

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        held = self.hold.is_set() and (request.url or "").endswith("/token")
        if held:
            self.waiting.set()
            self.release.wait(GATE_BOUND)
        response = super().send(request, **kwargs)
        if held:
            self.answered.set()
        return response


async def test_a_call_made_during_the_first_connect_keeps_its_arguments(
    idp: EntraEmulator, users: list[User], start: Callable[..., Mcp]
) -> None:
    """B's call passes the "is a connect running?" check before any connect started, then
    waits for its token exchange. Meanwhile A's call connects the tool; its ``tools/list`` is
    held, so the connection is up with no tool schema yet. B's exchange is answered only then.
    B's ``tools/call`` must wait for the tool list: sent before it, agent-framework strips
    every argument the (empty) schema does not declare and the tool runs with its defaults."""
    list_seen, list_gate = threading.Event(), threading.Event()
    mcp = start(wrap=_held_tools_list(list_seen, list_gate))
    session = _HeldTokenRequests(idp.msal_http_client())
    obo = OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.agent.secret,
        authority_host=idp.url,
        http_client=session,
        max_workers=8,
    )
    tool = entra_mcp_tool("records", mcp.url, chain=TokenChain([obo]), scopes=mcp_scopes(idp))
    a, b = users[0], users[1]
    token_a, token_b = agent_token(idp, a), agent_token(idp, b)

    async def call(token: str, who: str) -> Any:
        async with bind_caller(token=token):
            return await tool.call_tool("whoami", who=who)

    try:
        async with bind_caller(token=token_a):  # A's MCP token is cached: A never waits
            await tool.auth.acquire_async(call=True)
        session.hold.set()
        call_b = asyncio.create_task(call(token_b, "B-arg"))
        assert await _until(session.waiting.is_set)  # B is in its token exchange (held)
        call_a = asyncio.create_task(call(token_a, "A-arg"))
        assert await _until(list_seen.is_set), "A's connect never listed the tools"
        session.release.set()  # B's exchange goes on now that A's connection is up
        assert await _until(session.answered.is_set)
        # Before the fix, B's tools/call reached the server now, while tools/list was held.
        await _until(lambda: any(s.oid == b.oid for s in calls(mcp.recorder.snapshot())))
        list_gate.set()
        results = await asyncio.gather(call_a, call_b, return_exceptions=True)
    finally:
        list_gate.set()
        session.release.set()
        await tool.close()
    sent = calls(mcp.recorder.snapshot())
    assert all(s.caller_tag for s in sent), f"tools/call without its arguments: {sent}"
    assert sorted(mcp.executions) == sorted([("A-arg", a.oid), ("B-arg", b.oid)]), results
    assert not [r for r in results if isinstance(r, BaseException)], results


async def test_a_call_to_a_tool_the_server_does_not_list_is_not_sent(
    idp: EntraEmulator, users: list[User], start: Callable[..., Mcp]
) -> None:
    mcp = start()
    tool = entra_mcp_tool("records", mcp.url, chain=make_chain(idp), scopes=mcp_scopes(idp))
    try:
        async with bind_caller(token=agent_token(idp, users[2])):
            await tool.call_tool("whoami", who="warm")
            with pytest.raises(ToolException) as raised:
                await tool.call_tool("not_a_tool", who="nowhere")
    finally:
        await tool.close()
    assert [s for s in calls(mcp.recorder.snapshot()) if s.tool == "not_a_tool"] == []
    assert type(raised.value).__name__ == "ToolNotListed", raised.value
    assert "not_a_tool" in str(raised.value)
    assert "whoami" in str(raised.value)  # what the server does list
    assert "Fix:" in str(raised.value)


# --- 3. an SSE answer lost after the tool started: "may have run", never resent ---------------


async def test_an_sse_answer_cut_off_mid_run_may_have_run(
    idp: EntraEmulator, users: list[User], start: Callable[..., Mcp]
) -> None:
    """A legacy server answering with SSE (its headers go out when the call arrives, the
    result when the tool returns) stops, cutting its connections, while the tool runs. The
    call ran and its answer is lost: ``CallOutcomeUnknown``, not resent. The next call finds
    the session gone (404) and reconnects by itself."""
    gate = threading.Event()
    mcp = start(stateful=True, json_response=False, gate=gate, graceful=0.01)
    tool = entra_mcp_tool("records", mcp.url, chain=make_chain(idp), scopes=mcp_scopes(idp))
    token = agent_token(idp, users[3])
    try:
        async with bind_caller(token=token):
            gate.set()
            await tool.call_tool("whoami", who="warm")
            gate.clear()
            victim = asyncio.create_task(tool.call_tool("whoami", who="victim"))
            assert await _until(lambda: mcp.ran("victim") == 1)
            await asyncio.to_thread(mcp.server.restart)  # a crash, as the client sees it
            gate.set()
            outcome = (await asyncio.gather(victim, return_exceptions=True))[0]
            after = await tool.call_tool("whoami", who="after")
    finally:
        gate.set()
        await tool.close()
    assert isinstance(outcome, CallOutcomeUnknown), repr(outcome)
    assert "may have run" in str(outcome)
    assert mcp.ran("victim") == 1
    assert len([s for s in calls(mcp.recorder.snapshot()) if s.caller_tag == "victim"]) == 1
    assert mcp.ran("after") == 1, after


async def test_an_sse_answer_slower_than_the_read_timeout_may_have_run(
    idp: EntraEmulator, users: list[User], start: Callable[..., Mcp]
) -> None:
    """The HTTP client's read timeout (2 s here) is shorter than the tool (held until the test
    ends): the answer's headers came, its body did not. The tool is running: "may have run".

    The server's first-request work (its signing keys, the session) is done first by a tool
    with the default timeout, and the short-timeout tool connects with the gate open, so only
    the held call can meet the read timeout, however loaded the machine is."""
    gate = threading.Event()
    gate.set()
    mcp = start(stateful=True, json_response=False, gate=gate)
    chain = make_chain(idp)
    warm = entra_mcp_tool("records", mcp.url, chain=chain, scopes=mcp_scopes(idp))
    tool = entra_mcp_tool(
        "records",
        mcp.url,
        chain=chain,
        scopes=mcp_scopes(idp),
        timeout=httpx2.Timeout(30.0, read=2.0),
    )
    try:
        async with bind_caller(token=agent_token(idp, users[4])):
            try:
                await warm.call_tool("whoami", who="warm")
            finally:
                await warm.close()
            await tool.call_tool("whoami", who="warm")
            gate.clear()
            with pytest.raises(ToolException) as raised:
                await tool.call_tool("whoami", who="slow")
    finally:
        gate.set()
        await tool.close()
    assert isinstance(raised.value, CallOutcomeUnknown), repr(raised.value)
    assert "read timeout" in str(raised.value)
    assert mcp.ran("slow") == 1
    assert len([s for s in calls(mcp.recorder.snapshot()) if s.caller_tag == "slow"]) == 1


# --- 4. one answer cut off mid-body fails that call alone ----------------------------------------


class _Died(Exception):
    """The server's handler dying after half of one answer's body went out."""


def _slow_tool(executions: list[tuple[str, str]]) -> Any:
    def register(server: MCPServer) -> None:
        @server.tool()
        async def slow_whoami(who: str = "", hold: float = 0.0) -> str:
            """Says who called, after ``hold`` seconds."""
            executions.append((who, current_user().oid))
            await asyncio.sleep(min(hold, GATE_BOUND))
            return f"{who} {current_user().oid}"

    return register


Handler = Callable[[ASGI, dict[str, Any], Any, Any], Awaitable[None]]


def _for_who(prefix: str, handle: Handler) -> Callable[[ASGI], ASGI]:
    """Hand a POST whose ``tools/call`` argument ``who`` starts with ``prefix`` to ``handle``
    (the app, the scope, a ``receive`` replaying the body, the server's ``send``); the server
    answers every other request as usual."""

    def wrap(app: ASGI) -> ASGI:
        async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["method"] != "POST":
                await app(scope, receive, send)
                return
            parsed, replay = await read_json_request(receive)
            params = parsed.get("params") if isinstance(parsed, dict) else None
            who = str(((params or {}).get("arguments") or {}).get("who", ""))
            if who.startswith(prefix):
                await handle(app, scope, replay, send)
            else:
                await app(scope, replay, send)

        return wrapper

    return wrap


def _cut_bodies(prefix: str) -> Callable[[ASGI], ASGI]:
    """The answer to a ``tools/call`` whose ``who`` starts with ``prefix`` stops after half its
    body (the handler dies, the connection is cut): headers sent, body short."""

    async def cut(app: ASGI, scope: dict[str, Any], replay: Any, send: Any) -> None:
        async def cutting(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                body = message.get("body", b"")
                half = {"type": "http.response.body", "body": body[: len(body) // 2]}
                await send({**half, "more_body": True})
                raise _Died
            await send(message)

        await app(scope, replay, cutting)

    return _for_who(prefix, cut)


@pytest.mark.parametrize("stateful", [False, True], ids=["modern-json", "legacy-json"])
async def test_one_answer_cut_mid_body_fails_that_call_alone(
    idp: EntraEmulator, users: list[User], start: Callable[..., Mcp], stateful: bool
) -> None:
    """Three calls are running on the shared connection when a fourth's JSON answer is cut off
    after its headers. The fourth may have run (``CallOutcomeUnknown``); the three others, which
    the server ran and answered, get their results: the mcp SDK read a JSON answer outside any
    handler, so the cut tore the connection down under all four."""
    executions: list[tuple[str, str]] = []
    mcp = start(stateful=stateful, extra_tools=_slow_tool(executions), wrap=_cut_bodies("cut"))
    tool = entra_mcp_tool("records", mcp.url, chain=make_chain(idp), scopes=mcp_scopes(idp))
    # A legacy session belongs to the user who opened it: one user there.
    callers = [users[0]] * 4 if stateful else users[:4]

    async def call(user: User, who: str, hold: float) -> Any:
        async with bind_caller(token=agent_token(idp, user)):
            return await tool.call_tool("slow_whoami", who=who, hold=hold)

    try:
        async with bind_caller(token=agent_token(idp, callers[0])):
            await tool.call_tool("whoami", who="warm")
        others = [
            asyncio.create_task(call(user, f"other-{i}", 3.0)) for i, user in enumerate(callers[:3])
        ]
        assert await _until(lambda: len(executions) == 3)  # all three running on the server
        cut = await asyncio.gather(call(callers[3], "cut-3", 0.0), return_exceptions=True)
        answered = await asyncio.gather(*others, return_exceptions=True)
    finally:
        await tool.close()
    assert isinstance(cut[0], CallOutcomeUnknown), repr(cut[0])
    lost = [a for a in answered if isinstance(a, BaseException)]
    assert not lost, lost
    assert Counter(who for who, _ in executions) == {
        "other-0": 1,
        "other-1": 1,
        "other-2": 1,
        "cut-3": 1,
    }


# --- 5. a 404 on the session where it may come after the call ran ------------------------------


def _404_after_running(prefix: str) -> Callable[[ASGI], ASGI]:
    """A device in front of the server (a load balancer that retried the POST on a replica that
    does not know the session): the call runs, then the answer is a 404 "Session not found"."""

    async def refuse_after_running(
        app: ASGI, scope: dict[str, Any], replay: Any, send: Any
    ) -> None:
        async def swallow(message: dict[str, Any]) -> None:
            return None

        await app(scope, replay, swallow)  # the call runs; its answer is dropped
        error = {"code": -32600, "message": "Session not found"}
        body = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return _for_who(prefix, refuse_after_running)


async def test_a_404_on_the_session_is_not_resent_where_resends_are_off(
    idp: EntraEmulator,
    users: list[User],
    start: Callable[..., Mcp],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``ENTRA_PASSTHROUGH_MCP_RESEND_ON_RESET=false`` (a device between the agent and the
    server), a 404 on the session is not taken for "refused before it ran": the call may have
    run, and the tool reconnects for the next one."""
    monkeypatch.setenv("ENTRA_PASSTHROUGH_MCP_RESEND_ON_RESET", "false")
    mcp = start(stateful=True, wrap=_404_after_running("lb"))
    tool = entra_mcp_tool("records", mcp.url, chain=make_chain(idp), scopes=mcp_scopes(idp))
    try:
        async with bind_caller(token=agent_token(idp, users[0])):
            await tool.call_tool("whoami", who="warm")
            with pytest.raises(ToolException) as raised:
                await tool.call_tool("whoami", who="lb-once")
            after = await tool.call_tool("whoami", who="after")
    finally:
        await tool.close()
    assert isinstance(raised.value, CallOutcomeUnknown), repr(raised.value)
    assert "404" in str(raised.value)
    assert mcp.ran("lb-once") == 1
    assert mcp.ran("after") == 1, after
