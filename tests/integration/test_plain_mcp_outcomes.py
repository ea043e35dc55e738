"""The plain mcp SDK client through ``entra_call``: what a failed call says about whether it ran.

A real MCP server (Entra tokens verified against the emulator) on uvicorn; the mcp SDK's
``Client`` with ``entra_http_client``. The server's own record of its tool runs is the truth
each error is checked against: a call that ran never reads "not sent", and a call refused for
its token (HTTP 401/403, which the SDK reports as "Server returned an error response", like a
503) is a typed error that says it did not run."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress
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
from entra_passthrough import (
    ConsentRequired,
    InsufficientScope,
    InteractionRequired,
    TokenVerificationError,
    bind_caller,
)
from entra_passthrough.mcp import consent_from_exception, entra_call, entra_http_client
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

ASGI = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

#: ``who`` of a call -> what the server answers it instead of running it: (status, headers).
REFUSALS: dict[str, tuple[int, list[tuple[bytes, bytes]]]] = {
    "refused-403": (
        403,
        [(b"www-authenticate", b'Bearer error="insufficient_scope", scope="Notes.Write"')],
    ),
    "refused-401": (401, [(b"www-authenticate", b'Bearer error="invalid_token"')]),
    # Claims in a 403 (not RFC 6750): not a missing scope.
    "refused-403-claims": (
        403,
        [(b"www-authenticate", b'Bearer error="insufficient_claims", claims="e30="')],
    ),
    "busy-503": (503, [(b"retry-after", b"1")]),
}


def _refusing(app: ASGI) -> ASGI:
    """Answers the ``tools/call`` of a ``who`` in ``REFUSALS`` with that status (nothing runs);
    everything else reaches the server."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await app(scope, receive, send)
        body, replay = await read_json_request(receive)
        who = None
        if isinstance(body, dict) and body.get("method") == "tools/call":
            who = ((body.get("params") or {}).get("arguments") or {}).get("who")
        if who not in REFUSALS:
            return await app(scope, replay, send)
        status, headers = REFUSALS[who]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    return wrapper


