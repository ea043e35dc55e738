"""examples/hosted_agent runs in CI: its create_app against the emulator and a real MCP server."""

from __future__ import annotations

import importlib.util
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import httpx2
import pytest

from entra_passthrough.agent_framework.testing import ScriptedChatClient
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

from ._infra import Recorder, ServerThread, agent_token, calls, respond, seen_oid, serve_asgi

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hosted_agent" / "app.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hosted_agent_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("per_user", [False, True], ids=["shared", "per_user"])
async def test_hosted_agent_example(
    idp: EntraEmulator,
    users: list[User],
    mcp_server: Callable[..., tuple[ServerThread, Recorder]],
    per_user: bool,
) -> None:
    example = _load()
    server, recorder = mcp_server(stateful=per_user)
    config = example.Config(
        mcp_url=f"{server.base}/mcp",
        mcp_scope=f"{idp.mcp.app_id_uri}/.default",
        tenant_id=idp.tenant_id,
        client_id=idp.agent.client_id,
        client_secret=idp.agent.secret,
        authority_host=idp.url,
        per_user=per_user,
        http_client=idp.msal_http_client(),
        verify=ssl.create_default_context(cafile=idp.ca_file),
    )
    app = example.create_app(
        config,
        chat_client=lambda: ScriptedChatClient(tool="whoami", input_argument="who"),
        configure_observability=None,
    )
    host = serve_asgi(app, name="example")
    try:
        async with httpx2.AsyncClient(base_url=host.base, timeout=30) as client:
            assert (await client.get("/readiness")).status_code == 200
            results = [
                (u, await respond(client, agent_token(idp, u), u.oid)) for u in users[30:34] * 2
            ]
    finally:
        host.stop()
    assert all(seen_oid(payload) == u.oid for u, payload in results)
    assert all(s.oid == s.caller_tag for s in calls(recorder.snapshot()))
