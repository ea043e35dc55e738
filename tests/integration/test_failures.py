"""Consent, auth failures, stale contexts and background runs, through a real ResponsesHostServer,
a real mcp server and the emulator."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest
from agent_framework import Agent
from agent_framework_foundry_hosting import ResponsesHostServer

from _support.mcp_world import (
    CONSENT_URL,
    Recorder,
    ServerThread,
    agent_token,
    calls,
    host_app,
    lifecycle,
    make_chain,
    mcp_scopes,
    respond,
    seen_oid,
    serve_asgi,
)
from entra_passthrough import CallerMiddleware, NoCallerError
from entra_passthrough.agent_framework import entra_mcp_tool, entra_middleware
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.testing import FOUNDRY_AUDIENCE, EntraEmulator
from entra_passthrough.testing._world import User

Start = Callable[..., tuple[ServerThread, Recorder]]


def _agent(tool: Any, **client: Any) -> Agent:
    return Agent(
        client=ScriptedChatClient(tool="whoami", input_argument="who", **client),
        tools=[tool],
        middleware=entra_middleware(),
    )


@pytest.fixture
def shared(idp: EntraEmulator, mcp_server: Start) -> Iterator[tuple[str, Recorder, ServerThread]]:
    server, recorder = mcp_server()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    host = serve_asgi(host_app(_agent(tool)), name="host")
    try:
        yield host.base, recorder, server
    finally:
        host.stop()


async def test_consent_surfaces_as_oauth_consent_request(
    idp: EntraEmulator, users: list[User], shared: tuple[str, Recorder, ServerThread]
) -> None:
    base, recorder, _ = shared
    carol = idp.users["carol"]  # has not consented to the agent calling the MCP API
    async with httpx2.AsyncClient(base_url=base, timeout=30) as client:
        first = await respond(client, agent_token(idp, users[0]), users[0].oid)
        payload = await respond(client, agent_token(idp, carol), carol.oid, store=True)
        items = [i for i in payload["output"] if i.get("type") == "oauth_consent_request"]
        assert payload["status"] == "incomplete"
        assert len(items) == 1
        link = items[0]["consent_link"]
        assert link.startswith(f"{idp.url}/")
        assert "prompt=consent" in link
        assert idp.agent.client_id in link
        assert items[0]["server_label"] == "records"
        # Nothing reached the MCP server for carol, and the connection still serves everyone.
        assert carol.oid not in {s.oid for s in recorder.snapshot()}
        after = await respond(client, agent_token(idp, users[1]), users[1].oid)
        # Once carol consents, her next call goes through as herself.
        idp.grant_consent("carol", idp.agent.client_id, ["access_as_user"])
        try:
            consented = await respond(client, agent_token(idp, carol), carol.oid)
        finally:
            idp.revoke_consent("carol", idp.agent.client_id)
    assert seen_oid(first) == users[0].oid
    assert seen_oid(after) == users[1].oid
    assert seen_oid(consented) == carol.oid
    assert len([s for s in recorder.snapshot() if s.rpc == "server/discover"]) == 1


async def test_unusable_caller_gets_explained_error_and_connection_survives(
    idp: EntraEmulator, users: list[User], shared: tuple[str, Recorder, ServerThread]
) -> None:
    base, recorder, _ = shared
    foundry_token = idp.user_token(users[2], audience=FOUNDRY_AUDIENCE)
    async with httpx2.AsyncClient(base_url=base, timeout=30) as client:
        ok = await respond(client, agent_token(idp, users[0]), users[0].oid)
        failed = await respond(client, foundry_token, users[2].oid)
        idp.inject_fault("token", status=503, count=50)  # Entra down for the next OBO
        try:
            down = await respond(client, agent_token(idp, users[3]), users[3].oid)
        finally:
            idp.clear_faults()
        # The failing endpoint is not hammered (a short negative cache): poll, bounded, until
        # the next call of that user goes through on the same connection.
        for _ in range(40):
            again = await respond(client, agent_token(idp, users[3]), users[3].oid)
            if seen_oid(again) is not None:
                break
            await asyncio.sleep(0.25)
    assert seen_oid(ok) == users[0].oid
    # The token for https://ai.azure.com was never exchanged nor forwarded, and no app identity
    # stood in for the user: the MCP server never saw that request at all.
    assert seen_oid(failed) is None
    assert seen_oid(down) is None
    seen = recorder.snapshot()
    assert users[2].oid not in {s.oid for s in seen}
    # The connection survived both failures: no reconnect, and the next call works.
    assert seen_oid(again) == users[3].oid
    assert len([s for s in seen if s.rpc == "server/discover"]) == 1
    assert all(s.oid == s.caller_tag for s in calls(seen))


async def test_failed_discovery_does_not_poison_the_tool(
    idp: EntraEmulator, users: list[User], mcp_server: Start
) -> None:
    server, recorder = mcp_server()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    host = serve_asgi(host_app(_agent(tool)), name="host")
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=30) as client:
            # The first request's user cannot get a token: the connect resolves it first, so
            # nothing at all is sent for that user, and the run fails with the explanation.
            idp.inject_fault("token", status=503, count=50)
            try:
                response = await client.post(
                    "/responses",
                    json={"input": users[4].oid, "store": False},
                    headers={"Authorization": f"Bearer {agent_token(idp, users[4])}"},
                )
            finally:
                idp.clear_faults()
            assert response.json().get("status") in ("failed", "incomplete")
            assert recorder.snapshot() == []
            # The endpoint that just failed is not hammered (a short negative cache): poll,
            # bounded, until the next user's request connects.
            for _ in range(40):
                ok = await respond(client, agent_token(idp, users[5]), users[5].oid)
                if seen_oid(ok) is not None:
                    break
                await asyncio.sleep(0.25)
    finally:
        host.stop()
    assert seen_oid(ok) == users[5].oid
    seen = recorder.snapshot()
    assert users[4].oid not in {s.oid for s in seen}
    assert [s.oid for s in seen if s.rpc == "server/discover"][-1] == users[5].oid


async def test_lifecycle_requests_never_carry_a_stale_token(
    idp: EntraEmulator, users: list[User], mcp_server: Start
) -> None:
    """Shared tool, principal-bound stateful server: alice connects; after her request ended,
    nothing carries her token; bob's call after a server restart reconnects as bob; DELETEs
    carry no user token once their user's request is over."""
    server, recorder = mcp_server(stateful=True)
    alice, bob = users[6], users[7]
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    host = serve_asgi(host_app(_agent(tool)), name="host")
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=30) as client:
            first = await respond(client, agent_token(idp, alice), alice.oid)
            alice_done = len(recorder.snapshot())
            server.restart()  # every session is gone: the next call meets 404 "Session not found"
            second = await respond(client, agent_token(idp, bob), bob.oid)
            bob_done = len(recorder.snapshot())
    finally:
        host.stop()  # closes the agent: its connection's DELETE happens after bob's request
    seen = recorder.snapshot()
    assert seen_oid(first) == alice.oid
    assert seen_oid(second) == bob.oid
    # While alice's request ran, the connection (opened by her call) acted for her only.
    assert {s.oid for s in seen[:alice_done]} <= {alice.oid, None}
    assert alice.oid in {s.oid for s in seen[:alice_done] if s.rpc == "initialize"}
    later = seen[alice_done:]
    assert alice.oid not in {s.oid for s in later}, later
    reopened = [s for s in later if s.rpc == "initialize"]
    assert reopened
    assert {s.oid for s in reopened} == {bob.oid}
    assert bob.oid not in {s.oid for s in seen[bob_done:]}
    deletes = [s for s in seen if s.method == "DELETE"]
    assert deletes
    assert all(s.oid is None for s in deletes)
    assert {s.oid for s in lifecycle(seen)} <= {None, alice.oid, bob.oid}


