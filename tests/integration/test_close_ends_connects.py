"""``close()`` and ``pool.aclose()`` end what the tool is doing, with agent-framework-core 1.23
and 1.26 alike: a connect retrying a busy or refused server stops (the waiting run or call fails
saying the tool was closed, and nothing more is sent; before, the connect woke up after close()
had returned, connected, and ran the waiting call); a close queued behind a slow catalog refresh
ends that refresh and drains the calls admitted meanwhile under its exclusive access (before,
1.26 waited up to 30 s for the refresh, then closed under a call it had admitted with no drain,
which said "the connection was lost"). And a catalog subscription (``subscriptions/listen``)
that ends is reopened only when a token can be applied to it (before, a shared tool under
``user_only`` sent a reopen with no token, refused 401, every ~2 s for the connection's life).

Real components: the emulator and MSAL behind ``EntraMCPTool``, a real MCP server under uvicorn
behind an ASGI wrapper that answers, delays or cuts the chosen requests and records when every
POST arrived."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

import pytest
from agent_framework.exceptions import ToolException

from _support.mcp_world import (
    Recorder,
    agent_token,
    build_mcp_app,
    make_chain,
    mcp_scopes,
    read_json_request,
)
from _support.servers import ServerThread
from entra_passthrough import bind_caller
from entra_passthrough.agent_framework import CallOutcomeUnknown, entra_mcp_tool
from entra_passthrough.agent_framework import _tool as tool_module
from entra_passthrough.server import current_user
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

pytestmark = [pytest.mark.slow]

#: How long the slow tool runs, and the drain bound the tests set.
HOLD = 15.0
DRAIN = 1.0


class Wire:
    """What the wrapper does to POSTs, by JSON-RPC method: answer a queue of (status,
    Retry-After) itself, delay them, or (``subscriptions/listen``) end the stream after a while;
    and when each POST arrived (every one, whoever answered it)."""

    def __init__(self) -> None:
        self.answers: dict[str, list[tuple[int, str]]] = {}
        self.delay: dict[str, float] = {}
        self.cut_listen_after: float | None = None
        self.posts: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def after(self, moment: float) -> list[str]:
        with self.lock:
            return [rpc for rpc, at in self.posts if at > moment]


def _wired(app: Any, wire: Wire) -> Any:
    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        parsed, replay = await read_json_request(receive)
        rpc = parsed.get("method") if isinstance(parsed, dict) else None
        rpc = rpc if isinstance(rpc, str) else ""
        with wire.lock:
            wire.posts.append((rpc, time.monotonic()))
        queued = wire.answers.get(rpc)
        if queued:
            status, retry_after = queued.pop(0)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"text/html"),
                        (b"retry-after", retry_after.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"<html>restarting</html>"})
            return
        if rpc in wire.delay:
            await asyncio.sleep(wire.delay[rpc])
        if rpc == "subscriptions/listen" and wire.cut_listen_after is not None:
            ended = False

            async def until_cut(message: Any) -> None:
                if not ended:
                    await send(message)

            task = asyncio.ensure_future(app(scope, replay, until_cut))
            await asyncio.sleep(wire.cut_listen_after)
            if not task.done():
                ended = True
                task.cancel()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await app(scope, replay, send)

    return wrapper


def _tools(server: Any) -> None:
    @server.tool()
    async def slow(who: str = "") -> str:
        """Runs HOLD seconds."""
        await asyncio.sleep(HOLD)
        return json.dumps({"oid": current_user().oid, "who": who})


def _serve(
    idp: EntraEmulator, wire: Wire, executions: list[tuple[str, str]], **kw: Any
) -> tuple[ServerThread, Recorder]:
    recorder = Recorder()
    server = ServerThread(
        lambda base: _wired(
            build_mcp_app(
                idp,
                base_url=base,
                recorder=recorder,
                executions=executions,
                extra_tools=_tools,
                **kw,
            ),
            wire,
        ),
        name="mcp",
    ).start()
    return server, recorder


def _app_source(idp: EntraEmulator) -> Any:
    """The app's own identity (the emulator's managed identity), for ``lifecycle_app=True``."""
    from entra_passthrough import ManagedIdentity

    env = idp.mi_env()
    return ManagedIdentity(
        client_id=idp.managed_identity.client_id,
        endpoint=env["IDENTITY_ENDPOINT"],
        header=env["IDENTITY_HEADER"],
    )


def _said_closed(error: BaseException) -> bool:
    return isinstance(error, ToolException) and "the tool was closed" in str(error)


@pytest.mark.parametrize("per_user", [False, True], ids=["shared", "pool"])
async def test_close_during_a_connect_retry_stops_it(
    idp: EntraEmulator, users: list[User], per_user: bool
) -> None:
    """The connect's tools/list is answered 503 (Retry-After: 1) twice; ``close()`` (or
    ``pool.aclose()``) comes while the connect sleeps. It sends nothing more, the run waiting on
    it fails at once saying the tool was closed, the tool is not connected, and nothing ran."""
    wire = Wire()
    wire.answers["tools/list"] = [(503, "1"), (503, "1")]
    executions: list[tuple[str, str]] = []
    server, _ = _serve(idp, wire, executions)
    url = f"{server.base}/mcp"
    chain, scopes = make_chain(idp), mcp_scopes(idp)
    pool = entra_mcp_tool("records", url, chain=chain, scopes=scopes, per_user=True)
    outcome: dict[str, Any] = {}
    try:
        with bind_caller(token=agent_token(idp, users[0])):
            if per_user:
                tool = await pool.tool()
            else:
                tool = entra_mcp_tool("records", url, chain=chain, scopes=scopes)

            async def run() -> None:
                try:
                    async with tool:
                        outcome["result"] = await tool.call_tool("whoami", who="after-close")
                except Exception as exc:
                    outcome["error"] = exc

            running = asyncio.create_task(run())
            # Until the connect's first tools/list was answered 503: then inside its 1 s
            # Retry-After (polled, bounded: a loaded machine connects and exchanges slower).
            for _ in range(200):
                if any(rpc == "tools/list" for rpc, _ in wire.posts):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)
            assert [rpc for rpc, _ in wire.posts if rpc == "tools/list"] == ["tools/list"]
            started = time.monotonic()
            if per_user:
                await pool.aclose()
            else:
                await tool.close()
            closed_at = time.monotonic()
            async with asyncio.timeout(10):
                await running
            ended_at = time.monotonic()
            await asyncio.sleep(2.0)  # past both Retry-Afters: would it connect again?
            after = wire.after(closed_at)
            connected = tool.is_connected
    finally:
        await pool.aclose()
        if not per_user:
            await tool.close()
        server.stop()
    assert closed_at - started < 1.0
    assert after == []  # before: discover, listen, tools/list twice, then the tools/call
    assert not connected
    assert executions == []
    assert "error" in outcome, outcome
    assert _said_closed(outcome["error"]), outcome
    assert "no tool ran" in str(outcome["error"])
    assert ended_at - closed_at < 0.5  # the retry's sleep ends with the close


async def test_close_during_an_opens_retry_on_a_refused_server_stops_it(
    idp: EntraEmulator, users: list[User]
) -> None:
    """The server refuses TCP (restarting) while the agent opens the tool; the host closes it
    during the connect's retry, then the server comes back: no connection is opened after
    ``close()`` returned (before, a live legacy session that nobody would close)."""
    wire = Wire()
    executions: list[tuple[str, str]] = []
    server, _ = _serve(idp, wire, executions, stateful=True)
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    server.stop()
    try:
        with bind_caller(token=agent_token(idp, users[1])):
            opening = asyncio.create_task(tool.connect())
            await asyncio.sleep(0.4)
            await tool.close()
            closed_at = time.monotonic()
            await asyncio.to_thread(server.start)
            async with asyncio.timeout(10):
                (opened,) = await asyncio.gather(opening, return_exceptions=True)
        await asyncio.sleep(0.5)
        connected = tool.is_connected
    finally:
        await tool.close()
        server.stop()
    assert wire.after(closed_at) == []
    assert not connected
    assert isinstance(opened, BaseException), opened
    assert _said_closed(opened), opened


async def _close_behind_a_slow_refresh(
    idp: EntraEmulator, users: list[User], tool_name: str, *, queued: float, gather: float
) -> tuple[float, object, object, list[tuple[str, str]]]:
    """agent-framework refreshes the tool list (as a user, here) and the server is slow to
    answer it (25 s); a call of ``tool_name`` arrives, ``queued`` seconds later ``close()``.
    (how long the close took, the refresh's outcome, the call's, what ran)."""
    wire = Wire()
    executions: list[tuple[str, str]] = []
    server, _ = _serve(idp, wire, executions)
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    try:
        with bind_caller(token=agent_token(idp, users[0])):
            await tool.connect()
            wire.delay["tools/list"] = 25.0
            refresh = asyncio.create_task(tool.load_tools())
            await asyncio.sleep(0.5)

            async def call() -> object:
                try:
                    return await tool.call_tool(tool_name, who="C")
                except Exception as exc:
                    return exc

            calling = asyncio.create_task(call())
            await asyncio.sleep(queued)
            started = time.monotonic()
            async with asyncio.timeout(60):
                await tool.close()
            took = time.monotonic() - started
            async with asyncio.timeout(gather):
                refreshed, called = await asyncio.gather(refresh, calling, return_exceptions=True)
    finally:
        wire.delay.clear()
        await tool.close()
        server.stop()
    return took, refreshed, called, executions


async def test_close_behind_a_slow_catalog_refresh_drains_the_call_admitted_meanwhile(
    idp: EntraEmulator, users: list[User], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long call arrives behind the slow refresh, then ``close()``. The close ends the
    refresh, takes the exclusive access, lets the calls sent meanwhile finish for the drain
    bound, and the call it cut off says the tool was closed (1.26 before: the close waited for
    the refresh, admitted the call, then closed under it at once: "the connection was lost
    after the request was sent")."""
    monkeypatch.setattr(tool_module, "_DRAIN_WAIT", DRAIN)
    took, refreshed, called, _ = await _close_behind_a_slow_refresh(
        idp, users, "slow", queued=0.3, gather=HOLD + 10
    )
    assert took < DRAIN + 3, took  # before (1.26): the refresh's 25 s, then no drain at all
    assert not isinstance(refreshed, BaseException), refreshed  # ended quietly by the close
    assert isinstance(called, ToolException), called
    assert "the tool was closed" in str(called), called
    if isinstance(called, CallOutcomeUnknown):
        # It was admitted and sent: the close let it run for the drain, then cut it off.
        assert f"after waiting {DRAIN:g} s" in str(called)
        assert took >= DRAIN - 0.2, took


