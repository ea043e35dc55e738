"""Targeted tests for issue-level guarantees of the MCP tool and the per-user pool: leases are
counted from hand-out, the pool keys by the identity Entra issued (a forged token gets nothing),
a caller whose token cannot work makes no request, a shared tool notices a principal-bound
server, nothing is sent without a token, and a request's Caller ends with its response."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from agent_framework import Agent
from agent_framework.exceptions import ToolException, ToolExecutionException

from _support.mcp_world import (
    Recorder,
    ServerThread,
    agent_token,
    build_mcp_app,
    calls,
    host_app,
    make_chain,
    mcp_behind,
    mcp_scopes,
    read_json_request,
    respond,
    seen_oid,
    serve_asgi,
    tool_outputs,
)
from _support.servers import LoopbackHop
from entra_passthrough import TokenAcquisitionError, UserKey, bind_caller
from entra_passthrough._middleware import CallerMiddleware
from entra_passthrough.agent_framework import (
    EntraMCPToolPool,
    PoolOptions,
    entra_mcp_tool,
    entra_middleware,
)
from entra_passthrough.agent_framework._af_seams import public_failure_type
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.mcp import KEEPALIVE_EXPIRY, RESET_WINDOW, _CallGuard, call_attempt
from entra_passthrough.testing import FOUNDRY_AUDIENCE, EntraEmulator
from entra_passthrough.testing._world import User

Start = Callable[..., tuple[ServerThread, Recorder]]
URL = "https://mcp.contoso.com/mcp"


def _unsigned(**claims: Any) -> str:
    def seg(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'RS256', 'typ': 'JWT'})}.{seg(claims)}.c2lnbmF0dXJl"


def _pool(idp: EntraEmulator, **options: Any) -> EntraMCPToolPool:
    return entra_mcp_tool(
        "records",
        URL,
        chain=make_chain(idp),
        scopes=mcp_scopes(idp),
        per_user=PoolOptions(**options),
    )


def _agent(tool: Any) -> Agent:
    client = ScriptedChatClient(tool="whoami", input_argument="who")
    client.function_invocation_configuration["include_detailed_errors"] = True
    return Agent(client=client, tools=[tool], middleware=entra_middleware())


async def test_pool_never_evicts_a_connection_it_handed_out(
    idp: EntraEmulator, users: list[User]
) -> None:
    pool = _pool(idp, max_connections=1)
    try:
        async with bind_caller(token=agent_token(idp, users[0])):
            first = await pool.tool()  # handed out, not yet entered by the agent
        async with bind_caller(token=agent_token(idp, users[1])):
            second = await pool.tool()
        # Over the bound for a moment rather than closing a connection about to be used.
        assert not first.retired
        assert not second.retired
        assert len(pool) == 2
    finally:
        await pool.aclose()


async def test_pool_keys_by_the_identity_entra_issued(
    idp: EntraEmulator, users: list[User]
) -> None:
    victim = users[2]
    pool = _pool(idp)
    try:
        async with bind_caller(token=agent_token(idp, victim)) as caller:
            mine = await pool.tool()
            assert mine._lifecycle_caller is caller
        assert mine._pool_key == UserKey.for_entra_user(victim.tenant_id, victim.oid)
        # An unsigned token copying the victim's tid/oid: Entra refuses the exchange, so the
        # forger gets no token, no lease, and the victim's connection stays the victim's.
        forged = _unsigned(
            tid=victim.tenant_id,
            oid=victim.oid,
            aud=idp.agent.client_id,
            iss=f"https://sts.windows.net/{victim.tenant_id}/",
            exp=int(time.time()) + 3600,
            scp="access_as_user",
        )
        async with bind_caller(token=forged):
            lone = await pool.tool()
            assert lone is not mine
            assert lone._pool is None  # not pooled: its connect fails before any request
            public = public_failure_type()
            assert public is not None
            with pytest.raises(public) as refused:  # the shape the host shows its client
                await lone.connect()
            assert not lone.is_connected
        assert isinstance(refused.value.__cause__, TokenAcquisitionError)
        assert len(pool) == 1
        assert mine._pending == 1  # only the victim's own hand-out
    finally:
        await pool.aclose()


async def test_caller_whose_token_cannot_work_sends_nothing_and_is_told_why(
    idp: EntraEmulator, users: list[User], mcp_server: Start
) -> None:
    server, recorder = mcp_server()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    host = serve_asgi(host_app(_agent(tool)), name="host")
    foundry = idp.user_token(users[4], audience=FOUNDRY_AUDIENCE)
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=60) as client:
            # The very first request (it would trigger the connect) comes from a caller whose
            # token is for https://ai.azure.com: no request at all reaches the MCP server.
            refused = await client.post(
                "/responses",
                json={"input": "hi", "store": False},
                headers={"Authorization": f"Bearer {foundry}"},
            )
            assert recorder.snapshot() == []
            ok = await respond(client, agent_token(idp, users[5]), users[5].oid)
    finally:
        host.stop()
    assert refused.status_code == 200
    error = refused.json().get("error") or {}
    assert refused.json()["status"] == "failed"
    assert "internal server error" not in str(error.get("message", "")).lower()
    assert "ai.azure.com" in str(error.get("message", "")) or "audience" in str(error).lower()
    assert seen_oid(ok) == users[5].oid
    assert users[4].oid not in {s.oid for s in recorder.snapshot()}


async def test_shared_tool_detects_a_principal_bound_server(
    idp: EntraEmulator, users: list[User], mcp_server: Start
) -> None:
    server, recorder = mcp_server(stateful=True)
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    host = serve_asgi(host_app(_agent(tool)), name="host")
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=60) as client:
            payloads = [await respond(client, agent_token(idp, u), u.oid) for u in users[6:14]]
    finally:
        host.stop()
    seen = recorder.snapshot()
    # Never a reconnect per call: at most one retry as the second user, then every call
    # fails at once with a message that says to use the pool.
    assert Counter(s.rpc for s in seen)["initialize"] <= 2
    told = [p for p in payloads if "per_user=True" in " ".join(tool_outputs(p))]
    assert len(told) >= len(payloads) - 2
    assert all(s.oid == s.caller_tag for s in calls(seen) if s.status == 200)


async def test_nothing_is_sent_without_a_token() -> None:
    sent: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(200, json={"jsonrpc": "2.0", "id": 7, "result": {}})

    guard = _CallGuard(httpx2.MockTransport(handler))
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "x"}}
    async with httpx2.AsyncClient(transport=guard) as client:
        with call_attempt() as attempt:
            answer = await client.post("https://mcp.example/mcp", json=body)
        assert sent == []  # not sent
        assert attempt.not_sent == "no_token"
        assert not attempt.sent
        assert answer.json()["error"]["message"].startswith("entra_passthrough: not sent")
        assert answer.json()["id"] == 7
        # With a token it goes out, and is recorded as possibly reached.
        with call_attempt() as attempt:
            await client.post(
                "https://mcp.example/mcp", json=body, headers={"Authorization": "Bearer t"}
            )
        assert len(sent) == 1
        assert attempt.sent
        # Outside a call attempt the guard only forwards.
        await client.post("https://mcp.example/mcp", json=body)
        assert len(sent) == 2


async def test_connect_failure_is_never_sent_and_other_errors_may_have_reached() -> None:
    def refused(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    def cut(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadError("cut", request=request)

    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}}
    headers = {"Authorization": "Bearer t"}
    for handler, sent, why in ((refused, False, "connect"), (cut, True, None)):
        async with httpx2.AsyncClient(transport=_CallGuard(httpx2.MockTransport(handler))) as c:
            with call_attempt() as attempt:
                # Answered with a JSON-RPC error for this request: the transport survives.
                answer = await c.post("https://mcp.example/mcp", json=body, headers=headers)
        assert answer.json()["id"] == 1
        assert attempt.sent is sent
        assert attempt.not_sent == why


def test_a_call_answered_404_is_retried_even_when_the_sdk_says_connection_closed(
    idp: EntraEmulator,
) -> None:
    """The server refused the call's session (404) before running anything, but the SDK, whose
    connection the refusal closed, reports "Connection closed": the 404 the transport recorded
    for this very call decides (retry), not the SDK's wording (which alone means "may have
    run"). A transport error after the request was written stays "may have run"."""
    from mcp import MCPError
    from mcp_types import CONNECTION_CLOSED, ErrorData

    from entra_passthrough.mcp import CallAttempt

    tool = entra_mcp_tool("records", URL, chain=make_chain(idp), scopes=mcp_scopes(idp))
    closed = ToolExecutionException(
        "Connection closed",
        MCPError.from_error_data(ErrorData(code=CONNECTION_CLOSED, message="Connection closed")),
    )
    refused = CallAttempt(sent=True, status=404, on_session=True)
    assert tool._verdict(closed, refused, None, tool._generation) == "refused"
    # A 404 without a session is no session refusal: a modern server answers a handler's
    # METHOD_NOT_FOUND with 404 after running it.
    sessionless = CallAttempt(sent=True, status=404)
    assert tool._verdict(closed, sessionless, None, tool._generation) == "maybe_ran"
    cut = CallAttempt(sent=True, status=None, transport_error="ReadError")
    assert tool._verdict(closed, cut, None, tool._generation) == "maybe_ran"
    answered = CallAttempt(sent=True, status=200)
    assert tool._verdict(closed, answered, None, tool._generation) == "maybe_ran"