class _StopsAfterAnswer:
    """Stops accepting connections just before the answer to an armed ``tools/call`` goes out
    (with ``Connection: close``): the call has run, and the request the mcp SDK sends next
    (``tools/list``, for the tool's output schema) is refused at connect."""

    def __init__(self) -> None:
        self.armed = False
        self.server: ServerThread | None = None

    def wrap(self, app: ASGI) -> ASGI:
        async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)

            async def sending(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start" and self.armed:
                    self.armed = False
                    assert self.server is not None
                    for listening in self.server._server.servers:  # uvicorn's asyncio servers
                        listening.close()
                    message = {
                        **message,
                        "headers": [*message.get("headers", []), (b"connection", b"close")],
                    }
                await send(message)

            return await app(scope, receive, sending)

        return wrapper


@pytest.fixture
def started() -> Iterator[list[ServerThread]]:
    servers: list[ServerThread] = []
    yield servers
    for server in servers:
        server.stop()


def _server(
    idp: EntraEmulator,
    started: list[ServerThread],
    executions: list[tuple[str, str]],
    wrap: Callable[[ASGI], ASGI],
) -> ServerThread:
    server = ServerThread(
        lambda base: wrap(
            build_mcp_app(idp, base_url=base, recorder=Recorder(), executions=executions)
        ),
        name="mcp",
    )
    started.append(server)
    return server.start()


async def test_a_call_that_ran_never_reads_not_sent_when_the_next_request_cannot_connect(
    idp: EntraEmulator, users: list[User], started: list[ServerThread]
) -> None:
    """After a tool's first call on a session the mcp SDK sends ``tools/list`` from the call's
    own task, and raises that request's answer as the call's error. The server went away
    between the two: the call ran once, and its error says so (before: "entra_passthrough: not
    sent (connect, ConnectError)", which invites sending it again)."""
    executions: list[tuple[str, str]] = []
    stops = _StopsAfterAnswer()
    server = _server(idp, started, executions, stops.wrap)
    stops.server = server
    user = users[30]
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    error: BaseException | None = None
    try:
        async with bind_caller(token=agent_token(idp, user)):
            client_cm = Client(streamable_http_client(f"{server.base}/mcp", http_client=http))
            client = await client_cm.__aenter__()
            try:
                stops.armed = True
                with pytest.raises(MCPError) as raised:
                    async with entra_call(http):
                        await client.call_tool("whoami", {"who": "ran-once"})
                error = raised.value
            finally:
                with suppress(Exception):  # closing against a server that is gone
                    await client_cm.__aexit__(None, None, None)
    finally:
        await http.aclose()
    assert executions == [("ran-once", user.oid)]
    text = str(error)
    assert not text.startswith("entra_passthrough: not sent"), text
    assert "may have run" in text, text
    notes = getattr(error, "__notes__", [])
    assert any("may have run" in note for note in notes), notes


@pytest.mark.parametrize(
    ("who", "typed", "status"),
    [
        ("refused-403", InsufficientScope, 403),
        ("refused-401", TokenVerificationError, 401),
        ("refused-403-claims", TokenVerificationError, 403),
    ],
)
async def test_a_call_refused_for_its_token_is_a_typed_error_that_says_it_did_not_run(
    idp: EntraEmulator,
    users: list[User],
    started: list[ServerThread],
    who: str,
    typed: type[TokenVerificationError],
    status: int,
) -> None:
    executions: list[tuple[str, str]] = []
    server = _server(idp, started, executions, _refusing)
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    try:
        async with (
            bind_caller(token=agent_token(idp, users[31])),
            Client(streamable_http_client(f"{server.base}/mcp", http_client=http)) as client,
        ):
            with pytest.raises(typed) as raised:
                async with entra_call(http):
                    await client.call_tool("whoami", {"who": who})
            # The connection survives the refusal: the next call runs.
            async with entra_call(http):
                after = await client.call_tool("whoami", {"who": "after"})
    finally:
        await http.aclose()
    assert type(raised.value) is typed
    text = str(raised.value)
    assert f"HTTP {status}" in text, text
    assert "did not run" in text, text
    assert raised.value.fix, text
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__
    assert [w for w, _ in executions] == ["after"]
    assert json.loads(after.content[0].text)["who"] == "after"


async def test_a_call_answered_503_keeps_the_sdk_error_with_a_may_have_run_note(
    idp: EntraEmulator, users: list[User], started: list[ServerThread]
) -> None:
    """A 503 does not say the tool did not run: the SDK's error stands (never typed as a
    refusal), with a note naming the status and the server's Retry-After."""
    executions: list[tuple[str, str]] = []
    server = _server(idp, started, executions, _refusing)
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    try:
        async with (
            bind_caller(token=agent_token(idp, users[32])),
            Client(streamable_http_client(f"{server.base}/mcp", http_client=http)) as client,
        ):
            with pytest.raises(MCPError) as raised:
                async with entra_call(http):
                    await client.call_tool("whoami", {"who": "busy-503"})
    finally:
        await http.aclose()
    notes = getattr(raised.value, "__notes__", [])
    assert len(notes) == 1, notes
    assert "may have run" in notes[0], notes
    assert "HTTP 503" in notes[0], notes
    assert "Retry-After: 1 s" in notes[0], notes
    assert executions == []


def test_a_consent_the_chain_outranked_is_not_taken_from_its_errors_context() -> None:
    """The chain meets DelegatedConsent's ConsentRequired, then raises OnBehalfOf's
    InteractionRequired (MFA), which it ranked first: the consent is that error's context
    (raised while it was handled). The user must do what the chain chose, not sign in at the
    broker; a consent the chain itself raised is still found inside a tool's error."""
    broker = "https://broker.example/consent/start?t=1"

    def chain_error() -> InteractionRequired:
        try:
            try:
                raise ConsentRequired("no grant", link=broker)
            except ConsentRequired:
                raise InteractionRequired("MFA required", claims="{}") from None
        except InteractionRequired as exc:
            return exc

    assert chain_error().__context__ is not None  # kept, though suppressed
    assert consent_from_exception(chain_error()) is None
    wrapped = RuntimeError("tool failed")
    wrapped.__cause__ = chain_error()
    assert consent_from_exception(wrapped) is None
    chosen = RuntimeError("tool failed")
    chosen.__cause__ = ConsentRequired("no grant", link=broker)
    found = consent_from_exception(chosen)
    assert found is not None
    assert found.link == broker
