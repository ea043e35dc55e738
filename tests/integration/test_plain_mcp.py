"""entra_passthrough.mcp with the plain mcp SDK client, against a real server and the emulator."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from _support.mcp_world import (
    CONSENT_URL,
    Recorder,
    ServerThread,
    agent_token,
    calls,
    make_chain,
    mcp_scopes,
)
from entra_passthrough import ConsentRequired, NoCallerError, bind_caller
from entra_passthrough.mcp import (
    consent_from_exception,
    entra_call,
    entra_http_client,
    url_elicitation_as_error,
)
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

Start = Callable[..., tuple[ServerThread, Recorder]]


def _oid(result: object) -> str:
    content = getattr(result, "content", None)
    assert content, result
    payload = json.loads(content[0].text)
    return str(payload["oid"])


@pytest.mark.parametrize("stateful", [False, True], ids=["stateless", "stateful"])
async def test_one_connection_per_call_tokens(
    idp: EntraEmulator, users: list[User], mcp_server: Start, stateful: bool
) -> None:
    server, recorder = mcp_server(stateful=stateful)
    alice, bob = users[20], users[21]
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    client_cm = Client(streamable_http_client(f"{server.base}/mcp", http_client=http))
    async with bind_caller(token=agent_token(idp, alice)):
        client = await client_cm.__aenter__()  # opened inside alice's request: acts for her
        try:
            async with entra_call(http):
                first = await client.call_tool("whoami", {"who": alice.oid})
        except BaseException:
            await client_cm.__aexit__(None, None, None)
            raise
    alice_done = len(recorder.snapshot())
    second: object = None
    try:
        async with bind_caller(token=agent_token(idp, bob)), entra_call(http):
            if stateful:
                # A principal-bound session refuses bob's token on alice's session (404),
                # never answering as alice. (One connection per user: the AF pool does that.)
                with pytest.raises(MCPError, match="Session not found"):
                    await client.call_tool("whoami", {"who": bob.oid})
            else:
                second = await client.call_tool("whoami", {"who": bob.oid})
    finally:
        await client_cm.__aexit__(None, None, None)  # outside any caller
        await http.aclose()
    seen = recorder.snapshot()
    assert _oid(first) == alice.oid
    if not stateful:
        assert _oid(second) == bob.oid
    assert all(s.oid == s.caller_tag for s in calls(seen) if s.status == 200)
    # After alice's request ended, nothing carried her token (DELETE included).
    assert alice.oid not in {s.oid for s in seen[alice_done:]}
    deletes = [s for s in seen if s.method == "DELETE"]
    assert all(s.oid is None for s in deletes)


async def test_entra_call_raises_typed_errors_before_sending(
    idp: EntraEmulator, users: list[User], mcp_server: Start
) -> None:
    server, recorder = mcp_server()
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    try:
        with pytest.raises(NoCallerError):
            async with entra_call(http):
                pass
        async with bind_caller(token=agent_token(idp, idp.users["carol"])):
            with pytest.raises(ConsentRequired) as info:
                async with entra_call(http):
                    pass
    finally:
        await http.aclose()
    assert info.value.link is not None
    assert info.value.link.startswith("https://")
    assert not recorder.snapshot()


async def test_url_elicitation_maps_to_consent(
    idp: EntraEmulator, users: list[User], mcp_server: Start
) -> None:
    server, _recorder = mcp_server()
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    transport = streamable_http_client(f"{server.base}/mcp", http_client=http)
    try:
        async with (
            bind_caller(token=agent_token(idp, users[22])),
            Client(transport, elicitation_callback=url_elicitation_as_error) as client,
        ):
            with pytest.raises(MCPError) as info:
                async with entra_call(http):
                    await client.call_tool("needs_link", {})
    finally:
        await http.aclose()
    consent = consent_from_exception(info.value, server_label="notes")
    assert consent is not None
    assert consent.link == CONSENT_URL
    assert consent.server_label == "notes"
