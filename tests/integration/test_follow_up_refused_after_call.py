"""A tool call that ran, then the ``tools/list`` the mcp SDK sends after it was refused.

The mcp SDK checks a tool's first result on a session against the tool's output schema, and
lists the tools for it *after* the ``tools/call`` was answered, from the call's own task with the
call's token. When the server refuses that ``tools/list`` (its token ended on its way, or the
user's token has expired so the one retry gets none), the SDK raises a bare "Server returned an
error response" for a call that ran. The call's error says that it ran, what was refused after
it and why, and how to avoid it; it is never sent again.

Real components: the emulator and MSAL, a real MCP server (Entra tokens verified) on uvicorn
behind an ASGI wrapper that refuses ``tools/list``, the mcp SDK's ``Client`` with
``entra_http_client``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from _support.mcp_world import (
    Recorder,
    ServerThread,
    agent_token,
    build_mcp_app,
    make_chain,
    mcp_scopes,
    refusing_rpc,
    world_with_users,
)
from entra_passthrough import Caller, bind_caller
from entra_passthrough.mcp import entra_call, entra_http_client
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import Lifetimes

#: When a held ``tools/list`` is answered, from its bearer token's ``exp``.
Hold = Callable[[float], float]


def _refusing_tools_list(app: Any, base: str, *, hold: Hold | None, seen: list[str]) -> Any:
    return refusing_rpc(app, base, "tools/list", seen, hold=hold)


async def _call_once(
    idp: EntraEmulator, caller: Caller, *, hold: Hold | None
) -> tuple[BaseException | None, list[tuple[str, str]], list[str]]:
    executions: list[tuple[str, str]] = []
    seen: list[str] = []
    server = ServerThread(
        lambda base: _refusing_tools_list(
            build_mcp_app(idp, base_url=base, recorder=Recorder(), executions=executions),
            base,
            hold=hold,
            seen=seen,
        ),
        name="mcp",
    ).start()
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    failure: BaseException | None = None
    try:
        # (cap_at_expiry=False: as CallerMiddleware binds a request's caller)
        async with (
            bind_caller(caller, cap_at_expiry=False),
            Client(streamable_http_client(f"{server.base}/mcp", http_client=http)) as client,
        ):
            try:
                async with entra_call(http):
                    await client.call_tool("whoami", {"who": "ran"})
            except Exception as exc:
                failure = exc
    finally:
        await http.aclose()
        server.stop()
    return failure, executions, seen


def _note(failure: BaseException | None) -> str:
    assert isinstance(failure, MCPError), repr(failure)
    notes = getattr(failure, "__notes__", [])
    assert len(notes) == 1, notes
    return str(notes[0])


async def test_a_refused_tools_list_after_a_call_that_ran_says_it_ran_and_why() -> None:
    """Before: the note said only "its error came after it was sent"."""
    world, users = world_with_users(2)
    with EntraEmulator(world=world) as idp:
        user = users[1]
        token = agent_token(idp, user)
        failure, executions, seen = await _call_once(idp, Caller.from_token(token), hold=None)
    assert executions == [("ran", user.oid)]  # ran once, never resent
    assert seen == ["tools/list", "tools/list"]  # the auth's one retry with a new token
    note = _note(failure)
    assert "reached the MCP server and ran (HTTP 200)" in note, note
    assert "tools/list sent after it was refused (HTTP 401)" in note, note
    assert "the server does not accept the token" in note, note
    assert "list the tools once after connecting" in note, note
    assert "not sent again" in note, note
    assert token not in note
    assert token not in str(failure)


async def test_a_tools_list_whose_token_ended_on_its_way_says_so() -> None:
    """The MCP server's tokens live 3 s and reach it after their end (a queue in front of it):
    said as that, not as a token the server does not accept."""
    world, users = world_with_users(2)
    with EntraEmulator(world=world.with_lifetimes(Lifetimes(access_token=3))) as short:
        user = users[1]
        token = agent_token(short, user)
        failure, executions, seen = await _call_once(
            short, Caller.from_token(token), hold=lambda exp: exp
        )
    assert executions == [("ran", user.oid)]
    assert seen == ["tools/list", "tools/list"]
    note = _note(failure)
    assert "ran (HTTP 200)" in note, note
    assert "had expired, or was about to, when the server read it" in note, note
    assert "does not accept the token" not in note, note


async def test_a_tools_list_refused_once_the_users_token_expired_says_sign_in_again() -> None:
    """The user's token ends 3 s after issue; the call's token ends with it and is refused
    then, and the retry gets no token (``AssertionExpired``): said so, with its fix."""
    world, users = world_with_users(2)
    with EntraEmulator(world=world) as idp:
        user = users[1]
        token = agent_token(idp, user, lifetime=3)
        caller = Caller.from_token(token)
        ends = caller.claims.exp  # type: ignore[union-attr]
        # (the emulator's MCP token outlives the user's; the library serves it to the user's end)
        failure, executions, seen = await _call_once(idp, caller, hold=lambda _exp: ends)
    assert executions == [("ran", user.oid)]
    assert seen == ["tools/list"]  # no token for a retry: not sent again
    note = _note(failure)
    assert "ran (HTTP 200)" in note, note
    assert "the user's token has expired (AssertionExpired" in note, note
    assert "signs in again" in note, note


async def test_tools_listed_once_after_connecting_no_tools_list_follows_a_call() -> None:
    """The avoidance the note names: with the tools listed once after connecting, the SDK
    sends no ``tools/list`` after a call, so none can be refused (the wrapper refuses every
    ``tools/list`` once armed, after the first listing)."""
    world, users = world_with_users(2)
    with EntraEmulator(world=world) as idp:
        user = users[1]
        executions: list[tuple[str, str]] = []
        seen: list[str] = []
        armed = False

        def wrap(base: str) -> Any:
            app = build_mcp_app(idp, base_url=base, recorder=Recorder(), executions=executions)
            refusing = _refusing_tools_list(app, base, hold=None, seen=seen)

            async def switch(scope: dict[str, Any], receive: Any, send: Any) -> None:
                await (refusing if armed else app)(scope, receive, send)

            return switch

        server = ServerThread(wrap, name="mcp").start()
        http = entra_http_client(
            chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base]
        )
        try:
            async with (
                bind_caller(token=agent_token(idp, user)),
                Client(streamable_http_client(f"{server.base}/mcp", http_client=http)) as client,
            ):
                async with entra_call(http):
                    await client.list_tools()
                armed = True
                async with entra_call(http):
                    result = await client.call_tool("whoami", {"who": "listed-first"})
        finally:
            await http.aclose()
            server.stop()
    assert not result.is_error
    assert seen == []
    assert executions == [("listed-first", user.oid)]


async def test_a_tools_list_accepted_on_its_retry_is_not_named_as_the_cause() -> None:
    """The ``tools/list`` refused once and accepted on the auth's retry with a new token: the
    call returned its result. A later failure of the block (the app's own) must not be said to
    come from a refused ``tools/list`` whose result was lost."""
    world, users = world_with_users(2)
    with EntraEmulator(world=world) as idp:
        user = users[1]
        executions: list[tuple[str, str]] = []
        seen: list[str] = []

        def wrap(base: str) -> Any:
            app = build_mcp_app(idp, base_url=base, recorder=Recorder(), executions=executions)
            refusing = _refusing_tools_list(app, base, hold=None, seen=seen)

            async def first_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
                await (refusing if not seen else app)(scope, receive, send)

            return first_only

        server = ServerThread(wrap, name="mcp").start()
        http = entra_http_client(
            chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base]
        )
        failure: BaseException | None = None
        try:
            async with (
                bind_caller(token=agent_token(idp, user)),
                Client(streamable_http_client(f"{server.base}/mcp", http_client=http)) as client,
            ):
                try:
                    async with entra_call(http):
                        result = await client.call_tool("whoami", {"who": "answered"})
                        raise RuntimeError("the app failed after the call")
                except RuntimeError as exc:
                    failure = exc
        finally:
            await http.aclose()
            server.stop()
    assert not result.is_error
    assert seen == ["tools/list"]  # refused once; the retry reached the server
    assert executions == [("answered", user.oid)]
    notes = " ".join(getattr(failure, "__notes__", []))
    assert "was refused" not in notes, notes
    assert "result is lost" not in notes, notes
