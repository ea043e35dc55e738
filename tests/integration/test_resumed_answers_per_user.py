"""A resumed answer goes only to the user whose call it answers (``EntraEventStore``).

The mcp SDK names a call's SSE stream after its JSON-RPC request id, the same number in every
session, and ``streamable_http_app(event_store=...)`` gives one store to every session. When a
tool closes its stream (``ctx.close_sse_stream()``, SEP-1699 polling) and each client resumes
with ``GET`` + ``Last-Event-ID`` (its own session, its own token), a store keyed by stream id
alone replays another session's events: one user's tool result reaches other users.
``EntraEventStore`` scopes every stream to the verified user and replays only the user's own.

Real components: the emulator over HTTPS with MSAL's OBO, a real ``MCPServer`` +
``EntraTokenVerifier`` + ``EntraChallengeMiddleware`` under uvicorn, the library's per-user MCP
tool pool (one session per user) and the mcp SDK's own resumption. The collision is made
certain, not timed: every call closes its stream only once all calls are running (every
stream's first event is stored), and the shared store replays only once every answer is stored.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventMessage, EventStore
from mcp.types import JSONRPCResponse

from _support.events import MemoryEventStore
from _support.mcp_world import (
    Recorder,
    agent_token,
    build_mcp_app,
    make_chain,
    mcp_scopes,
    world_with_users,
)
from _support.servers import ServerThread
from entra_passthrough import ConfigurationError, JwtVerifier, UserKey, bind_caller
from entra_passthrough.agent_framework import PoolOptions, entra_mcp_tool
from entra_passthrough.server import EntraEventStore, current_user, require_entra_auth
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning"
    ),
]

USERS = 3
#: What the polled tool's answers carry, so the store can count them.
MARKER = "resumed-answer"
#: The server's SSE retry interval (ms): how long a client waits before its resuming GET.
RETRY_MS = 100
#: Safety nets only (a hang fails instead of blocking the run); nothing is timed.
BOUND = 30.0


class _SharedEvents(MemoryEventStore):
    """The store keyed by stream id alone, one for the whole server. It replays only once
    ``USERS`` tool answers are stored, so every resuming GET finds every session's answer
    already there."""

    def __init__(self) -> None:
        super().__init__()
        self.answer_streams: list[str] = []
        self._all_answered: asyncio.Event | None = None  # created in the server's loop

    def _answered(self) -> asyncio.Event:
        if self._all_answered is None:
            self._all_answered = asyncio.Event()
        return self._all_answered

    async def store_event(self, stream_id: str, message: Any) -> str:
        event_id = await super().store_event(stream_id, message)
        if isinstance(message, JSONRPCResponse) and MARKER in message.model_dump_json():
            self.answer_streams.append(stream_id)
            if len(self.answer_streams) == USERS:
                self._answered().set()
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: Any) -> str | None:
        await asyncio.wait_for(self._answered().wait(), BOUND)
        return await super().replay_events_after(last_event_id, send_callback)


def _polled_tool(executions: list[tuple[str, str]]) -> Any:
    state: dict[str, Any] = {}

    def register(server: MCPServer) -> None:
        @server.tool()
        async def polled(who: str, ctx: Context) -> str:
            """Waits until every user's call runs, closes its SSE stream, then answers."""
            everyone = state.setdefault("everyone", asyncio.Event())
            oid = current_user().oid
            executions.append((who, oid))
            if len(executions) == USERS:
                everyone.set()
            await asyncio.wait_for(everyone.wait(), BOUND)
            await ctx.close_sse_stream()  # the answer below can only be had by resuming
            return json.dumps({"who": who, "oid": oid, "marker": MARKER})

    return register


@pytest.fixture(scope="module")
def idp_users() -> Iterator[tuple[EntraEmulator, list[User]]]:
    world, users = world_with_users(USERS + 1)
    with EntraEmulator(world=world) as idp:
        yield idp, users


