"""The plain mcp SDK's ``Client`` connecting with no identity to apply: its ``initialize`` goes
out without a token (docs/mcp-client.md, "Connection-lifetime requests", rule 3), and a server
that refuses it is answered with a JSON-RPC error that says why no token was sent and what to
change, instead of the SDK's bare "Server returned an error response"."""

from __future__ import annotations

import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from _support.mcp_world import agent_token, make_chain, mcp_scopes
from entra_passthrough import (
    ConsentRequired,
    ManagedIdentity,
    Policy,
    Timeouts,
    TokenChain,
    bind_caller,
)
from entra_passthrough.mcp import auth_of, entra_http_client
from entra_passthrough.testing import EntraEmulator


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


async def _connect_error(http: object, url: str) -> str:
    with pytest.raises(BaseException) as info:  # noqa: PT011 (the SDK's group, leaves checked)
        async with Client(streamable_http_client(url, http_client=http)):  # type: ignore[arg-type]
            pass
    leaves = [leaf for leaf in _leaves(info.value) if isinstance(leaf, MCPError)]
    assert leaves, info.value
    return str(leaves[0])


async def test_opened_outside_any_caller_says_why_no_token_was_sent(
    idp: EntraEmulator, mcp_server: object
) -> None:
    server, recorder = mcp_server()  # type: ignore[operator]
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    try:
        text = await _connect_error(http, f"{server.base}/mcp")
    finally:
        await http.aclose()
    assert "refused initialize (401)" in text
    assert "sent without a token" in text
    assert "no caller was active" in text
    assert "lifecycle_app=True" in text
    assert "connection-lifetime-requests" in text
    seen = recorder.snapshot()
    assert seen
    assert all(s.oid is None for s in seen)  # nothing was sent as anyone


async def test_a_caller_whose_token_cannot_be_acquired_points_to_the_recorded_error(
    idp: EntraEmulator, mcp_server: object
) -> None:
    server, recorder = mcp_server()  # type: ignore[operator]
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    try:
        async with bind_caller(token=agent_token(idp, idp.users["carol"])) as carol:  # no consent
            text = await _connect_error(http, f"{server.base}/mcp")
            recorded = carol.take_errors()
        assert not auth_of(http).take_errors()
    finally:
        await http.aclose()
    assert "sent without a token" in text
    assert "no token could be acquired for the active caller" in text
    assert "no caller was active" not in text
    assert any(isinstance(e, ConsentRequired) for e in recorded), recorded
    assert all(s.oid is None for s in recorder.snapshot())


async def test_a_connect_that_carries_a_token_is_untouched(
    idp: EntraEmulator, mcp_server: object
) -> None:
    server, recorder = mcp_server()  # type: ignore[operator]
    http = entra_http_client(chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base])
    alice = idp.users["alice"]
    try:
        url = f"{server.base}/mcp"
        async with (
            bind_caller(token=agent_token(idp, alice)),
            Client(streamable_http_client(url, http_client=http)),
        ):
            pass
    finally:
        await http.aclose()
    assert {s.oid for s in recorder.snapshot() if s.method == "POST"} == {alice.oid}


async def test_a_server_outside_the_clients_origins_is_named(
    idp: EntraEmulator, mcp_server: object
) -> None:
    """The caller is fine, but the client was not configured for the server's origin: the
    message names the origin list, not a token that "could not be acquired"."""
    server, recorder = mcp_server()  # type: ignore[operator]
    http = entra_http_client(
        chain=make_chain(idp), scopes=mcp_scopes(idp), origins=["https://mcp.elsewhere.example"]
    )
    try:
        async with bind_caller(token=agent_token(idp, idp.users["alice"])) as alice:
            text = await _connect_error(http, f"{server.base}/mcp")
            assert not alice.take_errors()
    finally:
        await http.aclose()
    assert f"its origin ({server.base}) is not one of the client's origins" in text
    assert "entra_http_client(origins=[...])" in text
    assert "could not be acquired" not in text
    assert all(s.oid is None for s in recorder.snapshot())


async def test_a_lifecycle_identity_that_failed_points_to_its_error(
    idp: EntraEmulator, mcp_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lifecycle_app=True`` names an identity for the connect: when it cannot be acquired
    (no managed identity endpoint here), the message says so, not "the policy names none"."""
    for name in idp.MI_HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    chain = make_chain(idp)
    app = ManagedIdentity(timeouts=Timeouts(connect=2.0, read=2.0, deadline=5.0, retries=0))
    with_app = TokenChain([*chain.sources, app], policy=Policy.USER_ONLY, lifecycle_app=True)
    server, _ = mcp_server()  # type: ignore[operator]
    http = entra_http_client(chain=with_app, scopes=mcp_scopes(idp), origins=[server.base])
    try:
        text = await _connect_error(http, f"{server.base}/mcp")
        recorded = auth_of(http).take_errors()
    finally:
        await http.aclose()
        with_app.close()
    assert "could not be acquired" in text
    assert "policy names no identity" not in text
    assert recorded, "the lifecycle identity's error is recorded on the client's auth"
