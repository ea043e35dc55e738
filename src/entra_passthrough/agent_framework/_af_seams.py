"""Every use of a private name of agent-framework and its hosting packages, in one place.

The rest of the integration uses only what this module exposes, under public names. Each seam
says which private name it touches, why, and the versions it was checked against; the tests in
``tests/seams/test_af_seams.py`` fail with "<package> <version> moved <name>: update
_af_seams.py" when an upgrade moves one, and ``docs/upstream-hooks.md`` proposes the public hook
that would remove it.

Checked against agent-framework-core 1.23.0 and 1.26.0 (1.24 and 1.25 were never released),
agent-framework-foundry-hosting 1.0.0b261022 and azure-ai-agentserver-core 2.3.0b2 (the ranges
pinned in ``pyproject.toml``). Where the two agent-framework-core versions differ, the seam finds
out which one it has by what the module defines (never by its version number), and says which
version does what.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import _AsyncGeneratorContextManager, asynccontextmanager
from typing import Any, TypeAlias

import httpx2
from agent_framework import MCPStreamableHTTPTool
from agent_framework import _mcp as _af_mcp
from agent_framework._mcp import MCP_DEFAULT_SSE_READ_TIMEOUT, _mcp_call_headers
from agent_framework.exceptions import ToolExecutionException

__all__ = [
    "DEFAULT_SSE_READ_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "HookedMCPTool",
    "McpClientContext",
    "public_failure_type",
    "shutdown_handler_of",
]

#: agent-framework's own timeouts for an MCP connection (``agent_framework._mcp``, not
#: re-exported by the package): a tool that brings its own HTTP client keeps the same defaults.
#: 1.23 names the connect/write timeout ``MCP_DEFAULT_TIMEOUT``; 1.26 renamed it
#: ``_MCP_DEFAULT_READ_TIMEOUT_SECONDS`` (the same 30 s, also its ``request_timeout`` default).
_TIMEOUT_NAMES = ("MCP_DEFAULT_TIMEOUT", "_MCP_DEFAULT_READ_TIMEOUT_SECONDS")


def _default_timeout() -> float:
    for name in _TIMEOUT_NAMES:
        value = getattr(_af_mcp, name, None)
        if isinstance(value, int | float):
            return value
    raise ImportError(
        "agent-framework-core moved its default MCP timeout (agent_framework._mcp."
        f"{' / '.join(_TIMEOUT_NAMES)}): update _af_seams.DEFAULT_TIMEOUT"
    )


DEFAULT_TIMEOUT: float = _default_timeout()
DEFAULT_SSE_READ_TIMEOUT: float = MCP_DEFAULT_SSE_READ_TIMEOUT

#: 1.26 only: the ``ContextVar`` holding the network operation (tool call, prompt call) a
#: context runs inside (``_mcp_http_invocation``); ``None`` on 1.23, which has no such variable.
#: The lifecycle task starts with it unset, as with ``_mcp_call_headers``.
_HTTP_INVOCATION: contextvars.ContextVar[Any] | None = getattr(
    _af_mcp, "_mcp_http_invocation", None
)

#: 1.26 only: ``MCPStreamableHTTPTool._exclusive_header_access``, which ``connect``, ``close``,
#: discovery and agent-framework's own recovery enter, and which waits until every tool or prompt
#: call in flight has ended, however long that takes. 1.23 has no such wait.
_WAITS_FOR_CALLS: bool = hasattr(MCPStreamableHTTPTool, "_exclusive_header_access")

#: What ``MCPStreamableHTTPTool.get_mcp_client`` is annotated to return (the standard library's
#: private ``contextlib._AsyncGeneratorContextManager``): an override must return the same type.
McpClientContext: TypeAlias = _AsyncGeneratorContextManager[Any, None]


class HookedMCPTool(MCPStreamableHTTPTool):
    """``MCPStreamableHTTPTool`` with its private lifecycle steps turned into public hooks.

    A subclass overrides the hooks (``lifecycle_context``, ``session_opened``,
    ``reconnects_after_loss``) and calls the helpers (``own_http_client``,
    ``start_lifecycle_task``, ``on_lifecycle_owner``, ``tools_loaded``, ``listed_tools``,
    ``close_under_calls``); it never names a private attribute of agent-framework itself. The
    overrides below replace:

    * ``_ensure_lifecycle_owner``: the task that runs every connection-lifetime request is
      created with ``asyncio.create_task(..., context=lifecycle_context())`` instead of a copy
      of whoever connected first (that copy would act for the first caller forever). The body
      is agent-framework 1.23's, with the context added; ``_lifecycle_lock``,
      ``_lifecycle_owner_task``, ``_lifecycle_queue``, ``_run_lifecycle_owner`` and the
      ``_mcp_call_headers`` context variable are read as 1.23 defines them (1.26's body is the
      same). On 1.26 the task also starts outside any tool call's ``_mcp_http_invocation``.
    * ``_connect_on_owner``: after every (re)connect, ``session_opened(session)`` gets the new
      ``mcp.ClientSession`` (read from ``_connection.client.session``).
    * ``_listen_capability_list_changes``: the catalog subscription task reopens a
      ``subscriptions/listen`` stream that ended, with no stop condition (tenacity, no
      ``stop``) but ``ListenNotSupportedError``; each reopen outside a connect asks
      ``subscription_reopens()`` first, and on ``False`` raises that error, which ends the task
      (agent-framework logs it at DEBUG as a server without ``listen``). Done by wrapping the
      connection's ``mcp.client.Client.listen`` (a public method) on that instance: the task
      compares the client by identity, so it cannot be replaced by a proxy.
    * ``_recover_connection_after_loss``: agent-framework reconnects and *resends* the operation
      that lost its connection; ``reconnects_after_loss(operation)`` may refuse, and the loss is
      raised instead (a tool call that may have reached the server must not run twice). 1.26
      passes two more keywords (``failed_connection``, ``close_generation``), forwarded as given.
    """

    # -- hooks -------------------------------------------------------------------------------

    def lifecycle_context(self) -> contextvars.Context:
        """The context the lifecycle task runs in (default: a copy of the current one)."""
        return contextvars.copy_context()

    def session_opened(self, session: Any) -> None:
        """Called on the lifecycle task with each new ``mcp.ClientSession``."""

    def reconnects_after_loss(self, operation: str) -> bool:
        """Whether agent-framework may reconnect and redo ``operation`` ("tool call",
        "tools/list"...) after its connection was lost (default: yes, as upstream)."""
        return True

    async def subscription_reopens(self) -> bool:
        """Whether agent-framework may reopen the catalog subscription (``subscriptions/listen``)
        that ended or was lost, outside a connect (default: yes, as upstream, which tries again
        for as long as the connection lives). Asked in the subscription's own task, before
        each reopen; on ``False`` the subscription stays closed until the next connect opens a
        new one."""
        return True

    # -- helpers -----------------------------------------------------------------------------

    def own_http_client(self, make: Callable[[], httpx2.AsyncClient]) -> None:
        """Give the next connection an HTTP client of ours (``make()``), owned and closed by
        the tool like the one agent-framework would create: ``_httpx_client`` is set, and
        ``_close_owned_http_client`` is registered on the connection's ``_exit_stack`` (it
        clears the slot, so each connection gets a fresh client). A client passed to the
        constructor (``http_client=``) would instead outlive every connection."""
        if self._httpx_client is None:
            client = make()
            self._httpx_client = client
            self._exit_stack.push_async_callback(self._close_owned_http_client, client)

    async def start_lifecycle_task(self) -> None:
        """Start the lifecycle task now (in ``lifecycle_context()``), if it is not running:
        ``_ensure_lifecycle_owner``, which ``connect`` would otherwise call itself."""
        await self._ensure_lifecycle_owner()

    def on_lifecycle_owner(self) -> bool:
        """True when running on the lifecycle task (``_is_lifecycle_owner_task``)."""
        return self._is_lifecycle_owner_task()

    async def close_under_calls(self) -> None:
        """Close the connection now, even under calls still in flight on it (they fail: the
        connection they were sent on is gone), as 1.23's ``close`` does. The caller bounds how
        long it lets them finish first (``exclusive_under_calls``)."""
        async with self.exclusive_under_calls():
            await super().close()

    async def connect_under_calls(self, *, reset: bool = False) -> None:
        """``MCPStreamableHTTPTool.connect`` with exclusive access taken without waiting for the
        calls in flight (``exclusive_under_calls``): 1.26's own ``connect`` waits for them. The
        caller bounds how long it lets them finish first."""
        async with self.exclusive_under_calls():
            await super().connect(reset=reset)

    async def load_tools(self) -> None:
        """``load_tools`` (a ``tools/list``) without waiting for the calls in flight: 1.26's
        enters ``_exclusive_header_access``, which waits until every call has ended, holding
        the lock every new call's admission needs. agent-framework runs it on its own for a
        catalog refresh (a server's ``tools/list_changed``, a catalog subscription lost or
        ended): one long call then held every other call on the tool until it ended. A list
        on an unchanged header identity (this tool has none) needs no drain."""
        async with self.exclusive_under_calls():
            await super().load_tools()

    async def load_prompts(self) -> None:
        """``load_prompts`` without waiting for the calls in flight (as ``load_tools``)."""
        async with self.exclusive_under_calls():
            await super().load_prompts()

    def check_exclusive_allowed(self) -> None:
        """Raise as 1.26's exclusive access does when it may not be taken here (from inside a
        tool or prompt call's own network operation: ``_check_exclusive_header_access``); a
        no-op on 1.23, and where ``exclusive_under_calls`` takes nothing."""
        if not _WAITS_FOR_CALLS:
            return
        owner = getattr(self, "_header_exclusive_owner", None)
        if self.on_lifecycle_owner() or owner is asyncio.current_task():
            return
        getattr(self, "_check_exclusive_header_access")()  # noqa: B009

    @asynccontextmanager
    async def exclusive_under_calls(self) -> AsyncIterator[None]:
        """The exclusive access that 1.26's ``connect``, ``close`` and discovery take, without
        its one unbounded wait (a no-op on 1.23, which has no such access).

        1.26's ``_exclusive_header_access`` takes ``_call_headers_lock`` (no call is being
        admitted meanwhile), waits for an idle lifecycle task (``_lifecycle_idle``: no connect
        or close running) and then until every tool or prompt call in flight has ended
        (``_header_operations_idle``), however long that takes, before it makes this task
        ``_header_exclusive_owner``, which the operations inside accept as exclusive. This is its
        body without ``_header_operations_idle.wait()``: the calls in flight go on (a connection
        closed under them fails them). Held for as long as the block runs: new calls wait for
        it to end, never for another call. Re-entrant like upstream's: on the lifecycle task,
        or when this task already holds it, nothing is taken."""
        if not _WAITS_FOR_CALLS:  # 1.23
            yield
            return
        # Read by name: 1.23 has none of these (type checkers may see 1.23's class).
        owner = getattr(self, "_header_exclusive_owner", None)
        if self.on_lifecycle_owner() or owner is asyncio.current_task():
            yield
            return
        lifecycle_idle: asyncio.Event = getattr(self, "_lifecycle_idle")  # noqa: B009
        getattr(self, "_check_exclusive_header_access")()  # noqa: B009 (not from inside a call)
        async with self._call_headers_lock:
            await lifecycle_idle.wait()
            self._header_exclusive_owner = asyncio.current_task()
            try:
                yield
            finally:
                self._header_exclusive_owner = None

    @property
    def tools_loaded(self) -> bool:
        """Whether the connected session's tool list is loaded (``_tools_loaded``):
        ``is_connected`` turns true before it is."""
        return self._tools_loaded

    def listed_tools(self) -> list[str]:
        """The (remote) names of the tools whose schemas are loaded: the keys of
        ``_tool_param_names_by_name``, the allowlist ``_prepare_call_kwargs`` filters a call's
        arguments with. A call to a name not in it goes out with no arguments at all. It
        outlives a reconnect (only ``reset_discovery`` clears it) and is empty until the first
        ``tools/list`` of the tool's life has been answered."""
        return list(self._tool_param_names_by_name)

    # -- the private overrides ---------------------------------------------------------------

    async def _ensure_lifecycle_owner(self) -> None:
        async with self._lifecycle_lock:
            task = self._lifecycle_owner_task
            if task is not None and not task.done():
                return
            self._lifecycle_queue = asyncio.Queue()
            ctx = self.lifecycle_context()
            # As upstream: connection-lifetime requests carry no tool call's headers.
            ctx.run(_mcp_call_headers.set, None)
            if _HTTP_INVOCATION is not None:
                # 1.26: nor its network operation (``_mcp_http_invocation``, which 1.26's own
                # copy of the context would keep): the task is no part of any call.
                ctx.run(_HTTP_INVOCATION.set, None)
            self._lifecycle_owner_task = asyncio.create_task(
                self._run_lifecycle_owner(), name=f"mcp-lifecycle:{self.name}", context=ctx
            )

    async def _connect_on_owner(
        self,
        *,
        reset: bool = False,
        load_configured: bool = True,
        reset_discovery: bool = False,
    ) -> None:
        await super()._connect_on_owner(
            reset=reset, load_configured=load_configured, reset_discovery=reset_discovery
        )
        session = getattr(getattr(self._connection, "client", None), "session", None)
        if session is not None:
            self.session_opened(session)

    async def _listen_capability_list_changes(self, mcp_client: Any) -> None:
        listen = getattr(mcp_client, "listen", None)
        if callable(listen) and not getattr(listen, _GUARDED, False):
            mcp_client.listen = _guarded_listen(self, listen)
        await super()._listen_capability_list_changes(mcp_client)

    async def _recover_connection_after_loss(
        self,
        *,
        operation: str,
        inner_exception: Exception,
        load_configured: bool,
        **more: Any,
    ) -> None:
        # ``more``: 1.26's ``failed_connection`` and ``close_generation`` (1.23 passes none).
        if not self.reconnects_after_loss(operation):
            raise ToolExecutionException(
                f"MCP connection lost during {operation}.", inner_exception
            ) from inner_exception
        await super()._recover_connection_after_loss(
            operation=operation,
            inner_exception=inner_exception,
            load_configured=load_configured,
            **more,
        )


