"""The toolbox route is a gateway, and its errors are the toolbox's:

* a ``tools/call`` the toolbox forwarded and whose connection was then reset is never sent again
  by default (it ran: ``CallOutcomeUnknown``); ``ENTRA_PASSTHROUGH_MCP_RESEND_ON_RESET=true``
  set explicitly still resends;
* a per-user pool keys a request that names its user by call id alone by that call id, never by
  the app (whose connection and tool list another user's request made);
* a per-user pool that cannot key a request says why in the host's public shape, never the
  host's bare "An internal server error occurred.";
* ``FOUNDRY_AGENT_TOOLSET_FEATURES`` / ``features=`` that no header can carry is refused when
  the route is built, naming where it was set and not quoting it; a call id no header can carry
  is refused with a reason about the call id, not a token source's headers;
* the toolbox's 403 to a call id it does not accept is said as that (the agent's own token is
  the expected credential there), not as a missing scope of "the app's own token: no user".

Real components: the emulator over HTTPS (the agent's managed identity through MSAL), the
toolbox stand-in under uvicorn, a TCP hop in front of it, a real ``ResponsesHostServer``."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx2
import pytest
from agent_framework import Agent
from agent_framework.exceptions import ToolException
from agent_framework_foundry_hosting import ResponsesHostServer

from _support.servers import LoopbackHop, serve_in_thread
from entra_passthrough import (
    Caller,
    ConfigurationError,
    FoundryToolboxRoute,
    InsufficientScope,
    JwtVerifier,
    Policy,
    PolicyViolation,
    TokenChain,
    TokenVerificationError,
    bind_caller,
)
from entra_passthrough.agent_framework import (
    CallOutcomeUnknown,
    entra_mcp_tool,
    entra_middleware,
    install,
)
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.testing import FOUNDRY_AUDIENCE, EntraEmulator, ToolboxStandIn

from .conftest import agent_mi, toolbox_chain

SCOPES = ["https://ai.azure.com/.default"]
RESEND = "ENTRA_PASSTHROUGH_MCP_RESEND_ON_RESET"


# -- 1. a gateway that forwards a call and then resets ----------------------------------------


class _ForwardThenReset(LoopbackHop):
    """A TCP hop in front of the toolbox that passes every byte both ways, except for the first
    ``tools/call``: forwarded (the tool runs), its answer dropped, and the client's connection
    reset at once (SO_LINGER 0), before any answer byte: what a gateway that forwards a call and
    then fails does."""

    def __init__(self, upstream: int) -> None:
        super().__init__()
        self.upstream = upstream
        self.calls = 0  # tools/call requests that reached the hop

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cut = asyncio.Event()
        answers: asyncio.Task[None] | None = None
        upstream: asyncio.StreamWriter | None = None

        async def relay(source: asyncio.StreamReader) -> None:
            try:
                while data := await source.read(65536):
                    if cut.is_set():
                        self._reset(writer)  # the tool ran; its answer never reaches the client
                        return
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            writer.close()

        try:
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream)
            answers = asyncio.create_task(relay(up_reader))
            while data := await reader.read(65536):
                if b'"tools/call"' in data:
                    self.calls += 1
                    if self.calls == 1:
                        cut.set()
                upstream.write(data)
                await upstream.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if answers is not None:
                if cut.is_set():
                    with suppress(asyncio.CancelledError, TimeoutError, OSError):
                        await asyncio.wait_for(answers, 10)
                else:
                    answers.cancel()
            if upstream is not None:
                upstream.transport.abort()
            writer.transport.abort()


async def _call_through_resetting_gateway(
    idp: EntraEmulator, toolbox: ToolboxStandIn
) -> tuple[object, int, int]:
    """(the call's result or error, the tool's runs, the tools/call requests the hop saw)."""
    hop = _ForwardThenReset(toolbox.port)
    await hop.start()
    chain = toolbox_chain(idp)
    url = f"http://127.0.0.1:{hop.port}/toolboxes/{toolbox.name}/mcp"
    tool = entra_mcp_tool("toolbox", url, chain=chain, scopes=SCOPES)
    outcome: object
    try:
        async with tool:
            with bind_caller(Caller.from_token(None, call_id=toolbox.call_id("alice"))):
                try:
                    outcome = await asyncio.wait_for(tool.call_tool("whoami"), 60)
                except Exception as exc:
                    outcome = exc
    finally:
        await hop.aclose()
        chain.close()
    return outcome, toolbox.stats().get("tool_ran", 0), hop.calls


async def test_a_call_the_toolbox_forwarded_then_reset_runs_once_and_is_not_resent(
    idp: EntraEmulator, toolbox: ToolboxStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(RESEND, raising=False)
    outcome, ran, sent = await _call_through_resetting_gateway(idp, toolbox)
    assert (ran, sent) == (1, 1)
    assert isinstance(outcome, CallOutcomeUnknown), repr(outcome)
    assert "may have run" in str(outcome)


async def test_the_resend_after_a_reset_through_the_toolbox_is_an_explicit_choice(
    idp: EntraEmulator, toolbox: ToolboxStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set to true, the variable means what it says, the route notwithstanding: the call is
    taken as unread and sent again (and here, behind a gateway that forwarded it, runs twice,
    which is why it is off by default for the toolbox)."""
    monkeypatch.setenv(RESEND, "true")
    outcome, ran, sent = await _call_through_resetting_gateway(idp, toolbox)
    assert (ran, sent) == (2, 2)
    assert not isinstance(outcome, Exception), repr(outcome)