async def test_lifecycle_as_app_when_the_policy_allows_it(
    idp: EntraEmulator, users: list[User], mcp_server: Start
) -> None:
    server, recorder = mcp_server(allow_app=True)
    chain = make_chain(idp, lifecycle_app=True)
    chain_with_app = type(chain)(
        [*chain.sources, _app_source(idp)], policy=chain.policy, lifecycle_app=True
    )
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=chain_with_app, scopes=mcp_scopes(idp)
    )
    host = serve_asgi(host_app(_agent(tool)), name="host")
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=30) as client:
            payload = await respond(client, agent_token(idp, users[8]), users[8].oid)
    finally:
        host.stop()
    seen = recorder.snapshot()
    assert seen_oid(payload) == users[8].oid
    discover = [s for s in seen if s.rpc in ("server/discover", "tools/list")]
    assert discover
    assert all(s.oid == idp.managed_identity.object_id for s in discover), discover
    assert all(s.oid == users[8].oid for s in calls(seen))


def _app_source(idp: EntraEmulator) -> Any:
    from entra_passthrough import ManagedIdentity

    env = idp.mi_env()
    return ManagedIdentity(
        client_id=idp.managed_identity.client_id,  # user-assigned: no selector is the system one
        endpoint=env["IDENTITY_ENDPOINT"],
        header=env["IDENTITY_HEADER"],
    )