async def test_a_request_caller_ends_when_its_response_is_complete() -> None:
    states: list[bool] = []
    done = asyncio.Event()
    holder: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        from entra_passthrough import current_caller

        caller = current_caller()
        assert caller is not None
        holder["caller"] = caller
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        states.append(caller.active)
        await send({"type": "http.response.body", "body": b"b", "more_body": False})
        states.append(caller.active)  # the client has its answer: the caller is over
        done.set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    token = _unsigned(tid="t", oid="o", aud="a", exp=4_000_000_000)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
    }
    await CallerMiddleware(app)(scope, receive, send)
    assert done.is_set()
    assert states == [True, False]


@pytest.mark.parametrize("restarts", [1])
async def test_no_call_runs_twice_when_the_server_restarts_under_load(
    idp: EntraEmulator, users: list[User], mcp_server: Start, restarts: int
) -> None:
    """The shape of the issue's failure: calls in flight while the connection is replaced.
    Each call's ``who`` is unique; the server never saw one twice."""
    server, recorder = mcp_server()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    host = serve_asgi(host_app(_agent(tool)), name="host")
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=60) as client:

            async def one(i: int) -> dict[str, Any]:
                user = users[i % 10]
                token = agent_token(idp, user)
                answer = await client.post(
                    "/responses",
                    json={"input": user.oid, "store": False},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert answer.status_code == 200, (answer.status_code, answer.text[:300])
                payload: dict[str, Any] = answer.json()
                return payload

            first = asyncio.gather(*(one(i) for i in range(30)))
            await asyncio.sleep(0)  # let the burst start
            for _ in range(restarts):
                await asyncio.to_thread(server.restart)
            results = await first
    finally:
        host.stop()
    assert len(results) == 30
    seen = [s for s in calls(recorder.snapshot()) if s.status == 200]
    assert all(s.oid == s.caller_tag for s in seen)


async def test_a_call_the_old_server_still_answers_is_not_cut_off_by_a_restart_gap(
    idp: EntraEmulator, users: list[User], caplog: pytest.LogCaptureFixture
) -> None:
    """A server restarting gracefully (a gap: connection refused) while it still runs a call:
    a second call, refused at connect, waits and is sent again on the same connection instead
    of replacing it, so the first call's answer still arrives. Replacing the connection (the
    old behaviour) cut the first call off after it ran: "may have run" for a call the server
    answered. Both run exactly once."""
    recorder, executions, gate = Recorder(), list[tuple[str, str]](), threading.Event()
    server = ServerThread(
        lambda base: build_mcp_app(
            idp, base_url=base, recorder=recorder, executions=executions, gate=gate
        ),
        name="mcp",
        graceful=5,  # the old server waits (bounded) for the call it runs
    ).start()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    restart: asyncio.Task[None] | None = None
    try:
        async with bind_caller(token=agent_token(idp, users[0])):
            await tool.connect()
            first = asyncio.create_task(tool.call_tool("whoami", who="first"))
            for _ in range(3000):  # bounded: until the server runs the first call
                if executions:
                    break
                await asyncio.sleep(0.01)
            assert executions == [("first", users[0].oid)]
            restart = asyncio.create_task(asyncio.to_thread(server.restart))
            for _ in range(3000):  # until the old server stopped listening (the gap)
                if not _listening(server.port):
                    break
                await asyncio.sleep(0.01)
            caplog.set_level(logging.INFO, logger="entra_passthrough")
            second = asyncio.create_task(tool.call_tool("whoami", who="second"))
            for _ in range(3000):  # until the second call was refused at connect once
                if any("call not sent" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.01)
            assert not first.done()
            gate.set()  # the old server answers the first call, stops, and starts again
            answers = [_text(await first), _text(await second)]
            await restart
    finally:
        gate.set()
        if restart is not None:
            await asyncio.gather(restart, return_exceptions=True)
        await tool.close()
        server.stop()
    assert [json.loads(json.loads(a)["result"])["who"] for a in answers] == ["first", "second"]
    assert sorted(executions) == [("first", users[0].oid), ("second", users[0].oid)]


async def test_a_reconnect_lets_the_calls_in_flight_finish_first(
    idp: EntraEmulator, users: list[User]
) -> None:
    """A reconnect (here asked for directly; in production another call found the connection
    dead) waits, bounded, for the calls whose requests are still on the old connection:
    closing it under them would cut off a call the server is answering ("may have run")."""
    recorder, executions, gate = Recorder(), list[tuple[str, str]](), threading.Event()
    server = ServerThread(
        lambda base: build_mcp_app(
            idp, base_url=base, recorder=recorder, executions=executions, gate=gate
        ),
        name="mcp",
    ).start()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    try:
        async with bind_caller(token=agent_token(idp, users[1])):
            await tool.connect()
            call = asyncio.create_task(tool.call_tool("whoami", who="in-flight"))
            for _ in range(3000):  # bounded: until the server runs it
                if executions:
                    break
                await asyncio.sleep(0.01)
            reconnect = asyncio.create_task(tool.connect(reset=True))
            for _ in range(50):  # the reconnect is waiting for the call, not closing under it
                await asyncio.sleep(0.01)
            assert not call.done()
            assert not reconnect.done()
            gate.set()
            answer = _text(await call)
            await reconnect
            assert tool.is_connected
    finally:
        gate.set()
        await tool.close()
        server.stop()
    assert json.loads(json.loads(answer)["result"])["who"] == "in-flight"
    assert executions == [("in-flight", users[1].oid)]


def _text(result: Any) -> str:
    parts = result if isinstance(result, list) else [result]
    return " ".join(str(getattr(part, "text", part)) for part in parts)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_pool_caller_without_consent_gets_a_consent_request_and_sends_nothing(
    idp: EntraEmulator, users: list[User], mcp_server: Start
) -> None:
    server, recorder = mcp_server(stateful=True)
    pool = entra_mcp_tool(
        "records",
        f"{server.base}/mcp",
        chain=make_chain(idp),
        scopes=mcp_scopes(idp),
        per_user=True,
    )

    async def make_agent() -> Agent:
        return _agent(await pool.tool())

    host = serve_asgi(host_app(make_agent, close_on_shutdown=[pool]), name="host")
    carol = idp.users["carol"]  # has not consented to the agent calling the MCP API
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=60) as client:
            payload = await respond(client, agent_token(idp, carol), carol.oid, store=True)
            ok = await respond(client, agent_token(idp, users[15]), users[15].oid)
            pooled = len(pool)
    finally:
        host.stop()
    items = [i for i in payload["output"] if i.get("type") == "oauth_consent_request"]
    assert payload["status"] == "incomplete"
    assert len(items) == 1
    assert "prompt=consent" in items[0]["consent_link"]
    assert carol.oid not in {s.oid for s in recorder.snapshot()}
    assert pooled == 1  # only users[15]'s connection
    assert seen_oid(ok) == users[15].oid