# -- hosted agent helpers ----------------------------------------------------------------------


@contextmanager
def _hosted(idp: EntraEmulator, url: str, *, chain: TokenChain, verifier: bool) -> Iterator[str]:
    pool = entra_mcp_tool("toolbox", url, chain=chain, scopes=SCOPES, per_user=True)

    async def make_agent() -> Agent:
        return Agent(
            client=ScriptedChatClient(tool="whoami"),
            tools=[await pool.tool()],
            middleware=entra_middleware(),
        )

    jwks = httpx2.AsyncClient(verify=ssl.create_default_context(cafile=idp.ca_file))
    checks = JwtVerifier(
        audiences=[FOUNDRY_AUDIENCE, idp.foundry.client_id],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        http_client=jwks,
    )
    host = ResponsesHostServer(make_agent, configure_observability=None)
    app = install(host, verifier=checks if verifier else None, close_on_shutdown=[pool, jwks])
    try:
        with serve_in_thread(app) as base:
            yield base
    finally:
        chain.close()


def _outcome(payload: dict[str, Any]) -> str:
    if payload.get("error"):
        return f"error {payload['error'].get('message')}"
    for item in payload.get("output", []):
        if item.get("type") == "oauth_consent_request":
            return f"consent {item.get('consent_link')}"
    for item in payload.get("output", []):
        if item.get("type") == "message":
            for part in item.get("content", []):
                text = part.get("text", "")
                start = text.find("{")
                if start >= 0:
                    return f"answer {json.loads(text[start:])['user']}"
    return json.dumps(payload)[:300]


# -- 2. a request naming its user by call id alone ---------------------------------------------