def _serve(
    idp: EntraEmulator, store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> tuple[ServerThread, list[tuple[str, str]]]:
    original = MCPServer.streamable_http_app

    def with_event_store(self: MCPServer, **options: Any) -> Any:
        return original(self, event_store=store, retry_interval=RETRY_MS, **options)

    monkeypatch.setattr(MCPServer, "streamable_http_app", with_event_store)
    executions: list[tuple[str, str]] = []
    thread = ServerThread(
        lambda base: build_mcp_app(
            idp,
            base_url=base,
            recorder=Recorder(),
            stateful=True,
            json_response=False,
            extra_tools=_polled_tool(executions),
        ),
        name="mcp",
    ).start()
    return thread, executions


async def _everyone_calls(
    idp: EntraEmulator, users: list[User], url: str
) -> dict[str, dict[str, Any]]:
    """Each user calls ``polled`` at once, on a session of their own; what each one got."""
    pool = entra_mcp_tool(
        "records", url, chain=make_chain(idp), scopes=mcp_scopes(idp), per_user=PoolOptions()
    )

    async def call(user: User) -> dict[str, Any]:
        async with bind_caller(token=agent_token(idp, user)):
            tool = await pool.tool()
            async with tool:
                result = await tool.call_tool("polled", who=user.name)
        text = " ".join(str(getattr(part, "text", "") or "") for part in result)
        answer: dict[str, Any] = json.loads(text)
        # The text is the tool's structured output ({"result": <the string it returned>}).
        inner: dict[str, Any] = json.loads(answer["result"]) if "result" in answer else answer
        return inner

    try:
        answers = await asyncio.wait_for(asyncio.gather(*(call(u) for u in users)), 2 * BOUND)
    finally:
        await pool.aclose()
    return {user.name: answer for user, answer in zip(users, answers, strict=True)}


@pytest.mark.parametrize("scoped", [True, False], ids=["EntraEventStore", "plain-store"])
async def test_every_user_gets_their_own_resumed_answer(
    idp_users: tuple[EntraEmulator, list[User]],
    monkeypatch: pytest.MonkeyPatch,
    scoped: bool,
) -> None:
    idp, every_user = idp_users
    users = every_user[:USERS]
    inner = _SharedEvents()
    store: EventStore = EntraEventStore(inner) if scoped else inner
    thread, executions = _serve(idp, store, monkeypatch)
    try:
        answers = await _everyone_calls(idp, users, f"{thread.base}/mcp")
    finally:
        thread.stop()
    # Each call ran once, as its own user; every answer was stored in the one shared store.
    assert sorted(executions) == sorted((u.name, u.oid) for u in users)
    assert len(inner.answer_streams) == USERS
    # The collision the store must survive: the calls' request ids, so the SDK's stream ids,
    # are the same in every session.
    request_ids = {s.rpartition("|")[2] for s in inner.answer_streams}
    assert len(request_ids) == 1, inner.answer_streams
    crossed = {u.name: answers[u.name]["who"] for u in users if answers[u.name]["oid"] != u.oid}
    if scoped:
        assert crossed == {}
        assert all(answers[u.name]["who"] == u.name for u in users), answers
        # The inner store saw each user's streams apart, and never a user's key in the clear.
        owners = {stream.partition("|")[0] for stream in inner.answer_streams}
        assert owners == {UserKey.for_entra_user(u.tenant_id, u.oid).hashed for u in users}
        assert not any(u.oid in s or u.tenant_id in s for u in users for s in inner.answer_streams)
    else:
        # The control: a store shared as the SDK takes it hands one user's answer to the others
        # (every replay holds every session's answer, in the same order).
        assert len(crossed) == USERS - 1, answers
        assert len({answer["oid"] for answer in answers.values()}) == 1, answers


# --- the scope of events stored or replayed without a verified caller -------------------------


async def _as_user(idp: EntraEmulator, user: User | None, work: Any) -> Any:
    """Run ``work()`` as ``user`` verified by ``require_entra_auth`` (a real JwtVerifier and a
    token from the emulator), or with no verified caller at all (``None``)."""
    if user is None:
        return await work()
    verifier = JwtVerifier(
        audiences=[idp.mcp.client_id, idp.mcp.app_id_uri],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        verify=idp.ca_file,
    )
    token = idp.user_token(user, audience=idp.mcp.client_id)
    done: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert current_user().oid == user.oid
        done.append(await work())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
    }
    await require_entra_auth(app, verifier=verifier)(scope, receive, send)
    assert sent[0]["status"] == 204, sent[0]
    return done[0]


def _message(n: int) -> JSONRPCResponse:
    return JSONRPCResponse(jsonrpc="2.0", id=n, result={"n": n})


@pytest.mark.parametrize(
    ("owner", "resumer", "replayed"),
    [
        (0, 0, True),  # the user's own stream
        (0, 1, False),  # another user's
        (None, 0, False),  # stored without a verified caller, resumed by a verified user
        (0, None, False),  # a verified user's, resumed without a verified caller
        (None, None, True),  # anonymous to anonymous (no identity to tell apart)
    ],
)
async def test_a_stream_is_replayed_only_in_its_own_scope(
    idp_users: tuple[EntraEmulator, list[User]],
    owner: int | None,
    resumer: int | None,
    replayed: bool,
) -> None:
    idp, users = idp_users
    inner = MemoryEventStore()
    store = EntraEventStore(inner)
    stored_by = None if owner is None else users[owner]
    resumed_by = None if resumer is None else users[resumer]

    async def store_stream() -> str:
        priming = await store.store_event("7", None)
        await store.store_event("7", _message(7))
        return priming

    priming = await _as_user(idp, stored_by, store_stream)
    got: list[EventMessage] = []

    async def collect(event: EventMessage) -> None:
        got.append(event)

    async def replay() -> str | None:
        return await store.replay_events_after(priming, collect)

    stream = await _as_user(idp, resumed_by, replay)
    if replayed:
        assert stream == "7"  # the SDK's own stream id, not the scoped one
        assert [e.message for e in got] == [_message(7)]
    else:
        assert stream is None
        assert got == []


async def test_a_stream_stored_without_the_wrapper_is_not_replayed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("WARNING", logger="entra_passthrough.server")
    inner = MemoryEventStore()
    priming = await inner.store_event("7", None)
    await inner.store_event("7", _message(7))
    got: list[EventMessage] = []

    async def collect(event: EventMessage) -> None:
        got.append(event)

    assert await EntraEventStore(inner).replay_events_after(priming, collect) is None
    assert got == []
    # The server is told why nothing was replayed (never whose stream it was).
    assert "another user" in caplog.text


def test_only_an_event_store_is_wrapped() -> None:
    with pytest.raises(ConfigurationError) as caught:
        EntraEventStore(object())  # type: ignore[arg-type]
    assert "EventStore" in str(caught.value)