async def test_a_call_sent_while_close_waits_for_a_refresh_is_drained(
    idp: EntraEmulator, users: list[User]
) -> None:
    """A fast call that was already waiting for admission behind a slow refresh when ``close()``
    came is let finish (the drain runs under the close's exclusive access), or not sent at all:
    never closed under without a drain."""
    took, _, called, executions = await _close_behind_a_slow_refresh(
        idp, users, "whoami", queued=0.2, gather=20
    )
    assert took < 5, took
    ran = [who for who, _ in executions]
    if ran:
        assert ran == ["C"]
        assert not isinstance(called, BaseException), called  # answered within the drain
    else:
        assert _said_closed(called), called  # not sent: says why


async def test_a_call_that_arrives_while_close_drains_is_not_sent_and_reopens_nothing(
    idp: EntraEmulator, users: list[User], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``close()`` lets a long call finish for the drain bound; a call that arrives meanwhile
    is not sent (it says the tool was closed) and does not reconnect the tool after the close
    (before: it was admitted during the drain and ran; with a reconnect, it would open a
    connection that outlived ``close()``)."""
    monkeypatch.setattr(tool_module, "_DRAIN_WAIT", 2.0)
    wire = Wire()
    executions: list[tuple[str, str]] = []
    server, _ = _serve(idp, wire, executions)
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )

    async def call(name: str, who: str) -> object:
        try:
            return await tool.call_tool(name, who=who)
        except Exception as exc:
            return exc

    try:
        with bind_caller(token=agent_token(idp, users[2])):
            await tool.connect()
            long_call = asyncio.create_task(call("slow", "A"))
            await asyncio.sleep(0.5)  # A runs on the server
            closing = asyncio.create_task(tool.close())
            await asyncio.sleep(0.5)  # the close is draining
            late = await call("whoami", "B")
            async with asyncio.timeout(10):
                await closing
            closed_at = time.monotonic()
            cut = await long_call
        await asyncio.sleep(1.0)
        after = wire.after(closed_at)
        connected = tool.is_connected
    finally:
        await tool.close()
        server.stop()
    assert [who for who, _ in executions] == []  # whoami never ran (A is the slow tool)
    assert _said_closed(late), late
    assert "was not sent" in str(late)
    assert isinstance(cut, CallOutcomeUnknown), cut
    assert "the tool was closed" in str(cut), cut
    assert after == []
    assert not connected


@pytest.mark.parametrize("lifecycle_app", [False, True], ids=["user_only", "lifecycle_app"])
async def test_a_lost_catalog_subscription_is_reopened_only_with_a_token(
    idp: EntraEmulator,
    users: list[User],
    caplog: pytest.LogCaptureFixture,
    lifecycle_app: bool,
) -> None:
    """The server (or an ingress) ends the ``subscriptions/listen`` stream after 1 s. A shared
    tool under ``user_only`` has no token for a reopen outside a connect: it is not reopened
    (one INFO line says list changes are not followed until the next connect), never sent
    without a token. With ``lifecycle_app=True`` it is reopened as the app."""
    caplog.set_level(logging.INFO, logger="entra_passthrough")
    wire = Wire()
    wire.cut_listen_after = 1.0
    executions: list[tuple[str, str]] = []
    server, recorder = _serve(idp, wire, executions, json_response=False, allow_app=lifecycle_app)
    chain = make_chain(idp)
    if lifecycle_app:
        chain = type(chain)(
            [*chain.sources, _app_source(idp)], policy=chain.policy, lifecycle_app=True
        )
    tool = entra_mcp_tool("records", f"{server.base}/mcp", chain=chain, scopes=mcp_scopes(idp))
    try:
        with bind_caller(token=agent_token(idp, users[1])):
            await tool.connect()
            await tool.call_tool("whoami", who="A")
        await asyncio.sleep(6.0)  # before: a tokenless reopen every ~2 s
        seen = recorder.snapshot()
    finally:
        await tool.close()
        server.stop()
    listens = [s for s in seen if s.rpc == "subscriptions/listen"]
    assert all(s.oid is not None for s in seen if s.method == "POST"), seen
    assert all(s.status != 401 for s in listens), listens
    stopped = [
        r.getMessage()
        for r in caplog.records
        if "catalog subscription (subscriptions/listen) ended and is not reopened" in r.getMessage()
    ]
    tokenless_warnings = [
        r for r in caplog.records if r.levelno >= logging.WARNING and "no token" in r.getMessage()
    ]
    assert tokenless_warnings == []
    if lifecycle_app:
        assert len(listens) >= 2, listens  # reopened, with the app's token
        assert stopped == []
    else:
        assert len(listens) == 1, listens  # the connect's own, as the user
        assert len(stopped) == 1, stopped
        assert "not followed until the tool connects again" in stopped[0]
        assert "lifecycle_app=True" in stopped[0]


@pytest.mark.parametrize("per_user", [False, True], ids=["shared", "pool"])
async def test_close_while_the_connect_resolves_its_token_leaves_nothing_running(
    idp: EntraEmulator, users: list[User], per_user: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``close()`` while the first connect resolves its user's token (a slow OBO): the connect
    stops before anything is sent, and the tool's lifecycle task (which holds that user's
    caller) is never started: before, it stayed alive after close() returned."""
    wire = Wire()
    executions: list[tuple[str, str]] = []
    server, _ = _serve(idp, wire, executions)
    url = f"{server.base}/mcp"
    chain, scopes = make_chain(idp), mcp_scopes(idp)
    pool = entra_mcp_tool("records", url, chain=chain, scopes=scopes, per_user=True)
    try:
        with bind_caller(token=agent_token(idp, users[0])):
            tool = (
                await pool.tool()
                if per_user
                else entra_mcp_tool("records", url, chain=chain, scopes=scopes)
            )
            real = tool._entra_auth.acquire_async

            async def slow(*args: Any, **kwargs: Any) -> Any:
                await asyncio.sleep(1.0)  # Entra is slow to answer the connect's OBO
                return await real(*args, **kwargs)

            monkeypatch.setattr(tool._entra_auth, "acquire_async", slow)

            async def open_it() -> BaseException | None:
                try:
                    async with asyncio.timeout(20):
                        await tool.__aenter__()
                except Exception as exc:
                    return exc
                return None

            opening = asyncio.create_task(open_it())
            await asyncio.sleep(0.3)  # inside the token request
            if per_user:
                await pool.aclose()
            else:
                await tool.close()
            error = await opening
            await asyncio.sleep(0.2)
            assert error is not None
            assert _said_closed(error), repr(error)
            assert not tool.is_connected
            lifecycle = getattr(tool, "_lifecycle_owner_task", None)
            assert lifecycle is None or lifecycle.done()
            assert wire.posts == []
            assert executions == []
    finally:
        await pool.aclose()
        server.stop()


async def test_a_close_that_is_refused_stops_nothing(
    idp: EntraEmulator, users: list[User], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close agent-framework refuses (1.26: awaited from inside a call's own operation) must
    not count as one: before, it had already marked the tool closed, and another call then
    failed "the tool was closed" for a close that never happened."""
    wire = Wire()
    executions: list[tuple[str, str]] = []
    server, _ = _serve(idp, wire, executions)
    url = f"{server.base}/mcp"
    tool = entra_mcp_tool("records", url, chain=make_chain(idp), scopes=mcp_scopes(idp))
    try:
        with bind_caller(token=agent_token(idp, users[0])):
            async with tool:

                def refuse() -> None:
                    raise RuntimeError("not from inside a call (as agent-framework 1.26 says)")

                monkeypatch.setattr(tool, "check_exclusive_allowed", refuse)
                with pytest.raises(RuntimeError):
                    await tool.close()
                monkeypatch.undo()
                assert tool.is_connected
                await tool.call_tool("whoami", who="after")
                assert [who for who, _ in executions] == ["after"]
    finally:
        await tool.close()
        server.stop()