async def test_background_run_keeps_its_caller(
    idp: EntraEmulator, users: list[User], mcp_server: Start
) -> None:
    server, _recorder = mcp_server()
    posted = threading.Event()

    async def wait_for_post() -> None:
        # Hold the tool call until the POST that started the run has returned (and its
        # request-scoped Caller has ended).
        assert await asyncio.to_thread(posted.wait, 20)

    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    agent = _agent(tool, before_call=wait_for_post)
    host = serve_asgi(host_app(agent), name="host")
    try:
        payload = await _background(host.base, agent_token(idp, users[9]), users[9].oid, posted)
    finally:
        host.stop()
    assert payload["status"] == "completed"
    assert seen_oid(payload) == users[9].oid


async def test_background_run_without_run_caller_fails_closed(
    idp: EntraEmulator, users: list[User], mcp_server: Start
) -> None:
    """Only CallerMiddleware (no BackgroundRunCallers): the run outlives its request's Caller,
    so its tool call has no caller and fails closed (no token, nothing sent)."""
    server, recorder = mcp_server()
    posted = threading.Event()

    async def wait_for_post() -> None:
        assert await asyncio.to_thread(posted.wait, 20)

    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    app = ResponsesHostServer(_agent(tool, before_call=wait_for_post), configure_observability=None)
    app.add_middleware(CallerMiddleware)
    host = serve_asgi(app, name="host")
    try:
        payload = await _background(host.base, agent_token(idp, users[10]), users[10].oid, posted)
    finally:
        host.stop()
    assert seen_oid(payload) is None
    assert not calls(recorder.snapshot())


async def _background(base: str, token: str, text: str, posted: threading.Event) -> Any:
    async with httpx2.AsyncClient(base_url=base, timeout=30) as client:
        response = await client.post(
            "/responses",
            json={"input": text, "store": True, "background": True},
            headers={"Authorization": f"Bearer {token}"},
        )
        posted.set()
        assert response.status_code == 200, response.text[:300]
        response_id = response.json()["id"]
        for _ in range(400):  # bounded: ~20 s
            polled = (await client.get(f"/responses/{response_id}")).json()
            if polled.get("status") not in ("queued", "in_progress"):
                return polled
            await asyncio.sleep(0.05)
    raise AssertionError("the background response never finished")


async def test_call_with_no_caller_fails_closed(idp: EntraEmulator, mcp_server: Start) -> None:
    """A run resumed after a restart has no request, hence no Caller: user_only refuses."""
    server, recorder = mcp_server()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    with pytest.raises(NoCallerError):
        await tool.call_tool("whoami", who="nobody")
    await tool.close()
    assert not calls(recorder.snapshot())


@pytest.mark.slow  # the call made while the server is down retries for the tool's 15 s window
async def test_tool_recovers_after_the_server_was_unreachable(
    idp: EntraEmulator, users: list[User], mcp_server: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server down: calls fail (with an error, never as someone else); server back: the next
    call of any user works, without restarting the agent."""
    from entra_passthrough.agent_framework import _tool

    # The call made while the server is down retries for the whole window before it fails:
    # 3 s instead of 15 s keeps the same path and makes the test 12 s shorter.
    monkeypatch.setattr(_tool, "_RETRY_WINDOW", 3.0)
    server, recorder = mcp_server()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    host = serve_asgi(host_app(_agent(tool)), name="host")
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=30) as client:
            before = await respond(client, agent_token(idp, users[11]), users[11].oid)
            server.stop()
            down = await client.post(
                "/responses",
                json={"input": users[12].oid, "store": False},
                headers={"Authorization": f"Bearer {agent_token(idp, users[12])}"},
            )
            server.start()
            after = [
                await respond(client, agent_token(idp, u), u.oid) for u in (users[12], users[13])
            ]
    finally:
        host.stop()
    assert seen_oid(before) == users[11].oid
    assert down.status_code == 200
    assert seen_oid(down.json()) is None
    assert [seen_oid(p) for p in after] == [users[12].oid, users[13].oid]
    assert all(s.oid == s.caller_tag for s in calls(recorder.snapshot()))


async def test_url_elicitation_becomes_an_oauth_consent_request(
    idp: EntraEmulator, users: list[User], mcp_server: Start
) -> None:
    """Protocol 2026-07-28: the server answers tools/call with an InputRequiredResult holding a
    URL elicitation; the run ends with an oauth_consent_request for that link."""
    server, recorder = mcp_server()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    agent = Agent(
        client=ScriptedChatClient(tool="needs_link"), tools=[tool], middleware=entra_middleware()
    )
    host = serve_asgi(host_app(agent), name="host")
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=30) as client:
            payload = await respond(client, agent_token(idp, users[14]), "go", store=True)
    finally:
        host.stop()
    items = [i for i in payload["output"] if i.get("type") == "oauth_consent_request"]
    assert payload["status"] == "incomplete"
    assert [i["consent_link"] for i in items] == [CONSENT_URL]
    assert items[0]["server_label"] == "records"
    assert {s.oid for s in calls(recorder.snapshot())} == {users[14].oid}
