"""An MCP server that refuses the user's token when the tool connects (403 ``insufficient_scope``
from a server built with the library's own ``auth_settings(scopes=[..., "Files.Write"])``, or
401 ``invalid_token``), and one that is down: the end user's Responses answer carries the typed
explanation (what was refused and why, the missing scope, or that the server could not be
reached), for the shared tool and the per-user pool, streamed or not. Before, every one of them
answered "An internal server error occurred." and the tool raised an untyped ``ToolException``
("Server returned an error response").

Real components: the emulator over HTTPS with MSAL (OBO), real mcp servers under uvicorn on
127.0.0.1 behind ``EntraChallengeMiddleware``, and a real ``ResponsesHostServer`` behind
``install(app)``."""

from __future__ import annotations

import json
import re
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest
from agent_framework import Agent
from agent_framework.exceptions import ToolException
from mcp.server.mcpserver import MCPServer

from _support.mcp_world import (
    Recorder,
    ServerThread,
    agent_token,
    closing_on_shutdown,
    host_app,
    make_chain,
    mcp_scopes,
    recording,
    serve_asgi,
)
from entra_passthrough import InsufficientScope, JwtVerifier, TokenVerificationError, bind_caller
from entra_passthrough.agent_framework import entra_mcp_tool, entra_middleware
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.server import (
    EntraChallengeMiddleware,
    EntraTokenVerifier,
    auth_settings,
    current_user,
)
from entra_passthrough.testing import EntraEmulator

pytestmark = pytest.mark.slow

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
BARE = "An internal server error occurred."


def _guarded_mcp(idp: EntraEmulator, recorder: Recorder, *, audience: str | None = None) -> Any:
    """A real MCP server guarded by the library's own helpers. It requires ``Files.Write`` on
    top of ``access_as_user`` of every delegated token (``auth_settings``), so it refuses a
    token without it on every request, discovery and initialize included. ``audience`` other
    than the MCP app's: it refuses every token as not meant for it (401 ``invalid_token``)."""

    def make(base: str) -> Any:
        jwks = httpx2.AsyncClient(
            verify=ssl.create_default_context(cafile=idp.ca_file), trust_env=False
        )
        verifier = JwtVerifier(
            audiences=[audience] if audience else [idp.mcp.client_id, idp.mcp.app_id_uri],
            tenants=[idp.tenant_id],
            authority_host=idp.url,
            http_client=jwks,
        )
        auth = auth_settings(
            resource_server_url=f"{base}/mcp",
            tenant_id=idp.tenant_id,
            scopes=["access_as_user", "Files.Write"],
            app_id_uri=idp.mcp.app_id_uri,
            authority_host=idp.url,
        )
        server = MCPServer(
            "records",
            token_verifier=EntraTokenVerifier(verifier, app_id_uri=idp.mcp.app_id_uri),
            auth=auth,
        )

        @server.tool()
        async def whoami(who: str = "") -> str:
            return json.dumps({"oid": current_user().oid, "who": who})

        app = server.streamable_http_app(stateless_http=True, json_response=True)
        guarded = recording(EntraChallengeMiddleware(app, settings=auth), recorder)
        return closing_on_shutdown(guarded, jwks)

    return make


@pytest.fixture
def scoped(idp: EntraEmulator) -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    with ServerThread(_guarded_mcp(idp, recorder), name="scoped") as server:
        yield f"{server.base}/mcp", recorder


@contextmanager
def _refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections while it is held: bound, so that no other
    test's server can take it meanwhile (a port merely found free can be), and never listening."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def _host(idp: EntraEmulator, url: str, *, per_user: bool) -> ServerThread:
    client = ScriptedChatClient(tool="whoami", input_argument="who")
    if not per_user:
        tool = entra_mcp_tool("records", url, chain=make_chain(idp), scopes=mcp_scopes(idp))
        agent = Agent(client=client, tools=[tool], middleware=entra_middleware())
        return serve_asgi(host_app(agent), name="host")
    pool = entra_mcp_tool(
        "records", url, chain=make_chain(idp), scopes=mcp_scopes(idp), per_user=True
    )

    async def make_agent() -> Agent:
        return Agent(client=client, tools=[await pool.tool()], middleware=entra_middleware())

    return serve_asgi(host_app(make_agent, close_on_shutdown=[pool]), name="host")