def test_every_transport_of_the_mcp_client_is_guarded(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment adds a mount: it must not bypass the guard.
    from entra_passthrough.mcp import entra_http_client

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    client = entra_http_client(
        chain=_NoChain(), scopes=["api://x/.default"], origins=["https://mcp.contoso.com"]
    )
    assert isinstance(client._transport, _CallGuard)
    assert client._mounts
    assert all(isinstance(t, _CallGuard) for t in client._mounts.values() if t is not None)


class _NoChain:
    """A chain (``get_token``/``get_token_async``, as ``EntraAuth`` requires) with no token
    for anyone."""

    def get_token(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def get_token_async(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def lifecycle_token_async(self, scopes: Any) -> None:
        return None


async def test_a_lifecycle_request_drops_the_token_of_a_caller_who_ended_meanwhile() -> None:
    from entra_passthrough._flow import APPLIED

    sent: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(200)

    guard = _CallGuard(httpx2.MockTransport(handler))
    user_token = _unsigned(tid="t", oid="o-1", aud="a", exp=4_000_000_000)
    downstream = _unsigned(tid="t", oid="o-1", aud="mcp", exp=4_000_000_000)
    async with (
        httpx2.AsyncClient(transport=guard) as client,
        bind_caller(token=user_token) as caller,
    ):
        request = client.build_request(
            "GET", "https://mcp.example/mcp", headers={"Authorization": f"Bearer {downstream}"}
        )
        request.extensions[APPLIED] = ("authorization",)
        caller.end()  # the user's response completed while the request waited
        await client.send(request)
        # An app token applied for the lifecycle identity is left alone.
        app = client.build_request(
            "GET", "https://mcp.example/mcp", headers={"Authorization": "Bearer app.x.y"}
        )
        app.extensions[APPLIED] = ("authorization",)
        await client.send(app)
    assert "authorization" not in sent[0].headers
    assert sent[1].headers["authorization"] == "Bearer app.x.y"


class _IdleTimeoutHop(LoopbackHop):
    """A TCP hop in front of the MCP server that behaves like a server (or load balancer) with an
    idle timeout of ``idle`` seconds on keep-alive connections, at its worst moment: a request
    that arrives on a connection idle that long is reset unread, as when the server's close and
    the client's request cross on the wire (a real server's FIN only shortens the window). The
    client cannot tell that reset from a server that read the request and died: a ``tools/call``
    sent that way "may have run" and is lost. A client that drops idle connections before the
    server does never meets it."""

    def __init__(self, idle: float) -> None:
        super().__init__()
        self.idle = idle
        self.upstream = 0
        self.connections = 0
        self.resets = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        loop = asyncio.get_running_loop()
        last = loop.time()
        answers: asyncio.Task[None] | None = None
        upstream: asyncio.StreamWriter | None = None

        async def relay_answers(source: asyncio.StreamReader) -> None:
            nonlocal last
            try:
                while data := await source.read(65536):
                    last = loop.time()
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass  # the client went away
            writer.close()

        try:
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream)
            answers = asyncio.create_task(relay_answers(up_reader))
            while data := await reader.read(65536):
                if loop.time() - last >= self.idle:
                    self.resets += 1
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break  # closed below with SO_LINGER 0: a reset, the request never read
                last = loop.time()
                upstream.write(data)
                await upstream.drain()
        except (OSError, asyncio.CancelledError):
            pass  # a side went away, or the test is over
        finally:
            if answers is not None:
                answers.cancel()
            if upstream is not None:
                upstream.transport.abort()
            writer.transport.abort()


async def test_a_call_after_an_idle_pause_is_not_written_onto_a_connection_the_server_drops(
    idp: EntraEmulator, users: list[User]
) -> None:
    """The remaining churn failure (about one call in a thousand under load, "may have run" for a
    call that never ran): httpx keeps idle connections 5 s, exactly uvicorn's keep-alive timeout,
    so a call made after a pause of ~5 s was written onto a connection the server was closing.
    The MCP client now drops idle connections after ``KEEPALIVE_EXPIRY`` (1 s), well before a
    server does (here: 3 s), so a call after a longer pause opens a new connection and runs."""
    idle = 3.0
    assert idle > KEEPALIVE_EXPIRY
    hop = _IdleTimeoutHop(idle)
    await hop.start()
    executions: list[tuple[str, str]] = []
    server = mcp_behind(idp, hop.port, executions)
    hop.upstream = server.port
    tool = entra_mcp_tool(
        "records", f"http://127.0.0.1:{hop.port}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    user = users[20]
    answers: list[str] = []
    try:
        for number in range(2):
            if number:
                # A pause between two calls (a user reading the first answer), longer than the
                # server's idle timeout: modelled time, not a wait for a server.
                await asyncio.sleep(idle + 0.5)
            with bind_caller(token=agent_token(idp, user)):
                result = await tool.call_tool("whoami", who=f"{user.oid}|{number}")
            parts = result if isinstance(result, list) else [result]
            answers.append(" ".join(str(getattr(part, "text", part)) for part in parts))
    finally:
        await tool.close()
        server.stop()
        await hop.aclose()
    assert hop.resets == 0, "a request was written onto a connection idle past the timeout"
    assert Counter(who for who, _ in executions) == {f"{user.oid}|0": 1, f"{user.oid}|1": 1}
    assert all(user.oid in answer for answer in answers), answers
    assert hop.connections >= 2  # the second call opened a new connection


class _Closing:
    """A TCP server (a thread, blocking sockets) that takes one connection and, once a request
    is there: ``reset`` closes without reading it (the kernel answers unread bytes with a
    reset: a server closing an idle keep-alive connection as the request arrives);
    ``late_reset`` does the same after ``RESET_WINDOW``; ``read_then_close`` reads it and closes
    without answering (a server that may have run it, then died)."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._listener.settimeout(30)  # bounded
        connection, _ = self._listener.accept()
        with connection:
            readable, _, _ = select.select([connection], [], [], 30)
            assert readable
            if self.behaviour == "late_reset":
                time.sleep(RESET_WINDOW + 0.5)
            elif self.behaviour == "read_then_close":
                # The whole request: headers and body may arrive in two segments, and bytes
                # left unread would make the close a reset (which is the "reset" case).
                connection.settimeout(30)  # bounded
                received = b""
                while not received.endswith(b'"x"}}'):
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    received += chunk
        self._listener.close()

    def join(self) -> None:
        self._thread.join(30)


@pytest.mark.parametrize(
    ("behaviour", "sent", "not_sent"),
    [("reset", False, "reset"), ("late_reset", True, None), ("read_then_close", True, None)],
)
async def test_a_call_the_server_reset_unread_never_left(
    behaviour: str, sent: bool, not_sent: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that resets the connection right after a ``tools/call`` reached it, without
    reading it (a graceful restart closing its idle keep-alive connections as the request is
    written), never ran it: the call is "not sent" and may be retried. A server that read the
    request and closed without answering, or a reset long after the request (a load
    balancer's idle timeout during a long call), may have run it."""
    from entra_passthrough import mcp
    from entra_passthrough.mcp import CallAttempt

    if behaviour == "reset":
        # The prompt reset must count as prompt however long a loaded machine takes to
        # schedule the server thread and deliver the reset; the late one still comes after
        # the real window (it sleeps past RESET_WINDOW).
        monkeypatch.setattr(mcp, "RESET_WINDOW", 60.0)
    server = _Closing(behaviour)
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "x"}}
    attempt: CallAttempt
    async with httpx2.AsyncClient(transport=_CallGuard(httpx2.AsyncHTTPTransport())) as client:
        with call_attempt() as attempt:
            answer = await client.post(
                f"http://127.0.0.1:{server.port}/mcp",
                json=body,
                headers={"Authorization": "Bearer t"},
            )
    server.join()
    assert answer.json()["id"] == 5  # a JSON-RPC error for this request: the connection lives
    assert attempt.sent is sent
    assert attempt.not_sent == not_sent
    assert (attempt.transport_error is None) is (not sent)


async def _reset_through(
    client_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, *, proxied: bool
) -> tuple[Any, str]:
    """One ``tools/call`` through ``entra_http_client`` (the MCP connection's client, built
    under ``client_env``) to a server, or an HTTP proxy, that resets the connection unread."""
    from entra_passthrough import mcp
    from entra_passthrough.mcp import CallAttempt, entra_http_client

    monkeypatch.setattr(mcp, "RESET_WINDOW", 60.0)  # prompt however loaded the machine is
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    server = _Closing("reset")
    url = f"http://127.0.0.1:{server.port}/mcp"
    if proxied:
        client_env = {**client_env, "HTTP_PROXY": f"http://127.0.0.1:{server.port}"}
        url = "http://mcp.invalid/mcp"  # only the proxy can reach it
    for name, value in client_env.items():
        monkeypatch.setenv(name, value)
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "x"}}
    attempt: CallAttempt
    # No token for these URLs (another origin): the reset, not the token, is under test.
    client = entra_http_client(
        chain=_NoChain(), scopes=["api://mcp/.default"], origins=["https://mcp.contoso.com"]
    )
    async with client:
        with call_attempt(require_token=False) as attempt:
            answer = await client.post(url, json=body)
    server.join()
    assert answer.json()["id"] == 5
    return attempt, answer.json()["error"]["message"]


