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
from agent_framework.exceptions import ToolExecutionException

from entra_passthrough.agent_framework import _af_seams

AF = f"agent-framework-core {metadata.version('agent-framework-core')}"
HOSTING = f"agent-framework-foundry-hosting {metadata.version('agent-framework-foundry-hosting')}"
HOST_CORE = f"azure-ai-agentserver-core {metadata.version('azure-ai-agentserver-core')}"
URL = "https://mcp.contoso.com/mcp"

#: 1.26: ``HookedMCPTool.exclusive_under_calls`` is a copy of ``_exclusive_header_access`` without
#: its wait for the calls in flight: the hash of upstream's body (dedented), as last read.
EXCLUSIVE_HEADER_ACCESS_SHA256 = "122f63b7f4738784cb888b5227d85a6e114f3797ef15534601429bcf173d0820"

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
            "_close_owned_http_client",
            [("self", POS), ("http_client", POS)],
            True,
            "HookedMCPTool.own_http_client",
        ),
        (
            "_listen_capability_list_changes",
            [("self", POS), ("mcp_client", POS)],
            True,
            "HookedMCPTool.subscription_reopens",
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


#: ``_recover_connection_after_loss``'s parameters: 1.23's, and 1.26's (which adds the
#: connection that failed and the close generation, forwarded as given).
RECOVER_SHAPES = {
    "1.23": [("self", POS), ("operation", KW), ("inner_exception", KW), ("load_configured", KW)],
    "1.26": [
        ("self", POS),
        ("operation", KW),
        ("inner_exception", KW),
        ("load_configured", KW),
        ("failed_connection", KW),
        ("close_generation", KW),
    ],
}

#: The name of the default connect/write timeout, per shape.
TIMEOUT_NAMES = {"1.23": "MCP_DEFAULT_TIMEOUT", "1.26": "_MCP_DEFAULT_READ_TIMEOUT_SECONDS"}


def _shape() -> str:
    """Which agent-framework-core shape this is (what ``_af_seams`` detects by feature)."""
    return "1.26" if _af_seams._HTTP_INVOCATION is not None else "1.23"


def test_recover_connection_after_loss_has_a_known_shape() -> None:
    # HookedMCPTool forwards any keywords beyond the three it reads; a new shape must still be
    # read (does a new keyword change what a refused recovery must raise, or whether it is asked?).
    params = _params(MCPStreamableHTTPTool._recover_connection_after_loss)
    assert params == RECOVER_SHAPES[_shape()], moved(
        AF, f"MCPStreamableHTTPTool._recover_connection_after_loss{params}", "reconnects_after_loss"
    )
    assert inspect.iscoroutinefunction(MCPStreamableHTTPTool._recover_connection_after_loss)


def test_the_version_differences_are_detected_together() -> None:
    # _af_seams tells 1.23 from 1.26 by feature; each feature it reads must agree on which one
    # this is, or a release mixes them and the seams must be read again.
    features = {
        "_mcp_http_invocation": isinstance(
            getattr(af_mcp, "_mcp_http_invocation", None), contextvars.ContextVar
        ),
        "_MCP_DEFAULT_READ_TIMEOUT_SECONDS (not MCP_DEFAULT_TIMEOUT)": (
            hasattr(af_mcp, "_MCP_DEFAULT_READ_TIMEOUT_SECONDS")
            and not hasattr(af_mcp, "MCP_DEFAULT_TIMEOUT")
        ),
        "_recover_connection_after_loss(failed_connection=, close_generation=)": "failed_connection"
        in inspect.signature(MCPStreamableHTTPTool._recover_connection_after_loss).parameters,
        "_exclusive_header_access": _af_seams._WAITS_FOR_CALLS,
    }
    newer = _shape() == "1.26"
    mixed = [name for name, present in features.items() if present is not newer]
    assert not mixed, moved(AF, f"{', '.join(mixed)} (expected the {_shape()} shape)", "module")


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
    # 1.23: MCP_DEFAULT_TIMEOUT; 1.26: _MCP_DEFAULT_READ_TIMEOUT_SECONDS (renamed, same 30 s).
    timeout_name = TIMEOUT_NAMES[_shape()]
    for name in (timeout_name, "MCP_DEFAULT_SSE_READ_TIMEOUT"):
        value = getattr(af_mcp, name, None)
        assert isinstance(value, int | float), moved(AF, name, "DEFAULT_TIMEOUT")
        assert value > 0, moved(AF, name, "DEFAULT_TIMEOUT")
    assert getattr(af_mcp, timeout_name) == _af_seams.DEFAULT_TIMEOUT
    assert af_mcp.MCP_DEFAULT_SSE_READ_TIMEOUT == _af_seams.DEFAULT_SSE_READ_TIMEOUT
    # The names are still the ones the plain tool builds its own HTTP client with.
    source = inspect.getsource(MCPStreamableHTTPTool.get_mcp_client)
    assert f"Timeout({timeout_name}, read=MCP_DEFAULT_SSE_READ_TIMEOUT)" in source, moved(
        AF, f"get_mcp_client's default Timeout({timeout_name}, ...)", "DEFAULT_TIMEOUT"
    )


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
            if invocation is not None:
                seen.append(("invocation", invocation.get()))

    # 1.26: a tool call's network operation is a context variable too (None on 1.23).
    invocation = _af_seams._HTTP_INVOCATION
    tool = Probe("x", URL)
    headers = af_mcp._mcp_call_headers.set((object(), {"x": "y"}))  # a tool call's, in flight
    in_call = invocation.set(object()) if invocation is not None else None
    try:
        await tool._ensure_lifecycle_owner()
    finally:
        af_mcp._mcp_call_headers.reset(headers)
        if invocation is not None and in_call is not None:
            invocation.reset(in_call)
    task = tool._lifecycle_owner_task
    assert task is not None
    await task
    expected: list[tuple[str, Any]] = [("lifecycle", None), ("owner", True)]
    if invocation is not None:
        expected.append(("invocation", None))
    assert seen == expected, moved(
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


async def test_a_refused_recovery_raises_and_an_allowed_one_forwards_every_keyword(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The keywords of this version's shape (RECOVER_SHAPES), as upstream passes them.
    extra = {"failed_connection": None, "close_generation": 0} if _shape() == "1.26" else {}
    forwarded: list[dict[str, Any]] = []

    async def upstream(self: Any, **kwargs: Any) -> None:
        forwarded.append(kwargs)

    monkeypatch.setattr(MCPStreamableHTTPTool, "_recover_connection_after_loss", upstream)

    class Refusing(_af_seams.HookedMCPTool):
        def reconnects_after_loss(self, operation: str) -> bool:
            return operation != "tool call"

    tool = Refusing("x", URL)
    lost = ConnectionError("lost")
    with pytest.raises(ToolExecutionException) as refused:
        await tool._recover_connection_after_loss(
            operation="tool call", inner_exception=lost, load_configured=True, **extra
        )
    assert refused.value.__cause__ is lost
    assert forwarded == []  # refused: upstream never reconnects (nor resends)
    await tool._recover_connection_after_loss(
        operation="tool discovery", inner_exception=lost, load_configured=False, **extra
    )
    assert forwarded == [
        {
            "operation": "tool discovery",
            "inner_exception": lost,
            "load_configured": False,
            **extra,
        }
    ]


def test_no_header_identity_so_no_reconnect_on_a_user_switch() -> None:
    # agent-framework reconnects by itself when a call's effective headers (static_headers plus
    # header_provider) differ from its session's (_ensure_session_identity ->
    # _reconnect_for_identity_change, which bypasses EntraMCPTool.connect and its choice of
    # caller). 1.26 checks it on every call, not only with a header_provider. entra_mcp_tool
    # refuses both options, so a tool's effective headers are always empty: the identity never
    # changes, whoever calls.
    tool = _af_seams.HookedMCPTool("x", URL)
    assert tool._effective_headers({"user": "a"}) == {} == tool._effective_headers({}), moved(
        AF, "_effective_headers (static_headers + header_provider only)", "HookedMCPTool"
    )
    source = inspect.getsource(MCPStreamableHTTPTool._ensure_session_identity)
    assert "_mcp_header_identity(headers)" in source, moved(
        AF, "_ensure_session_identity (keyed on the effective headers)", "HookedMCPTool"
    )
    assert "self._effective_headers(" in inspect.getsource(MCPStreamableHTTPTool.call_tool), moved(
        AF, "call_tool's headers (_effective_headers)", "HookedMCPTool"
    )


def test_the_exclusive_access_that_close_under_calls_copies_is_unchanged() -> None:
    if not _af_seams._WAITS_FOR_CALLS:  # 1.23: close does not wait for the calls in flight
        assert not hasattr(MCPStreamableHTTPTool, "_header_operations_idle")
        return
    method = MCPStreamableHTTPTool._exclusive_header_access
    source = textwrap.dedent(inspect.getsource(getattr(method, "__wrapped__", method)))
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert digest == EXCLUSIVE_HEADER_ACCESS_SHA256, (
        f"{AF} changed MCPStreamableHTTPTool._exclusive_header_access: "
        "HookedMCPTool.exclusive_under_calls in _af_seams.py copies it (without "
        "_header_operations_idle.wait()); re-read it, update the copy, then "
        f"EXCLUSIVE_HEADER_ACCESS_SHA256 = {digest!r} in this test."
    )
    # close, connect and discovery enter it, and accept its holder as exclusive: the overrides
    # (close_under_calls, connect_under_calls, load_tools, load_prompts) take it first.
    for name in ("close", "_close_connection", "connect", "load_tools", "load_prompts"):
        body = inspect.getsource(getattr(MCPStreamableHTTPTool, name))
        assert "_exclusive_header_access" in body, moved(AF, name, "exclusive_under_calls")
    # agent-framework's own catalog refresh goes through load_tools / load_prompts (which
    # HookedMCPTool overrides), never straight to the locked loaders.
    for name in ("_listen_capability_list_changes", "message_handler"):
        body = inspect.getsource(getattr(MCPStreamableHTTPTool, name))
        assert "self.load_tools()" in body, moved(AF, name, "HookedMCPTool.load_tools")
        assert "self.load_prompts()" in body, moved(AF, name, "HookedMCPTool.load_prompts")
    tool = MCPStreamableHTTPTool("x", URL)
    for name, kind in {
        "_call_headers_lock": asyncio.Lock,
        "_lifecycle_idle": asyncio.Event,
    }.items():
        assert isinstance(getattr(tool, name, None), kind), moved(AF, name, "close_under_calls")
    assert tool._header_exclusive_owner is None, moved(
        AF, "_header_exclusive_owner", "close_under_calls"
    )


async def test_close_under_calls_does_not_wait_for_a_call_in_flight() -> None:
    tool = _af_seams.HookedMCPTool("x", URL)
    if _af_seams._WAITS_FOR_CALLS:
        # 1.26: what an admitted call holds while it runs (_http_operation).
        tool._header_operations += 1
        tool._header_operations_idle.clear()
    async with asyncio.timeout(5):
        await tool.close_under_calls()  # not connected: nothing to close, and no wait
    if _af_seams._WAITS_FOR_CALLS:
        assert tool._header_exclusive_owner is None
        assert not tool._call_headers_lock.locked()
        with pytest.raises(TimeoutError):  # upstream's own close would wait for the call
            async with asyncio.timeout(0.2):
                await tool.close()


@pytest.mark.parametrize("name", ["load_tools", "load_prompts"])
async def test_discovery_does_not_wait_for_a_call_in_flight(name: str) -> None:
    """1.26's own ``load_tools`` / ``load_prompts`` (agent-framework's catalog refresh after a
    server's ``list_changed``) wait for every call in flight, holding every new call's
    admission: ``HookedMCPTool``'s take the same access without that wait."""
    tool = _af_seams.HookedMCPTool("x", URL)
    if _af_seams._WAITS_FOR_CALLS:
        tool._header_operations += 1  # what an admitted call holds while it runs
        tool._header_operations_idle.clear()
    async with asyncio.timeout(5):
        with contextlib.suppress(Exception):  # not connected: it fails, and does not wait
            await getattr(tool, name)()
    if _af_seams._WAITS_FOR_CALLS:
        assert tool._header_exclusive_owner is None
        assert not tool._call_headers_lock.locked()
        upstream = getattr(MCPStreamableHTTPTool, name)
        with pytest.raises(TimeoutError):  # upstream's own would wait for the call
            async with asyncio.timeout(0.2):
                await upstream(tool)


async def test_a_catalog_subscription_is_reopened_only_when_subscription_reopens_says_so() -> None:
    """agent-framework's catalog subscription task reopens a ``subscriptions/listen`` stream
    that ended, with no stop but ``ListenNotSupportedError``: ``HookedMCPTool`` asks
    ``subscription_reopens()`` before each reopen, and a ``False`` must end the task (else a
    shared tool under ``user_only`` reopens it with no token every ~2 s, for the connection's
    life). Fails (times out) when agent-framework stops going through ``Client.listen`` for a
    reopen, or retries the error the seam raises."""
    from mcp import types

    opened: list[dict[str, Any]] = []
    asked: list[bool] = []

    class _Ended:  # a subscription whose stream ends at once (an ingress cut it)
        def __aiter__(self) -> _Ended:
            return self

        async def __anext__(self) -> Any:
            raise StopAsyncIteration

    class _Listen:
        def __init__(self, filters: dict[str, Any]) -> None:
            self.filters = filters

        async def __aenter__(self) -> _Ended:
            opened.append(self.filters)
            return _Ended()

        async def __aexit__(self, *exc_info: Any) -> None:
            return None

    class _Client:  # mcp.client.Client's listen(), as agent-framework calls it
        def listen(self, **filters: Any) -> _Listen:
            return _Listen(filters)

    class _Tool(_af_seams.HookedMCPTool):
        async def subscription_reopens(self) -> bool:
            asked.append(True)
            return len(asked) < 3  # the first open and one reopen, then no more

        async def load_tools(self) -> None:  # the refresh before each reopen
            return None

    tool = _Tool("x", URL)
    client = _Client()
    seam = "HookedMCPTool.subscription_reopens"
    tool._server_capabilities = types.ServerCapabilities(
        tools=types.ToolsCapability(listChanged=True)
    )
    tool._connection = type("_Connection", (), {"client": client, "is_framework_owned": True})()
    await tool._listen_capability_list_changes(client)
    task = tool._capability_list_subscription_task
    assert isinstance(task, asyncio.Task), moved(AF, "_capability_list_subscription_task", seam)
    try:
        async with asyncio.timeout(10):
            await task
    except TimeoutError:
        task.cancel()
        pytest.fail(moved(AF, "_listen_capability_list_changes (its reopen loop)", seam))
    assert len(opened) == 2, moved(AF, f"_listen_capability_list_changes ({opened})", seam)
    assert opened[0] == {"tools_list_changed": True, "prompts_list_changed": False}
    assert len(asked) == 3, asked