async def _failure(client: httpx2.AsyncClient, token: str, *, stream: bool) -> str:
    """The error message of a failed response (from its ``response.failed`` event when
    streamed). Asserts that it failed and that no token is in the answer."""
    response = await client.post(
        "/responses",
        json={"input": "who am I", "store": True, "stream": stream},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text[:500]
    assert not JWT.search(response.text)
    assert token not in response.text
    if not stream:
        payload = response.json()
        assert payload["status"] == "failed", payload
        return str(payload["error"]["message"])
    failed = [
        json.loads(line.removeprefix("data:"))
        for line in response.text.splitlines()
        if line.startswith("data:") and '"response.failed"' in line
    ]
    assert len(failed) == 1, response.text[-800:]
    return str(failed[0]["response"]["error"]["message"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("per_user", [False, True], ids=["shared", "pool"])
async def test_a_scope_the_user_lacks_is_explained_to_the_end_user(
    idp: EntraEmulator, scoped: tuple[str, Recorder], per_user: bool, stream: bool
) -> None:
    url, recorder = scoped
    host = _host(idp, url, per_user=per_user)
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=90) as client:
            # Twice: the host opens the agent again on the next request, and so does the pool.
            messages = [
                await _failure(client, agent_token(idp, "alice"), stream=stream) for _ in range(2)
            ]
    finally:
        host.stop()
    for message in messages:
        assert BARE not in message
        assert "'records'" in message
        assert "HTTP 403" in message
        assert 'error="insufficient_scope"' in message
        assert f"{idp.mcp.app_id_uri}/Files.Write" in message  # the scope alice lacks
        assert "access_as_user," not in message  # the one she has is not named missing
        assert "Fix:" in message
    seen = recorder.snapshot()
    assert not [s for s in seen if s.rpc == "tools/call"]
    # Nothing is tried again and again: the refused connect's few requests, per response.
    assert {s.status for s in seen} == {403}
    assert len(seen) <= 2 * 4, [(s.rpc, s.status) for s in seen]


async def test_a_token_the_server_does_not_accept_is_explained_to_the_end_user(
    idp: EntraEmulator,
) -> None:
    recorder = Recorder()
    with ServerThread(
        _guarded_mcp(idp, recorder, audience="api://another-resource"), name="foreign"
    ) as server:
        host = _host(idp, f"{server.base}/mcp", per_user=False)
        try:
            async with httpx2.AsyncClient(base_url=host.base, timeout=90) as client:
                message = await _failure(client, agent_token(idp, "alice"), stream=False)
        finally:
            host.stop()
    assert BARE not in message
    assert "'records'" in message
    assert "HTTP 401" in message
    assert 'error="invalid_token"' in message
    assert "does not accept the token" in message
    seen = recorder.snapshot()
    assert seen, "the server was reached"
    assert {s.status for s in seen} == {401}
    # The auth's one retry of an invalid_token, no more.
    assert len(seen) <= 4, [(s.rpc, s.status) for s in seen]


@pytest.mark.parametrize(
    ("per_user", "stream"), [(False, False), (True, True)], ids=["shared-json", "pool-stream"]
)
async def test_a_server_that_is_down_is_explained_to_the_end_user(
    idp: EntraEmulator, per_user: bool, stream: bool
) -> None:
    with _refusing_port() as port:
        host = _host(idp, f"http://127.0.0.1:{port}/mcp", per_user=per_user)
        try:
            # Bounded: the connect's retries end, and the answer comes within the client's timeout.
            async with httpx2.AsyncClient(base_url=host.base, timeout=120) as client:
                message = await _failure(client, agent_token(idp, "alice"), stream=stream)
        finally:
            host.stop()
    assert BARE not in message
    assert f"MCP server 'records' (http://127.0.0.1:{port}):" in message
    assert "could not be reached" in message
    assert "refused the connection" in message
    assert "not a problem with the user's token" in message
    assert "Fix:" in message
    assert "/mcp" not in message  # the origin only, never the path (nor a query)


async def test_the_tool_raises_the_typed_errors_at_its_open(
    idp: EntraEmulator, scoped: tuple[str, Recorder]
) -> None:
    """Outside the host: the failure of the tool's open is the host's public shape, and its
    ``error`` the documented typed error."""
    # Imported here: the other tests of this module run (and fail) on a tree without it.
    from entra_passthrough.agent_framework._signals import MCPServerUnreachable

    url, _ = scoped
    token = agent_token(idp, "alice")
    failures: list[BaseException] = []
    with _refusing_port() as port:
        for target in (url, f"http://127.0.0.1:{port}/mcp"):
            tool = entra_mcp_tool("records", target, chain=make_chain(idp), scopes=mcp_scopes(idp))
            try:
                with bind_caller(token=token), pytest.raises(ToolException) as raised:
                    async with tool:
                        pass
                failures.append(raised.value)
            finally:
                await tool.close()
    refused, down = (getattr(f, "error", None) for f in failures)
    assert isinstance(refused, InsufficientScope), failures[0]
    assert isinstance(refused, TokenVerificationError)
    assert f"{idp.mcp.app_id_uri}/Files.Write" in refused.required
    assert "Files.Write" in (refused.fix or "")
    assert isinstance(down, MCPServerUnreachable), failures[1]
    assert down.server_label == "records"
    assert down.origin.startswith("http://127.0.0.1:")
    for failure in failures:
        assert token not in str(failure)
        assert not JWT.search(str(failure))


async def test_a_scope_of_another_api_in_the_challenge_is_not_quoted(idp: EntraEmulator) -> None:
    """The challenge's ``scope`` is the server's to write: one of another API (a server asking
    an administrator to grant something else) is never quoted in the message or the fix."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from _support.servers import serve_in_thread

    own = f"{idp.mcp.app_id_uri}/Files.Write"
    challenge = f'Bearer error="insufficient_scope", scope="api://evil/Phish.Me {own}"'

    async def refuse(_request: Request) -> Response:
        return Response(
            '{"error": "insufficient_scope"}',
            status_code=403,
            headers={"WWW-Authenticate": challenge},
            media_type="application/json",
        )

    app = Starlette(routes=[Route("/mcp", refuse, methods=["GET", "POST", "DELETE"])])
    token = agent_token(idp, "alice")
    with serve_in_thread(app, name="foreign-scope") as base:
        tool = entra_mcp_tool(
            "records", f"{base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
        )
        try:
            with bind_caller(token=token), pytest.raises(ToolException) as raised:
                async with tool:
                    pass
        finally:
            await tool.close()
    refused = getattr(raised.value, "error", None)
    assert isinstance(refused, InsufficientScope), raised.value
    text = f"{refused} {refused.fix}"
    assert "evil" not in text
    assert own in text
