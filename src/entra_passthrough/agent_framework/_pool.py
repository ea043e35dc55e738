"""A bounded pool of per-user MCP connections, for servers that bind a session to the principal
that opened it (mcp 1.x-style stateful servers: another user's token on that session gets 404
"Session not found") or that filter ``tools/list`` per user.

One ``EntraMCPTool`` per user, each with its own session and tool list, discovered with that
user's token. The key is the identity *Entra issued*: before leasing, the pool resolves the
caller's token for the MCP server (OBO: Entra refuses a forged or expired assertion) and keys the
connection by the ``tid``/``oid`` of that token, which came straight from Entra over TLS. An
unsigned token that copies another user's ``tid``/``oid`` gets no token, hence no connection;
an opaque downstream token falls back to the claims a verifier checked (``CallerMiddleware(
verifier=...)``), and without either the pool refuses to lease. Users run concurrently on their
own connections: no global lock, no reconnect when the next request belongs to another user.
Connections idle for ``idle_timeout`` are closed; at ``max_connections`` the least recently used
idle one is closed.
The per-request hook is ``ResponsesHostServer(agent=<factory>)``::

    pool = entra_mcp_tool("files", url, chain=chain, scopes=[...], per_user=True)

    async def make_agent() -> Agent:
        return Agent(client=client, tools=[await pool.tool()], middleware=entra_middleware())

    app = ResponsesHostServer(agent=make_agent)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from .._caller import CALL_ID_HEADER, Caller, active_caller, current_caller
from .._chain import ended_caller_error
from .._checks import seconds
from .._errors import ConfigurationError, EntraPassthroughError, NoCallerError
from .._jwt import JwtDecodeError, UnverifiedClaims
from .._types import IdentityKind, TokenResult
from .._user_key import UserKey
from ._tool import EntraMCPTool, shown_at_agent_init

__all__ = ["EntraMCPToolPool", "PoolOptions", "issued_pool_key"]

#: A lease handed out but never entered (an agent factory that failed) stops pinning its
#: connection after this long.
_PENDING_LEASE_SECONDS = 120.0

_log = logging.getLogger("entra_passthrough.agent_framework")


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """Bounds of a per-user connection pool.

    >>> entra_mcp_tool("files", url, chain=chain, scopes=[...],
    ...                per_user=PoolOptions(max_connections=500, idle_timeout=120))
    """

    max_connections: int = 256
    idle_timeout: float = 300.0

    def __post_init__(self) -> None:
        # Typed, with a fix: a string used to fail as a bare TypeError, and NaN was accepted
        # (no connection would ever count as idle, so none would be closed).
        count = self.max_connections
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ConfigurationError(
                "PoolOptions.max_connections must be a whole number, at least 1.",
                fix="pass PoolOptions(max_connections=) an int such as 256 (the default).",
            )
        # frozen: the checked value (a float) is stored through object.__setattr__.
        object.__setattr__(
            self,
            "idle_timeout",
            seconds(
                self.idle_timeout,
                what="PoolOptions.idle_timeout",
                low=0,
                high=math.inf,
                above_low=True,
            ),
        )


def issued_pool_key(result: TokenResult, caller: Caller) -> UserKey | None:
    """The ``UserKey`` the pool keys a connection by: the tid/oid of the token Entra issued for
    the MCP server (a JWT: it came straight from Entra), else the caller's verified tid/oid (a
    verifier checked them), else ``None`` (no pooling: the caller's own claims are unverified
    and could copy another user's; a platform user id names no Entra user).

    A request with no user at all (no bearer, no platform user id) that the policy serves as
    the app (``user_or_app``) is keyed by the app's service principal, the tid/oid of the app
    token Entra issued (an object id no user has): every such request shares the app's
    connection, and no user's. An app token served for a request that does name a user (a
    Foundry toolbox route: the agent's token, the user's call id; a platform user id without a
    bearer) keys by that user, a platform user id included (the connection acts as the app
    whatever its key), never by the app: each user keeps a connection (and a tool list) of
    their own. A request that names its user by its call id alone (no verified token, no
    platform user id), served with an app token that carries that call id to the server (the
    toolbox route resolves the user from it), keys by the call id (``call:<id>``): a call id is
    issued for one request of one user, so no other user's request shares that connection."""
    if result.kind is IdentityKind.USER:
        key = _issued_key(result)
        if key is not None:
            return key
    key = UserKey.from_caller(caller)
    if key is not None:
        # A platform user id names no Entra user: never the key of a connection acting for a
        # user. One acting as the app (the same identity for every key) may be keyed by it.
        return key if key.kind == "entra" or result.kind is not IdentityKind.USER else None
    if (
        result.kind is not IdentityKind.USER
        and caller.call_id
        and result.headers.get(CALL_ID_HEADER) == caller.call_id
    ):
        # The server is told the user by this call id (a Foundry toolbox route): keyed by it,
        # never by the app, whose connection every request without a user shares (and whose
        # tools/list was made with another request's call id: another user's tool list).
        return UserKey(f"call:{caller.call_id}", "platform")
    if not caller.presented and caller.user_id is None:
        app = _issued_key(result)
        if app is None and result.kind is not IdentityKind.USER:
            # An app token that is no JWT (an opaque one from a custom credential): the app is
            # still one identity, its source's. (Not a tid:oid value: no user's key.)
            app = UserKey(f"app:{result.source}", "entra")
        return app
    return None


