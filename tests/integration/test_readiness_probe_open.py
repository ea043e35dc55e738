"""A health probe sends no token: under ``install(host, require_caller=True, verifier=...)`` (what
the hosting docs recommend outside Foundry) ``GET``/``HEAD /readiness`` answered 401, so a
container whose readiness probe is HTTP was never ready. ``install`` now leaves the host's
readiness route alone (``open_paths``, default: the route named ``readiness``); everything else
is still refused without a verified bearer, and the open path runs with no caller whatever it
carries. ``CallerMiddleware(open_paths=...)`` does the same for any app.

Real components: a real ``ResponsesHostServer`` behind ``install`` under uvicorn, the real
``JwtVerifier`` against the emulator's JWKS over HTTPS."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from agent_framework import Agent

from _support.mcp_world import serve_asgi
from entra_passthrough import (
    CallerMiddleware,
    ConfigurationError,
    JwtVerifier,
    current_caller,
)
from entra_passthrough.agent_framework import install
from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.testing import EntraEmulator

pytestmark = pytest.mark.slow


def _verifier(idp: EntraEmulator) -> JwtVerifier:
    return JwtVerifier(
        audiences=[idp.agent.client_id],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        verify=idp.ca_file,
    )


def _host(idp: EntraEmulator, **options: Any) -> Any:
    from agent_framework_foundry_hosting import ResponsesHostServer

    agent = Agent(client=ScriptedChatClient(tool="none"))
    app = ResponsesHostServer(agent, configure_observability=None)
    return serve_asgi(
        install(app, require_caller=True, verifier=_verifier(idp), **options), name="host"
    )


async def test_the_readiness_probe_needs_no_token_and_the_rest_still_does(
    idp: EntraEmulator,
) -> None:
    host = _host(idp)
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=60, trust_env=False) as http:
            ready = await http.get("/readiness")
            head = await http.head("/readiness")
            junk = await http.get("/readiness", headers={"Authorization": "Bearer junk"})
            refused = await http.post("/responses", json={"input": "hi", "store": False})
            other = await http.get("/responses/caresp_x")
            posted = await http.post("/readiness")
    finally:
        host.stop()
    assert ready.status_code == 200, ready.text
    assert head.status_code == 200
    assert junk.status_code == 200  # not verified there: it runs with no caller
    assert refused.status_code == 401
    assert "www-authenticate" in refused.headers
    assert other.status_code == 401
    assert posted.status_code in (401, 405)  # only GET and HEAD are left alone


async def test_open_paths_can_be_emptied(idp: EntraEmulator) -> None:
    host = _host(idp, open_paths=[])
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=60, trust_env=False) as http:
            ready = await http.get("/readiness")
    finally:
        host.stop()
    assert ready.status_code == 401


async def test_an_open_path_runs_with_no_caller_even_with_a_valid_token(
    idp: EntraEmulator,
) -> None:
    seen: list[Any] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current_caller())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    token = idp.user_token("alice", audience=idp.agent.client_id)
    middleware = CallerMiddleware(
        app, require_caller=True, verifier=_verifier(idp), open_paths=["/readiness"]
    )
    headers = [(b"authorization", f"Bearer {token}".encode())]
    for method, path in (("GET", "/readiness"), ("GET", "/work")):
        await middleware(
            {"type": "http", "method": method, "path": path, "headers": headers}, receive, send
        )
    # Behind a root path (uvicorn --root-path, a mount): the path the app routes by.
    await middleware(
        {
            "type": "http",
            "method": "GET",
            "path": "/api/readiness",
            "root_path": "/api",
            "headers": [],
        },
        receive,
        send,
    )
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200, 200, 200]
    open_caller, checked_caller, mounted_caller = seen
    assert open_caller is None or not open_caller.active  # no caller on the open path
    assert mounted_caller is None or not mounted_caller.active
    assert checked_caller is not None
    assert checked_caller.verified is not None


@pytest.mark.parametrize(
    "bad", ["/readiness", ["readiness"], ["/items/{id}"], ["/r?x=1"], [b"/readiness"], 5]
)
def test_open_paths_are_checked(bad: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError

    with pytest.raises(ConfigurationError, match="open_paths"):
        CallerMiddleware(app, open_paths=bad)
