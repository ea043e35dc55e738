"""The private names of agent-framework and its hosting packages that ``_af_seams`` touches are
where it expects them, with the shape it relies on. Each failure names the package, its
version, what moved, and the seam to update."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import inspect
import textwrap
from importlib import metadata
from typing import Any

import httpx2
import pytest
from agent_framework import MCPStreamableHTTPTool
from agent_framework import _mcp as af_mcp

from entra_passthrough.agent_framework import _af_seams

AF = f"agent-framework-core {metadata.version('agent-framework-core')}"
HOSTING = f"agent-framework-foundry-hosting {metadata.version('agent-framework-foundry-hosting')}"
HOST_CORE = f"azure-ai-agentserver-core {metadata.version('azure-ai-agentserver-core')}"
URL = "https://mcp.contoso.com/mcp"

#: ``HookedMCPTool._ensure_lifecycle_owner`` is a copy of upstream's with a context added:
#: the hash of upstream's body (dedented) as last read. A change upstream must be read again.
ENSURE_LIFECYCLE_OWNER_SHA256 = "b9c6ef03e53097aded18b3c005afc60b00216b2b501b95eeec9ac768f2759aa4"


def moved(package: str, name: str, seam: str) -> str:
    return f"{package} moved or changed `{name}`: update _af_seams.py ({seam})."


def _params(function: Any) -> list[tuple[str, Any]]:
    return [(p.name, p.kind) for p in inspect.signature(function).parameters.values()]


KW = inspect.Parameter.KEYWORD_ONLY
POS = inspect.Parameter.POSITIONAL_OR_KEYWORD


@pytest.mark.parametrize(
    ("name", "params", "is_async", "seam"),
    [
        ("_ensure_lifecycle_owner", [("self", POS)], True, "HookedMCPTool.lifecycle_context"),
        ("_run_lifecycle_owner", [("self", POS)], True, "HookedMCPTool.lifecycle_context"),
        ("_is_lifecycle_owner_task", [("self", POS)], False, "on_lifecycle_owner"),
        (
            "_connect_on_owner",
            [("self", POS), ("reset", KW), ("load_configured", KW), ("reset_discovery", KW)],
            True,
            "HookedMCPTool.session_opened",
        ),
        (
            "_recover_connection_after_loss",
            [("self", POS), ("operation", KW), ("inner_exception", KW), ("load_configured", KW)],
            True,
            "HookedMCPTool.reconnects_after_loss",
        ),
        (
            "_close_owned_http_client",
            [("self", POS), ("http_client", POS)],
            True,
            "HookedMCPTool.own_http_client",
        ),
    ],
)
def test_the_private_methods_hooked_mcp_tool_overrides_or_calls(
    name: str, params: list[tuple[str, Any]], is_async: bool, seam: str
) -> None:
    method = getattr(MCPStreamableHTTPTool, name, None)
    assert callable(method), moved(AF, f"MCPStreamableHTTPTool.{name}", seam)
    assert _params(method) == params, moved(AF, f"MCPStreamableHTTPTool.{name}{params}", seam)
    assert inspect.iscoroutinefunction(method) is is_async, moved(AF, name, seam)


def test_the_private_attributes_of_a_new_tool() -> None:
    tool = MCPStreamableHTTPTool("x", URL)
    expected: dict[str, Any] = {
        "_lifecycle_lock": asyncio.Lock,
        "_exit_stack": contextlib.AsyncExitStack,
    }
    for name, kind in expected.items():
        assert isinstance(getattr(tool, name, None), kind), moved(AF, name, "HookedMCPTool")
    for name, value in {
        "_lifecycle_queue": None,
        "_lifecycle_owner_task": None,
        "_connection": None,
        "_httpx_client": None,
        "_tools_loaded": False,
        "_tool_param_names_by_name": {},  # listed_tools: keyed by remote name once loaded
    }.items():
        assert hasattr(tool, name), moved(AF, name, "HookedMCPTool")
        assert getattr(tool, name) == value, moved(AF, f"{name} (initially {value!r})", "")


def test_the_lifecycle_owner_body_that_hooked_mcp_tool_copies_is_unchanged() -> None:
    source = textwrap.dedent(inspect.getsource(af_mcp.MCPTool._ensure_lifecycle_owner))
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert digest == ENSURE_LIFECYCLE_OWNER_SHA256, (
        f"{AF} changed MCPTool._ensure_lifecycle_owner: HookedMCPTool._ensure_lifecycle_owner "
        "in _af_seams.py copies its body (with context=); re-read it, update the copy, then "
        f"ENSURE_LIFECYCLE_OWNER_SHA256 = {digest!r} in this test."
    )


def test_the_call_headers_variable_and_the_default_timeouts() -> None:
    variable = getattr(af_mcp, "_mcp_call_headers", None)
    assert isinstance(variable, contextvars.ContextVar), moved(
        AF, "agent_framework._mcp._mcp_call_headers", "HookedMCPTool._ensure_lifecycle_owner"
    )
    for name in ("MCP_DEFAULT_TIMEOUT", "MCP_DEFAULT_SSE_READ_TIMEOUT"):
        value = getattr(af_mcp, name, None)
        assert isinstance(value, int | float), moved(AF, name, "DEFAULT_TIMEOUT")
        assert value > 0, moved(AF, name, "DEFAULT_TIMEOUT")


def test_get_mcp_client_returns_what_mcp_client_context_names() -> None:
    annotation = inspect.signature(MCPStreamableHTTPTool.get_mcp_client).return_annotation
    assert "_AsyncGeneratorContextManager" in str(annotation), moved(
        AF, f"get_mcp_client's return type ({annotation})", "McpClientContext"
    )


def test_the_session_of_a_client_connection_is_where_session_opened_reads_it() -> None:
    from mcp import Client

    connection = af_mcp._ClientMCPConnection(Client(URL), is_framework_owned=True)
    assert isinstance(connection.client, Client), moved(
        AF, "_ClientMCPConnection.client", "HookedMCPTool._connect_on_owner"
    )
    assert isinstance(inspect.getattr_static(Client, "session", None), property), moved(
        "mcp", "Client.session", "HookedMCPTool._connect_on_owner"
    )


def test_a_lost_tool_call_goes_through_recover_connection_after_loss() -> None:
    # The only path by which agent-framework resends a tool call after a lost connection; if
    # it moves, reconnects_after_loss("tool call") stops being asked and a call may run twice.
    source = inspect.getsource(MCPStreamableHTTPTool._call_tool_with_retries)
    assert "_recover_connection_after_loss" in source, moved(
        AF, "_call_tool_with_retries", "HookedMCPTool.reconnects_after_loss"
    )
    assert 'operation="tool call"' in source, moved(
        AF, '_recover_connection_after_loss(operation="tool call")', "reconnects_after_loss"
    )


async def test_own_http_client_gives_each_connection_a_client_closed_with_it() -> None:
    tool = _af_seams.HookedMCPTool("x", URL)
    made: list[httpx2.AsyncClient] = []

    def make() -> httpx2.AsyncClient:
        made.append(httpx2.AsyncClient())
        return made[-1]

    tool.own_http_client(make)
    tool.own_http_client(make)  # the slot is taken: no second client
    assert len(made) == 1
    await tool._exit_stack.aclose()  # what a connection's close runs
    assert made[0].is_closed, moved(AF, "_close_owned_http_client", "own_http_client")
    tool.own_http_client(make)  # the slot was cleared: the next connection gets a new one
    assert len(made) == 2, moved(AF, "_httpx_client (cleared on close)", "own_http_client")
    await made[1].aclose()


async def test_the_lifecycle_task_runs_in_the_hooked_context() -> None:
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="outer")
    seen: list[tuple[str, Any]] = []

    class Probe(_af_seams.HookedMCPTool):
        def lifecycle_context(self) -> contextvars.Context:
            ctx = contextvars.copy_context()
            ctx.run(marker.set, "lifecycle")
            return ctx

        async def _run_lifecycle_owner(self) -> None:
            seen.append((marker.get(), af_mcp._mcp_call_headers.get(None)))
            seen.append(("owner", self.on_lifecycle_owner()))

    tool = Probe("x", URL)
    headers = af_mcp._mcp_call_headers.set((object(), {"x": "y"}))  # a tool call's, in flight
    try:
        await tool._ensure_lifecycle_owner()
    finally:
        af_mcp._mcp_call_headers.reset(headers)
    task = tool._lifecycle_owner_task
    assert task is not None
    await task
    assert seen == [("lifecycle", None), ("owner", True)], moved(
        AF, "_lifecycle_owner_task / _run_lifecycle_owner", "HookedMCPTool._ensure_lifecycle_owner"
    )
    assert tool.on_lifecycle_owner() is False
    assert tool.tools_loaded is False


def test_public_failure_type_is_the_hosts_public_failure() -> None:
    kind = _af_seams.public_failure_type()
    assert kind is not None, moved(
        HOSTING,
        "agent_framework_foundry_hosting._responses._PublicResponseFailure",
        "public_failure_type",
    )
    failure = kind(ValueError("internal"), "shown")
    assert getattr(failure, "public_message", None) == "shown", moved(
        HOSTING,
        "_PublicResponseFailure(error, public_message).public_message",
        "public_failure_type",
    )
    # The host shows its message: the Responses host still catches this type by name.
    from agent_framework_foundry_hosting import _responses

    assert "_PublicResponseFailure" in inspect.getsource(_responses.ResponsesHostServer), moved(
        HOSTING, "ResponsesHostServer's handling of _PublicResponseFailure", "public_failure_type"
    )


def test_shutdown_handler_of_reads_the_handler_the_host_registered() -> None:
    from azure.ai.agentserver.core import AgentServerHost

    host = AgentServerHost(configure_observability=None)
    assert _af_seams.shutdown_handler_of(host) == (True, None), moved(
        HOST_CORE, "AgentServerHost._shutdown_fn", "shutdown_handler_of"
    )

    async def handler() -> None:
        return None

    host.shutdown_handler(handler)
    assert _af_seams.shutdown_handler_of(host) == (True, handler), moved(
        HOST_CORE, "shutdown_handler(fn) -> _shutdown_fn", "shutdown_handler_of"
    )
    # The host runs that slot (and only that one) when it shuts down.
    assert "await self._shutdown_fn()" in inspect.getsource(AgentServerHost), moved(
        HOST_CORE, "the shutdown path's `await self._shutdown_fn()`", "shutdown_handler_of"
    )
    assert _af_seams.shutdown_handler_of(object()) == (False, None)


def test_a_calls_arguments_are_filtered_by_the_loaded_tool_list() -> None:
    # listed_tools reads the allowlist _prepare_call_kwargs filters a call's arguments with:
    # before it is loaded, a call would go out with none (EntraMCPTool waits for it).
    source = inspect.getsource(MCPStreamableHTTPTool._prepare_call_kwargs)
    assert "self._tool_param_names_by_name.get(tool_name" in source, moved(
        AF, "_prepare_call_kwargs (filters by _tool_param_names_by_name)", "listed_tools"
    )