def _issued_key(result: TokenResult) -> UserKey | None:
    """The tid/oid of the token Entra issued, as a key (``None``: not a JWT naming both)."""
    try:
        claims = UnverifiedClaims.from_token(result.token)
    except (JwtDecodeError, ValueError, OverflowError):
        return None
    if claims.tid and claims.oid:
        return UserKey.for_entra_user(claims.tid, claims.oid)
    return None


class EntraMCPToolPool:
    """Per-user ``EntraMCPTool`` connections, bounded and idle-closed. See the module docstring.

    >>> async with entra_mcp_tool("files", url, chain=chain, scopes=s, per_user=True) as pool:
    ...     tool = await pool.tool()          # the current caller's connection
    """

    def __init__(
        self,
        make_tool: Callable[[EntraMCPToolPool, UserKey], EntraMCPTool],
        *,
        resolve: Callable[[], Awaitable[TokenResult | None]],
        unpooled: Callable[[], EntraMCPTool] | None = None,
        options: PoolOptions | None = None,
        name: str = "mcp",
        scopes: Sequence[str] = (),
    ) -> None:
        self._make_tool = make_tool
        self._resolve = resolve
        self._unpooled = unpooled
        self.options = options or PoolOptions()
        self.name = name
        self._scopes = tuple(scopes)
        self._tools: OrderedDict[UserKey, EntraMCPTool] = OrderedDict()
        self._lock = asyncio.Lock()  # guards the dict only; never held across I/O
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"EntraMCPToolPool(name={self.name!r}, connections={len(self._tools)})"

    def __len__(self) -> int:
        return len(self._tools)

    async def tool(self) -> EntraMCPTool:
        """The current caller's connection (created on first use; connected when the agent
        opens it). Resolves the caller's token first: when that fails (``ConsentRequired``, a
        refused audience, a forged assertion...) nothing is leased, and the tool returned is a
        lone one that sends nothing and fails the run with the explanation (or the consent
        request). Raises ``NoCallerError`` without an active caller; when the token names no
        identity to key the connection by (not a JWT from Entra, and no verifier checked the
        caller), the ``NoCallerError`` that says so in the shape ``ResponsesHostServer`` shows
        its client (its ``.error``; the error itself without the hosting package); and
        ``AssertionExpired`` when the caller ended because its token expired."""
        if self._closed:
            raise ConfigurationError(f"the MCP connection pool {self.name!r} is closed")
        caller = active_caller()
        if caller is None:
            bound = current_caller()
            if bound is not None and not bound.active:
                # Ended (bind_caller(token=...) ends at the token's expiry): say why, not
                # "install CallerMiddleware".
                raise ended_caller_error(bound, self._scopes)
            raise NoCallerError(f"The per-user MCP pool {self.name!r} needs an active caller.")
        try:
            result = await self._resolve()
        except EntraPassthroughError:
            if self._unpooled is None:
                raise
            # The caller gets no pooled connection. A lone tool, never connected, takes the
            # same path as any connect: its preflight fails again before any request, and the
            # host shows the consent request or the explanation to the client (an exception
            # here, in the agent factory, would reach the client as a bare "server_error").
            return self._unpooled()
        key = issued_pool_key(result, caller) if result is not None else None
        if key is None:
            # Raised in the agent factory: in the host's public shape (ResponsesHostServer
            # shows its message; anything else reaches the client as a bare "server_error").
            # Without the hosting package, the NoCallerError itself.
            raise shown_at_agent_init(
                NoCallerError(
                    f"The per-user MCP pool {self.name!r} found no identity to key the caller's "
                    "connection by: the token Entra issued for the MCP server names no user "
                    "(tid/oid) and no verifier checked the caller's token.",
                    fix="add CallerMiddleware(verifier=JwtVerifier(...)) (install(app, "
                    "verifier=...)) or use a token source that returns JWT access tokens",
                ),
                server_label=self.name,
            )
        async with self._lock:
            if self._closed:
                raise ConfigurationError(f"the MCP connection pool {self.name!r} is closed")
            tool = self._tools.get(key)
            if tool is None:
                tool = self._make_tool(self, key)
                self._tools[key] = tool
            self._tools.move_to_end(key)
            # Counted as leased from this moment (the agent enters it later): neither the
            # victims below nor the reaper can pick it.
            tool.hand_out(caller, pending_for=_PENDING_LEASE_SECONDS)
            victims = self._select_victims()
        for victim in victims:
            self._close_later(victim)
        self._ensure_reaper()
        return tool

    def _select_victims(self) -> list[EntraMCPTool]:
        now = time.monotonic()
        victims: list[EntraMCPTool] = []
        for key, tool in list(self._tools.items()):
            idle = not tool.busy(now) and now - tool.last_used >= self.options.idle_timeout
            if idle:
                victims.append(self._tools.pop(key))
        # Over the bound: the least recently used idle connections go first.
        over = len(self._tools) - self.options.max_connections
        for key, tool in list(self._tools.items()):
            if over <= 0:
                break
            if not tool.busy(now):
                victims.append(self._tools.pop(key))
                over -= 1
        return victims

    def _close_later(self, tool: EntraMCPTool) -> None:
        tool.retire()
        if tool.busy(time.monotonic()):
            return  # the last lease's __aexit__ closes it
        task = asyncio.create_task(self._close_tool(tool), name=f"mcp-pool-close:{self.name}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_tool(tool: EntraMCPTool) -> None:
        # Best effort (the server may be gone), but never silent. The type only: the message
        # of a transport error can quote the server's answer.
        try:
            await tool.close()
        except Exception as exc:
            _log.info("closing pooled MCP connection %r failed: %s", tool, type(exc).__name__)

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name=f"mcp-pool-reaper:{self.name}")

    def released(self) -> None:
        """A connection's last lease ended: over ``max_connections`` (a burst took more, as
        it may for a moment), the least recently used idle connections are closed now rather
        than at the reaper's next pass (up to 30 s later, holding their server sessions)."""
        if self._closed or len(self._tools) <= self.options.max_connections:
            return
        task = asyncio.get_running_loop().create_task(
            self._trim(), name=f"mcp-pool-trim:{self.name}"
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _trim(self) -> None:
        async with self._lock:  # as the reaper: never a connection tool() is handing out
            victims = [] if self._closed else self._select_victims()
        for victim in victims:
            self._close_later(victim)

    async def _reap(self) -> None:
        interval = max(0.05, min(self.options.idle_timeout / 2, 30.0))
        while not self._closed and self._tools:
            await asyncio.sleep(interval)
            async with self._lock:
                victims = self._select_victims()
            for victim in victims:
                self._close_later(victim)

    async def aclose(self) -> None:
        """Close every connection (DELETE carries the user's token only if that user's request
        is still active; otherwise none)."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        async with self._lock:
            tools = list(self._tools.values())
            self._tools.clear()
        for tool in tools:
            tool.retire()
        # At once: each close lets its calls in flight finish for up to the drain bound first.
        await asyncio.gather(*(self._close_tool(tool) for tool in tools))
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def __aenter__(self) -> EntraMCPToolPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