async def test_a_pool_keys_a_request_naming_its_user_by_call_id_alone_by_that_call_id(
    idp: EntraEmulator,
    toolbox: ToolboxStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No bearer, no platform user id: only the call id names the user. Each request gets a
    connection of its own, listed with its call id: bob meets his tools/list consent check."""
    monkeypatch.setenv("AGENTSERVER_STATE_ROOT", str(tmp_path / "agentserver"))
    link = toolbox.require_consent("bob", on=["tools/list"])
    outcomes: dict[str, str] = {}
    with _hosted(idp, toolbox.url, chain=toolbox_chain(idp), verifier=True) as base:
        async with httpx2.AsyncClient(base_url=base, timeout=60, trust_env=False) as client:
            for user in ("alice", "bob", "carol"):
                answer = await client.post(
                    "/responses",
                    json={"input": "who am I?", "store": True},
                    headers={"x-agent-foundry-call-id": toolbox.call_id(user)},
                )
                assert answer.status_code == 200, answer.text[:300]
                outcomes[user] = _outcome(answer.json())
    assert outcomes == {
        "alice": "answer alice",
        "bob": f"consent {link}",
        "carol": "answer carol",
    }
    listed = [s.user for s in toolbox.seen() if s.rpc == "tools/list"]
    assert sorted(set(listed)) == ["alice", "bob", "carol"], listed


# -- 3. a request the pool cannot key ----------------------------------------------------------


async def test_a_request_the_pool_cannot_key_is_told_why_not_a_bare_server_error(
    idp: EntraEmulator,
    toolbox: ToolboxStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A per-user pool without a verifier, an app-only chain (the app's token names no user),
    a request with an unverified bearer and no platform user id or call id: nothing to key a
    connection by. The client reads the explanation and its fix; nothing reaches the server."""
    monkeypatch.setenv("AGENTSERVER_STATE_ROOT", str(tmp_path / "agentserver"))
    chain = TokenChain([agent_mi(idp)], policy=Policy.APP_ONLY)
    with _hosted(idp, toolbox.url, chain=chain, verifier=False) as base:
        async with httpx2.AsyncClient(base_url=base, timeout=60, trust_env=False) as client:
            token = idp.user_token("alice", audience=FOUNDRY_AUDIENCE)
            answer = await client.post(
                "/responses",
                json={"input": "who am I?", "store": True},
                headers={"Authorization": f"Bearer {token}"},
            )
    said = _outcome(answer.json())
    assert "An internal server error occurred." not in said, said
    assert "found no identity to key the caller's connection by" in said, said
    assert "verifier" in said, said
    assert "Fix:" in said, said
    assert token not in said
    assert toolbox.stats().get("requests", 0) == 0


# -- 4. features no header can carry; a call id no header can carry ----------------------------


@pytest.mark.parametrize("bad", ["Agents=V2Preview\r\nX-Extra: 1", "Agents=V2Prévu", "A\x07B"])
def test_features_no_header_can_carry_are_refused_when_the_route_is_built(
    idp: EntraEmulator, bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError) as given:
        FoundryToolboxRoute(agent_mi(idp), features=bad)
    assert "FoundryToolboxRoute(features=)" in str(given.value)
    monkeypatch.setenv("FOUNDRY_AGENT_TOOLSET_FEATURES", bad)
    with pytest.raises(ConfigurationError) as from_environ:
        FoundryToolboxRoute(agent_mi(idp))
    with pytest.raises(ConfigurationError) as from_env:
        FoundryToolboxRoute.from_env({**idp.mi_env(), "FOUNDRY_AGENT_TOOLSET_FEATURES": bad})
    for error in (given.value, from_environ.value, from_env.value):
        text = str(error)
        assert "header" in text, text
        assert "Fix:" in text, text
        for quoted in ("Prévu", "X-Extra", "A\x07B"):  # the value is never quoted
            assert quoted not in text, text
        assert "TokenResult.headers" not in text
    for error in (from_environ.value, from_env.value):
        assert "FOUNDRY_AGENT_TOOLSET_FEATURES" in str(error)


def test_good_features_are_still_merged(idp: EntraEmulator) -> None:
    route = FoundryToolboxRoute(agent_mi(idp), features=" Agents=V2Preview , Other=1 ")
    assert route.features == "Toolboxes=V1Preview,Agents=V2Preview,Other=1"


async def test_a_call_id_no_header_can_carry_is_refused_as_such(
    idp: EntraEmulator, toolbox: ToolboxStandIn
) -> None:
    chain = toolbox_chain(idp)
    tool = entra_mcp_tool("toolbox", toolbox.url, chain=chain, scopes=SCOPES)
    try:
        async with tool:
            caller = Caller.from_token(None, call_id="call_Жанна")
            with bind_caller(caller), pytest.raises(PolicyViolation) as refused:
                await tool.call_tool("whoami")
    finally:
        chain.close()
    text = str(refused.value)
    assert "x-agent-foundry-call-id" in text, text
    assert "cannot carry" in text, text
    assert "TokenResult.headers" not in text, text
    assert toolbox.stats().get("tools/call", 0) == 0


# -- 5. the toolbox's 403 ----------------------------------------------------------------------


async def test_the_toolboxs_403_to_an_unknown_call_id_is_said_as_the_toolboxs(
    idp: EntraEmulator, toolbox: ToolboxStandIn
) -> None:
    chain = toolbox_chain(idp)
    tool = entra_mcp_tool("toolbox", toolbox.url, chain=chain, scopes=SCOPES)
    try:
        async with tool:
            caller = Caller.from_token(None, call_id="call_unknown0000")
            with bind_caller(caller), pytest.raises(TokenVerificationError) as refused:
                await tool.call_tool("whoami")
    finally:
        chain.close()
    error = refused.value
    text = str(error)
    assert not isinstance(error, InsufficientScope), text
    assert "HTTP 403" in text, text
    assert "did not accept the call id" in text, text
    assert "x-agent-foundry-call-id" in text
    for wrong in ("lacks a scope", "app's own", "no user", "app role"):
        assert wrong not in text, text
    assert toolbox.stats().get("unknown_call", 0) == 1
    assert toolbox.stats().get("tool_ran", 0) == 0


async def test_the_toolboxs_403_at_a_pooled_connect_is_said_as_the_toolboxs(
    idp: EntraEmulator, toolbox: ToolboxStandIn
) -> None:
    """A per-user connection lists its tools with the user's call id: refused (403) there, the
    error names the agent's token for that call id, not "the app's own token: no user"."""
    chain = toolbox_chain(idp)
    pool = entra_mcp_tool("toolbox", toolbox.url, chain=chain, scopes=SCOPES, per_user=True)
    try:
        async with pool:
            with bind_caller(Caller.from_token(None, call_id="call_unknown0001")):
                tool = await pool.tool()
                with pytest.raises(ToolException, match="HTTP 403") as refused:
                    async with tool:
                        pass
    finally:
        chain.close()
    text = str(refused.value)
    assert "HTTP 403" in text, text
    assert "did not accept the call id" in text, text
    for wrong in ("lacks a scope", "app's own", "app role"):
        assert wrong not in text, text
