"""A tool call acts for its user or for no one: never the agent's identity because the user is
gone. ``TokenChain(lifecycle_app=True)`` lets *connection-lifetime* requests (discovery, the
GET stream) go as the app; a ``tools/call`` with no caller, or whose caller ended (a background
run outliving its request, a run resumed after a restart), or one whose 401 retry comes after
its caller ended, must fail closed rather than run as the app. A real mcp server (that also
accepts the app's token), the agent-framework tool and the plain mcp SDK client, the emulator's
OBO and managed identity."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from agent_framework.exceptions import ToolExecutionException
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from _support.mcp_world import (
    Recorder,
    ServerThread,
    agent_token,
    build_mcp_app,
    make_chain,
    mcp_scopes,
    read_json_request,
)
from entra_passthrough import (
    Caller,
    ManagedIdentity,
    NoCallerError,
    Policy,
    TokenChain,
    bind_caller,
)
from entra_passthrough._caller import set_current
from entra_passthrough.agent_framework import entra_mcp_tool
from entra_passthrough.mcp import entra_call, entra_http_client
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

ASGI = Callable[..., Any]


def _with_app(idp: EntraEmulator, *, policy: Policy = Policy.USER_ONLY) -> TokenChain:
    """OBO for users, then the agent's managed identity; ``lifecycle_app`` under user_only."""
    chain = make_chain(idp, policy=policy)
    env = idp.mi_env()
    app = ManagedIdentity(
        client_id=idp.managed_identity.client_id,
        endpoint=env["IDENTITY_ENDPOINT"],
        header=env["IDENTITY_HEADER"],
    )
    return TokenChain(
        [*chain.sources, app], policy=policy, lifecycle_app=policy is Policy.USER_ONLY
    )


class _Server:
    def __init__(self, thread: ServerThread, recorder: Recorder, ran: list[tuple[str, str]]):
        self.thread, self.recorder, self.ran = thread, recorder, ran
        self.url = f"{thread.base}/mcp"

    def ran_as(self, who: str) -> list[str]:
        """The oids the ``whoami`` body ran as for the call tagged ``who``."""
        return [oid for tag, oid in self.ran if tag == who]


@pytest.fixture
def server(idp: EntraEmulator) -> Iterator[Callable[..., _Server]]:
    started: list[ServerThread] = []

    def start(wrap: Callable[[ASGI], ASGI] | None = None) -> _Server:
        recorder, ran = Recorder(), []

        def make(base: str) -> ASGI:
            app = build_mcp_app(
                idp, base_url=base, recorder=recorder, allow_app=True, executions=ran
            )
            return wrap(app) if wrap is not None else app

        thread = ServerThread(make, name="mcp").start()
        started.append(thread)
        return _Server(thread, recorder, ran)

    yield start
    for thread in started:
        thread.stop()


async def _ended_caller(idp: EntraEmulator, user: User) -> Caller:
    async with bind_caller(token=agent_token(idp, user)) as caller:
        pass
    assert not caller.active
    return caller


@pytest.mark.parametrize("bound", ["none", "ended"])
async def test_agent_framework_call_never_runs_as_the_lifecycle_app(
    idp: EntraEmulator, users: list[User], server: Callable[..., _Server], bound: str
) -> None:
    mcp = server()
    tool = entra_mcp_tool("records", mcp.url, chain=_with_app(idp), scopes=mcp_scopes(idp))
    try:
        async with bind_caller(token=agent_token(idp, users[0])):
            await tool.call_tool("whoami", who="before")  # connected; discovery as the app
        if bound == "ended":
            set_current(await _ended_caller(idp, users[1]))
        try:
            with pytest.raises(NoCallerError):
                await tool.call_tool("whoami", who="orphan")
        finally:
            set_current(None)
    finally:
        await tool.close()
    assert mcp.ran_as("before") == [users[0].oid]
    assert mcp.ran_as("orphan") == []
    assert not [s for s in mcp.recorder.snapshot() if s.caller_tag == "orphan"]


async def test_mcp_sdk_call_with_no_caller_never_runs_as_the_lifecycle_app(
    idp: EntraEmulator, server: Callable[..., _Server]
) -> None:
    mcp = server()
    http = entra_http_client(
        chain=_with_app(idp), scopes=mcp_scopes(idp), origins=[mcp.thread.base]
    )
    async with http, Client(streamable_http_client(mcp.url, http_client=http)) as session:
        with pytest.raises(NoCallerError):
            async with entra_call(http):
                await session.call_tool("whoami", {"who": "orphan"})
    assert not [s for s in mcp.recorder.snapshot() if s.caller_tag == "orphan"]


async def test_a_retry_after_401_never_changes_who_the_call_acts_for(
    idp: EntraEmulator, users: list[User], server: Callable[..., _Server]
) -> None:
    """The user's call is refused with 401 invalid_token, and their caller ends before the
    flow acquires again (a background run's caller is capped at the assertion's expiry, which
    is about when the server starts refusing it): the call is not re-sent at all."""
    state: dict[str, Any] = {"caller": None, "seen": Counter()}

    def refuse_once(app: ASGI) -> ASGI:
        async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["method"] != "POST":
                await app(scope, receive, send)
                return
            parsed, replay = await read_json_request(receive)
            params = parsed.get("params") if isinstance(parsed, dict) else None
            who = ((params or {}).get("arguments") or {}).get("who")
            if parsed.get("method") == "tools/call" and who == "victim":
                state["seen"][who] += 1
                if state["seen"][who] == 1:
                    state["caller"].end()  # the run's caller ends while the call is out
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 401,
                            "headers": [(b"www-authenticate", b'Bearer error="invalid_token"')],
                        }
                    )
                    await send({"type": "http.response.body", "body": b""})
                    return
            await app(scope, replay, send)

        return wrapped

    mcp = server(refuse_once)
    tool = entra_mcp_tool("records", mcp.url, chain=_with_app(idp), scopes=mcp_scopes(idp))
    try:
        async with bind_caller(token=agent_token(idp, users[2])) as caller:
            state["caller"] = caller
            with pytest.raises(ToolExecutionException) as failed:
                await tool.call_tool("whoami", who="victim")
    finally:
        await tool.close()
    assert state["seen"]["victim"] == 1, "re-sent after the caller ended"
    assert mcp.ran_as("victim") == []
    assert idp.managed_identity.object_id not in str(failed.value)


async def test_user_or_app_call_of_an_ended_user_fails_closed(
    idp: EntraEmulator, users: list[User], server: Callable[..., _Server]
) -> None:
    """Under user_or_app the app stands in only when no assertion was presented: a run whose
    user presented one and has since ended does not continue as the app. A call that never had
    a caller still goes as the app (the policy's own no-caller identity)."""
    mcp = server()
    tool = entra_mcp_tool(
        "records",
        mcp.url,
        chain=_with_app(idp, policy=Policy.USER_OR_APP),
        scopes=mcp_scopes(idp),
    )
    try:
        async with bind_caller(token=agent_token(idp, users[3])):
            await tool.call_tool("whoami", who="active")
        set_current(await _ended_caller(idp, users[3]))
        try:
            with pytest.raises(NoCallerError):
                await tool.call_tool("whoami", who="ended")
        finally:
            set_current(None)
        await tool.call_tool("whoami", who="nobody")
    finally:
        await tool.close()
    assert mcp.ran_as("active") == [users[3].oid]
    assert mcp.ran_as("ended") == []
    assert mcp.ran_as("nobody") == [idp.managed_identity.object_id]