#: Marks a ``Client.listen`` already wrapped by ``_guarded_listen``.
_GUARDED = "_entra_guarded_listen"


def _guarded_listen(tool: HookedMCPTool, listen: Callable[..., Any]) -> Callable[..., Any]:
    """``listen`` whose stream, when opened outside a connect (a reopen by the subscription
    task), first asks ``tool.subscription_reopens()``; on ``False`` it raises
    ``ListenNotSupportedError``, the one error agent-framework's reopen loop does not retry."""

    def guarded(**filters: Any) -> Any:
        return _GuardedListen(tool, listen, filters)

    setattr(guarded, _GUARDED, True)
    return guarded


class _GuardedListen:
    """The context manager ``Client.listen(...)`` returns, opened only when allowed."""

    def __init__(
        self, tool: HookedMCPTool, listen: Callable[..., Any], filters: dict[str, Any]
    ) -> None:
        self._tool = tool
        self._listen = listen
        self._filters = filters
        self._inner: Any = None

    async def __aenter__(self) -> Any:
        if not self._tool.on_lifecycle_owner() and not await self._tool.subscription_reopens():
            from mcp.client.subscriptions import ListenNotSupportedError

            raise ListenNotSupportedError(None)
        self._inner = self._listen(**self._filters)
        return await self._inner.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        if self._inner is None:
            return None
        result: bool | None = await self._inner.__aexit__(*exc_info)
        return result


def public_failure_type() -> type[Exception] | None:
    """``agent_framework_foundry_hosting._responses._PublicResponseFailure`` (``None`` without
    the hosting package): ``ResponsesHostServer`` shows the message of this exception type to
    its client, and only "server_error" for any other failure while the agent connects its
    tools. Built as ``kind(error, public_message)``."""
    try:
        from agent_framework_foundry_hosting._responses import _PublicResponseFailure
    except ImportError:  # pragma: no cover - hosting not installed
        return None
    return _PublicResponseFailure


def shutdown_handler_of(app: Any) -> tuple[bool, Callable[[], Awaitable[None]] | None]:
    """``(found, handler)``: the shutdown handler an ``AgentServerHost``
    (azure-ai-agentserver-core) keeps in its private ``_shutdown_fn`` slot, which the public
    ``shutdown_handler(fn)`` replaces rather than chains (``ResponsesHostServer``'s closes the
    agent). ``found`` is false when the slot is not there: the caller must refuse rather than
    drop the host's handler."""
    if not hasattr(app, "_shutdown_fn"):
        return False, None
    handler: Callable[[], Awaitable[None]] | None = app._shutdown_fn
    return True, handler