async def test_the_resend_on_a_prompt_reset_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ENTRA_PASSTHROUGH_MCP_RESEND_ON_RESET=false``: for a device between the agent and the
    server that may reset after forwarding, a prompt reset is an unknown outcome, never "not
    sent" (so never sent again). By default, the same reset is "not sent"."""
    default, said = await _reset_through({}, monkeypatch, proxied=False)
    assert default.sent is False
    assert default.not_sent == "reset"
    # The answer says what "not sent" rests on, and the setting for a device that breaks it.
    assert said.startswith("entra_passthrough: not sent (reset"), said
    assert "may have run" in said
    assert "ENTRA_PASSTHROUGH_MCP_RESEND_ON_RESET=false" in said
    off, _ = await _reset_through(
        {"ENTRA_PASSTHROUGH_MCP_RESEND_ON_RESET": "false"}, monkeypatch, proxied=False
    )
    assert off.sent is True
    assert off.not_sent is None
    assert off.transport_error is not None


async def test_a_reset_through_an_http_proxy_is_never_taken_as_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through ``HTTP_PROXY`` the reset comes from the proxy, which may have forwarded the
    request: the call may have run, whatever the setting."""
    attempt, _ = await _reset_through({}, monkeypatch, proxied=True)
    assert attempt.sent is True
    assert attempt.not_sent is None


def test_a_bad_resend_setting_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from entra_passthrough import ConfigurationError
    from entra_passthrough.mcp import entra_http_client

    monkeypatch.setenv("ENTRA_PASSTHROUGH_MCP_RESEND_ON_RESET", "maybe")
    with pytest.raises(ConfigurationError, match="ENTRA_PASSTHROUGH_MCP_RESEND_ON_RESET"):
        entra_http_client(
            chain=_NoChain(), scopes=["api://mcp/.default"], origins=["https://mcp.contoso.com"]
        )


class _Silent:
    """A TCP server that accepts, reads and never answers: a request to it hangs where the test
    wants it (in the TLS handshake for https, waiting for the answer for http)."""

    def __init__(self) -> None:
        self.accepted = asyncio.Event()
        self.received = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> _Silent:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # As the idle-dropping proxy's: every accepted transport is known at once and
        # aborted on exit, whether or not its task started.
        self._writers.append(writer)
        self._tasks.append(asyncio.get_running_loop().create_task(self._serve(reader)))

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        self.accepted.set()
        try:
            while data := await reader.read(65536):
                if b"tools/call" in data:
                    self.received.set()
        except (OSError, asyncio.CancelledError):
            pass


async def _call_then_cancel(url: str, reached: asyncio.Event) -> Any:
    """A tools/call through the guard over httpx2's own transport, cancelled (as the mcp client
    cancels the requests of a connection it tears down) once ``reached`` is set."""
    from entra_passthrough.mcp import CallAttempt

    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "x"}}
    attempt: CallAttempt
    async with httpx2.AsyncClient(transport=_CallGuard(httpx2.AsyncHTTPTransport())) as client:
        with call_attempt() as attempt:
            request = asyncio.create_task(
                client.post(url, json=body, headers={"Authorization": "Bearer t"})
            )
            async with asyncio.timeout(30):  # bounded
                await reached.wait()
            assert attempt.in_flight == 1
            settled = asyncio.create_task(attempt.settled())
            await asyncio.sleep(0)
            assert not settled.done()  # the request is still in the transport
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            async with asyncio.timeout(30):
                await settled
    return attempt


async def test_a_call_cancelled_before_a_byte_was_written_never_left() -> None:
    """The mcp client cancels the requests of a connection it tears down (a reconnect): one still
    connecting (here: in the TLS handshake) provably never left and may be retried. Before: it
    counted as sent and came back "may have run" (1 to 4 calls per gap restart in tests/churn)."""
    async with _Silent() as server:
        attempt = await _call_then_cancel(f"https://127.0.0.1:{server.port}/mcp", server.accepted)
    assert not attempt.sent
    assert attempt.not_sent == "connect"
    assert attempt.in_flight == 0


async def test_a_call_cancelled_after_it_was_written_may_have_run() -> None:
    async with _Silent() as server:
        attempt = await _call_then_cancel(f"http://127.0.0.1:{server.port}/mcp", server.received)
    assert attempt.sent
    assert attempt.not_sent is None
    assert attempt.in_flight == 0


async def test_a_pooled_connect_that_lost_its_token_is_explained_to_the_client(
    idp: EntraEmulator, users: list[User], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection connects when the agent opens it ("agent initialization", where
    ResponsesHostServer shows only "server_error" unless the failure is public). When its
    connection-lifetime requests could get no token (the user's assertion expired while it
    connected: seen in tests/churn with 4 s assertions), the client is told why."""
    from entra_passthrough import AssertionExpired

    pool = _pool(idp)
    try:
        async with bind_caller(token=agent_token(idp, users[21])) as caller:
            tool = await pool.tool()

            async def connect_without_a_token() -> None:
                # What the connect meets: its requests went out without a token (the transport
                # recorded why) and the server refused them.
                caller.record(AssertionExpired(expired_at=time.time() - 1))
                raise tool._connect_failure(RuntimeError("Server returned an error"), caller)

            monkeypatch.setattr(tool, "_connect_retrying", connect_without_a_token)
            public = public_failure_type()
            assert public is not None
            with pytest.raises(public) as failure:  # the host shows its message
                await tool.__aenter__()
        assert "expired" in str(failure.value)
        assert isinstance(failure.value.__cause__, Exception)
        assert tool._leases == 0

        async def refused() -> None:
            # The server refused a connect whose requests had no token, and the reason was
            # recorded elsewhere (another request of the same user leased the connection).
            raise ToolException("Could not connect to MCP server 'records': refused")

        monkeypatch.setattr(tool, "_connect_retrying", refused)
        # A request in progress whose assertion has expired meanwhile (nothing cached for it).
        expired = agent_token(idp, users[22], lifetime=-60)
        async with bind_caller(token=expired, cap_at_expiry=False):
            with pytest.raises(public) as failure:
                await tool.__aenter__()
        assert "AADSTS500133" in str(failure.value)
        async with bind_caller(token=agent_token(idp, users[21])):
            with pytest.raises(ToolException):  # the token is fine: the connect's own failure
                await tool.__aenter__()
    finally:
        await pool.aclose()


