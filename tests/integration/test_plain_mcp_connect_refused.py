"""The plain mcp SDK ``Client`` whose connection-lifetime requests (``initialize`` at connect,
``tools/list`` outside ``entra_call``) carry the user's token and are refused with 401
``invalid_token`` or 403 ``insufficient_scope``: the SDK's own error said only "Server returned
an error response". Now its ``MCPError`` says the status, the challenge's error, the missing
scope and the fix (the words ``EntraMCPTool`` uses for its connect), and the typed error is
recorded on the caller (docs/mcp-client.md, "Connection-lifetime requests"). Nothing of the
token, which the refusing server echoes, is quoted.

Also: a call made while the server is down is "not sent (connect, ...)" naming the server's
origin (never its path or query), why, and what to check.

Real components: the emulator and MSAL (OBO), a real MCP server on uvicorn behind the library's
verifier, the plain mcp SDK client."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client, MCPError
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
from entra_passthrough import InsufficientScope, TokenVerificationError, bind_caller
from entra_passthrough.mcp import entra_call, entra_http_client
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _refusing(app: Any, state: dict[str, Any]) -> Any:
    """Answers the JSON-RPC methods in ``state["methods"]`` with ``state["status"]`` and a
    Bearer challenge (``invalid_token`` for 401, ``insufficient_scope`` with ``state["scope"]``
    for 403) whose description and body echo the token it refuses, counting them in
    ``state["refused"]`` (at most ``state["times"]``). The rest goes on to the real server."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        body, replay = await read_json_request(receive)
        method = body.get("method") if isinstance(body, dict) else None
        if method not in state["methods"] or len(state["refused"]) >= state.get("times", 99):
            await app(scope, replay, send)
            return
        state["refused"].append(method)
        token = dict(scope["headers"]).get(b"authorization", b"").removeprefix(b"Bearer ")
        if state["status"] == 401:
            header = b'Bearer error="invalid_token", error_description="' + token + b'"'
        else:
            header = (
                b'Bearer error="insufficient_scope", scope="'
                + state["scope"].encode()
                + b'", error_description="'
                + token
                + b'"'
            )
        await send(
            {
                "type": "http.response.start",
                "status": state["status"],
                "headers": [
                    (b"www-authenticate", header),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b'{"refused": "' + token + b'"}'})

    return wrapper


@pytest.fixture
def refusing_server(idp: EntraEmulator) -> Any:
    started: list[ServerThread] = []

    def start(**state: Any) -> tuple[ServerThread, dict[str, Any], Recorder]:
        state.setdefault("refused", [])
        recorder = Recorder()
        server = ServerThread(
            lambda base: _refusing(build_mcp_app(idp, base_url=base, recorder=recorder), state),
            name="mcp",
        ).start()
        started.append(server)
        return server, state, recorder

    yield start
    for server in started:
        server.stop()


async def _connect_refused(http: Any, url: str) -> str:
    with pytest.raises(BaseException) as info:  # noqa: PT011 (the SDK's group, leaves checked)
        async with Client(streamable_http_client(url, http_client=http)):
            pass
    leaves = [leaf for leaf in _leaves(info.value) if isinstance(leaf, MCPError)]
    assert leaves, info.value
    return str(leaves[0])


async def test_a_401_to_the_users_token_at_connect_says_what_why_and_the_fix(
    idp: EntraEmulator, users: list[User], refusing_server: Any
) -> None:
    server, state, _ = refusing_server(methods={"initialize", "server/discover"}, status=401)
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    token = agent_token(idp, users[0])
    try:
        async with bind_caller(token=token) as caller:
            text = await _connect_refused(http, f"{server.base}/mcp?key=s3cr3t-key")
            recorded = caller.take_errors()
    finally:
        await http.aclose()
    assert state["refused"], "the connect never reached the refusing server"
    assert "Server returned an error response" not in text
    assert f"The MCP server at {server.base} refused the user's token" in text
    assert 'HTTP 401 error="invalid_token" to its ' in text
    assert "The server does not accept the token." in text
    assert "Fix: check that the client's scopes (entra_http_client(scopes=...)) name" in text
    assert "s3cr3t-key" not in text  # the origin only
    assert f"{server.base}/mcp" not in text
    # The typed error, once per request refused: the auth's retry of a request with a fresh
    # token was refused too (mcp 2.3 sends server/discover, then initialize), one record.
    assert len(state["refused"]) > len(set(state["refused"])), state["refused"]
    refusals = [e for e in recorded if isinstance(e, TokenVerificationError)]
    assert len(refusals) == len(set(state["refused"])), recorded
    assert {type(e) for e in refusals} == {TokenVerificationError}
    assert refusals[-1].fix
    assert "entra_http_client(scopes=...)" in refusals[-1].fix
    assert f"entra_passthrough: {refusals[-1]}" == text
    for said in (text, repr(recorded)):
        assert "eyJ" not in said  # neither the user's token nor the OBO token it was swapped for
        assert token not in said


async def test_a_403_at_connect_names_the_missing_scope_typed_on_the_caller(
    idp: EntraEmulator, users: list[User], refusing_server: Any
) -> None:
    needed = f"{idp.mcp.app_id_uri}/Notes.Read"
    server, state, _ = refusing_server(
        methods={"initialize", "server/discover"},
        status=403,
        scope=f"{needed} api://other-app/Files.Write",
    )
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    try:
        async with bind_caller(token=agent_token(idp, users[1])) as caller:
            text = await _connect_refused(http, f"{server.base}/mcp")
            recorded = caller.take_errors()
    finally:
        await http.aclose()
    assert 'HTTP 403 error="insufficient_scope" to its ' in text
    assert f"The token lacks the scope(s) it requires: {needed}." in text
    assert f"Fix: grant {needed} to the agent app" in text
    assert "api://other-app" not in text  # another API's scope is not the server's to name
    assert "eyJ" not in text
    scope_errors = [e for e in recorded if isinstance(e, InsufficientScope)]
    assert len(scope_errors) == len(state["refused"]), recorded  # one per request refused
    assert needed in scope_errors[-1].required
    assert f"entra_passthrough: {scope_errors[-1]}" == text
    assert len(state["refused"]) == len(set(state["refused"]))  # a 403 is not retried


async def test_a_tools_list_refused_outside_entra_call_is_explained(
    idp: EntraEmulator, users: list[User], refusing_server: Any
) -> None:
    server, state, _ = refusing_server(methods=set(), status=403, scope="Notes.Write")
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    try:
        async with (
            bind_caller(token=agent_token(idp, users[2])) as caller,
            Client(streamable_http_client(f"{server.base}/mcp", http_client=http)) as client,
        ):
            state["methods"] = {"tools/list"}
            with pytest.raises(MCPError) as info:
                await client.list_tools()
            recorded = caller.take_errors()
    finally:
        await http.aclose()
    text = str(info.value)
    assert 'HTTP 403 error="insufficient_scope" to its tools/list request' in text
    assert "The token lacks the scope(s) it requires: Notes.Write." in text
    assert [type(e) for e in recorded] == [InsufficientScope]


async def test_a_call_while_the_server_is_down_names_its_origin_why_and_what_to_check(
    idp: EntraEmulator, users: list[User], refusing_server: Any
) -> None:
    server, _, recorder = refusing_server(methods=set(), status=401)
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    url = f"{server.base}/mcp?key=s3cr3t-key"
    try:
        async with (
            bind_caller(token=agent_token(idp, users[3])),
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            await client.list_tools()
            server.stop()
            with pytest.raises(MCPError) as info:
                async with entra_call(http):
                    await client.call_tool("whoami", {"who": "x"})
    finally:
        await http.aclose()
    text = str(info.value)
    assert text.startswith("entra_passthrough: not sent (connect, ConnectError): "), text
    assert f"the MCP server at {server.base} could not be reached: it refused the connection" in (
        text
    )
    assert "Fix: check that the MCP server is running and reachable" in text
    assert "s3cr3t-key" not in text
    assert f"{server.base}/mcp" not in text
    assert not [s for s in recorder.snapshot() if s.rpc == "tools/call"]


async def test_a_tools_list_refused_inside_entra_call_is_raised_typed(
    idp: EntraEmulator, users: list[User], refusing_server: Any
) -> None:
    """The docs advise listing the tools once inside ``entra_call``: its refusal is raised as
    the typed error there, like a ``tools/call``'s."""
    server, state, _ = refusing_server(methods=set(), status=403, scope="Notes.Write")
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    try:
        async with (
            bind_caller(token=agent_token(idp, users[5])) as caller,
            Client(streamable_http_client(f"{server.base}/mcp", http_client=http)) as client,
        ):
            state["methods"] = {"tools/list"}
            with pytest.raises(InsufficientScope) as info:
                async with entra_call(http):
                    await client.list_tools()
            assert not caller.take_errors()  # taken by entra_call, which raised it
    finally:
        await http.aclose()
    text = str(info.value)
    assert f"The MCP server at {server.base} refused the user's token" in text
    assert 'HTTP 403 error="insufficient_scope" to its tools/list request)' in text
    assert "connection-lifetime" not in text
    assert "The token lacks the scope(s) it requires: Notes.Write." in text
    assert info.value.required == ("Notes.Write",)
    assert state["refused"] == ["tools/list"]


async def test_a_401_the_retry_gets_past_leaves_no_error_on_the_caller(
    idp: EntraEmulator, users: list[User], refusing_server: Any
) -> None:
    """The auth sends a 401 ``invalid_token`` again once with a fresh token; accepted, the first
    refusal is not the caller's error (a later ``entra_call`` would raise it otherwise)."""
    server, state, recorder = refusing_server(
        methods={"initialize", "server/discover", "tools/list"}, status=401, times=1
    )
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    user = users[6]
    try:
        async with (
            bind_caller(token=agent_token(idp, user)) as caller,
            Client(streamable_http_client(f"{server.base}/mcp", http_client=http)) as client,
        ):
            assert caller.take_errors() == []
            state["refused"].clear()  # once more, inside entra_call
            async with entra_call(http):
                await client.list_tools()
                result = await client.call_tool("whoami", {"who": "x"})
            assert caller.take_errors() == []
    finally:
        await http.aclose()
    assert state["refused"], "nothing was refused"
    assert not result.is_error
    assert [s.rpc for s in recorder.snapshot() if s.rpc == "tools/call"] == ["tools/call"]
