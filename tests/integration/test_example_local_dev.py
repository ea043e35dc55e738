"""examples/local_dev runs in CI: developer mode (AzureCli under Policy.DEVELOPER) against the
emulator's az stand-in and a real MCP server."""

from __future__ import annotations

import importlib.util
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from _support.mcp_world import Recorder, ServerThread
from entra_passthrough.testing import EntraEmulator

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local_dev" / "dev_agent.py"


async def test_developer_mode_reaches_the_server_as_the_developer(
    idp: EntraEmulator,
    mcp_server: Callable[..., tuple[ServerThread, Recorder]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = importlib.util.spec_from_file_location("local_dev_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    spec.loader.exec_module(example)
    for name, value in idp.az_env("alice").items():
        monkeypatch.setenv(name, value)
    server, recorder = mcp_server()
    config = example.Config(
        mcp_url=f"{server.base}/mcp",
        mcp_scope=f"{idp.mcp.app_id_uri}/.default",
        tenant_id=idp.tenant_id,
        verify=ssl.create_default_context(cafile=idp.ca_file),
    )
    answer = await example.ask(config)
    alice = idp.users["alice"].oid
    assert alice in answer
    seen = recorder.snapshot()
    assert seen
    assert {s.oid for s in seen if s.rpc == "tools/call"} == {alice}