async def test_the_host_shows_why_a_pooled_connection_could_not_connect(
    idp: EntraEmulator, users: list[User], mcp_server: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a real ResponsesHostServer: a pooled connection whose connect lost the user's
    token fails the response with the explanation, not "An internal server error occurred"."""
    from entra_passthrough import AssertionExpired, current_caller
    from entra_passthrough.agent_framework import EntraMCPTool

    server, recorder = mcp_server(stateful=True)
    pool = entra_mcp_tool(
        "records",
        f"{server.base}/mcp",
        chain=make_chain(idp),
        scopes=mcp_scopes(idp),
        per_user=True,
    )

    async def connect_without_a_token(tool: EntraMCPTool) -> None:
        caller = current_caller()
        assert caller is not None
        caller.record(AssertionExpired(expired_at=time.time() - 1))
        raise tool._connect_failure(RuntimeError("Server returned an error"), caller)

    monkeypatch.setattr(EntraMCPTool, "_connect_retrying", connect_without_a_token)

    async def make_agent() -> Agent:
        return _agent(await pool.tool())

    host = serve_asgi(host_app(make_agent, close_on_shutdown=[pool]), name="host")
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=60) as client:
            answer = await client.post(
                "/responses",
                json={"input": users[23].oid, "store": False},
                headers={"Authorization": f"Bearer {agent_token(idp, users[23])}"},
            )
    finally:
        host.stop()
    assert answer.status_code == 200
    assert answer.json()["status"] == "failed"
    message = str((answer.json().get("error") or {}).get("message", ""))
    assert "AADSTS500133" in message, message
    assert not calls(recorder.snapshot())


async def test_a_call_request_that_reaches_the_transport_after_the_verdict_is_not_sent() -> None:
    """The mcp client can report "Connection closed" to the caller before the task that POSTs
    the call has reached the transport. Once the call's outcome is being decided (and it may be
    retried), that late request must not leave: it would run the call a second time."""
    sent: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(200, json={"jsonrpc": "2.0", "id": 9, "result": {}})

    body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "x"}}
    async with httpx2.AsyncClient(transport=_CallGuard(httpx2.MockTransport(handler))) as client:
        with call_attempt() as attempt:
            attempt.close()
            answer = await client.post(
                "https://mcp.example/mcp", json=body, headers={"Authorization": "Bearer t"}
            )
    assert sent == []
    assert not attempt.sent
    assert answer.json()["id"] == 9
    assert answer.json()["error"]["message"].startswith("entra_passthrough: not sent")


async def test_a_call_with_no_answer_in_time_may_have_run_and_is_not_resent(
    idp: EntraEmulator, users: list[User]
) -> None:
    """The tool's ``request_timeout`` passes while the server is still running the call: the
    model is told the call may have run (``CallOutcomeUnknown``), nothing is re-sent, the call
    runs once, and the connection goes on serving."""
    from entra_passthrough.agent_framework import CallOutcomeUnknown

    ran: list[tuple[str, str]] = []
    recorder = Recorder()

    def slow_calls(app: Any) -> Any:
        async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["method"] == "POST":
                parsed, replay = await read_json_request(receive)
                params = parsed.get("params") if isinstance(parsed, dict) else None
                if ((params or {}).get("arguments") or {}).get("who") == "slow":
                    await asyncio.sleep(2.0)  # past the 1 s request timeout
                await app(scope, replay, send)
                return
            await app(scope, receive, send)

        return wrapped

    server = ServerThread(
        lambda base: slow_calls(
            build_mcp_app(idp, base_url=base, recorder=recorder, executions=ran)
        ),
        name="mcp",
    ).start()
    tool = entra_mcp_tool(
        "records",
        f"{server.base}/mcp",
        chain=make_chain(idp),
        scopes=mcp_scopes(idp),
        request_timeout=1,
    )
    try:
        async with bind_caller(token=agent_token(idp, users[0])):
            with pytest.raises(CallOutcomeUnknown, match="may have run"):
                await tool.call_tool("whoami", who="slow")
        for _ in range(60):  # bounded: the server finishes the slow call (~1 s)
            if any(who == "slow" for who, _ in ran):
                break
            await asyncio.sleep(0.05)
        async with bind_caller(token=agent_token(idp, users[1])):
            await tool.call_tool("whoami", who="after")
    finally:
        await tool.close()
        server.stop()
    assert [oid for who, oid in ran if who == "slow"] == [users[0].oid]
    assert [oid for who, oid in ran if who == "after"] == [users[1].oid]
    assert len([s for s in calls(recorder.snapshot()) if s.caller_tag == "slow"]) == 1


async def test_a_server_that_shares_sessions_is_never_taken_for_principal_bound(
    idp: EntraEmulator, users: list[User]
) -> None:
    """A stateful server that lets any user use any session, restarted twice, each time first
    reached by another user than the session's opener: two 404s for non-openers in a row, as a
    principal-bound server gives. A call by a non-opener already ran on a session, so the tool
    knows sessions are shared: it reconnects and every later call runs."""
    from mcp.server.mcpserver import MCPServer

    from _support.mcp_world import legacy_only, recording

    recorder = Recorder()

    def build(base: str) -> Any:
        server = MCPServer("shared-sessions")

        @server.tool()
        async def whoami(who: str = "") -> str:
            return json.dumps({"who": who})

        return recording(
            legacy_only(server.streamable_http_app(stateless_http=False, json_response=True)),
            recorder,
        )

    server = ServerThread(build, name="shared-sessions").start()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    a, b, c = users[20], users[21], users[22]

    async def call(user: User, who: str) -> Any:
        async with bind_caller(token=agent_token(idp, user)):
            return await tool.call_tool("whoami", who=who)

    try:
        await call(a, "a")
        await call(b, "b")  # another user on a's session: it runs
        server.restart()
        await call(b, "b-after-restart")  # 404 for a non-opener: reconnect as b
        server.restart()
        for user, who in ((c, "c-after-restart"), (a, "a-later"), (b, "b-later")):
            await call(user, who)  # c's 404 is a restart, not a principal-bound server
    finally:
        await tool.close()
        server.stop()
    ran = {s.caller_tag for s in calls(recorder.snapshot()) if s.status == 200}
    assert {"a", "b", "b-after-restart", "c-after-restart", "a-later", "b-later"} <= ran


async def test_a_pooled_connection_keeps_a_live_caller_while_one_of_two_runs_goes_on(
    idp: EntraEmulator, users: list[User], mcp_server: Start
) -> None:
    """One user, two runs on the same pooled connection: the second ends first. Its caller must
    not stay the one behind the connection's own requests (the GET stream, a reconnect's
    DELETE) while the first run goes on: those would go out with no token."""
    server, _ = mcp_server(stateful=True)
    pool = entra_mcp_tool(
        "records",
        f"{server.base}/mcp",
        chain=make_chain(idp),
        scopes=mcp_scopes(idp),
        per_user=True,
    )
    release = threading.Event()
    held = {"runs": 0}
    tools: list[Any] = []

    async def hold_the_first() -> None:
        held["runs"] += 1
        if held["runs"] == 1:
            assert await asyncio.to_thread(release.wait, 20)

    async def make() -> Agent:
        tool = await pool.tool()
        tools.append(tool)
        client = ScriptedChatClient(tool="whoami", input_argument="who", before_call=hold_the_first)
        return Agent(client=client, tools=[tool], middleware=entra_middleware())

    host = serve_asgi(host_app(make, close_on_shutdown=[pool]), name="host")
    user = users[14]
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=30) as client:
            first = asyncio.create_task(respond(client, agent_token(idp, user), user.oid))
            for _ in range(400):  # bounded: until the first run holds its connection
                if held["runs"]:
                    break
                await asyncio.sleep(0.01)
            second = await respond(client, agent_token(idp, user), user.oid)
            assert tools[0] is tools[-1]  # one connection for the user
            backing = tools[0]._lifecycle_caller
            assert backing is not None
            assert backing.active  # the first run's caller, not the ended second one's
            release.set()
            payload = await first
    finally:
        release.set()
        host.stop()
    assert seen_oid(second) == user.oid
    assert seen_oid(payload) == user.oid


async def test_a_principal_bound_verdict_lapses_and_the_tool_tries_again(
    idp: EntraEmulator, users: list[User], mcp_server: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verdict stands a while (60 s), then the tool tries again: a call after it lapses is
    sent (and, on a server that does bind sessions, runs after one reconnect as its user)."""
    from entra_passthrough.agent_framework import _tool

    server, recorder = mcp_server(stateful=True)
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )

    async def call(user: User) -> Any:
        async with bind_caller(token=agent_token(idp, user)):
            return await tool.call_tool("whoami", who=user.oid)

    try:
        await call(users[6])
        await call(users[7])  # 404, one reconnect as users[7]
        with pytest.raises(Exception, match="per_user=True"):
            await call(users[8])
        with pytest.raises(Exception, match="per_user=True"):
            await call(users[6])  # at once, nothing sent
        connects = Counter(s.rpc for s in recorder.snapshot())["initialize"]
        monkeypatch.setattr(_tool, "_BOUND_VERDICT_SECONDS", 0.0)
        await call(users[6])  # the verdict lapsed: tried again, and it runs
    finally:
        await tool.close()
    assert Counter(s.rpc for s in recorder.snapshot())["initialize"] == connects + 1
    ran = [s.caller_tag for s in calls(recorder.snapshot()) if s.status == 200]
    assert ran.count(users[6].oid) == 2
