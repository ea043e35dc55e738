"""``EntraMCPTool``: an ``MCPStreamableHTTPTool`` that is correct for many users at once.

What the plain tool gets wrong (docs/platform-facts.md) and what this subclass does about it:

* One connection serves every run and user, and its connection-lifetime requests run in a
  lifecycle task holding a copy of the *first* caller's context. That task runs in a context we
  keep (``lifecycle_context``, a hook of ``_af_seams.HookedMCPTool``, which holds every private
  name of agent-framework the tool relies on) and whose caller *we* set: nobody by default; the
  caller whose call triggers a connect or reconnect, for the duration of that connect (shared
  mode); or the user a pooled connection belongs to (pool mode). ``EntraAuth`` then applies
  that caller's token while it is active, else the policy's lifecycle identity, else none.
  The transport's own tasks (the GET stream, and the answers to the server's requests it
  carries) keep the context they were started in: on a pooled connection, a request of theirs
  acts for the connection's active lessee instead of the ended run that connected
  (``_acting_for_the_connections_user``).
* The token of a ``tools/call`` is resolved in the tool call's own task, *before* the
  transport (typed errors such as ``ConsentRequired`` surface in the agent run), and handed to
  the transport with ``use_token``; the transport's ``EntraAuth`` uses ``on_error="record"``
  and never raises (an exception there kills the connection for every user).
* At most once. A ``tools/call`` is sent again only when it provably never left: the
  connection was dead before it was written (closed stream, "not connected"), the TCP connect
  failed, the server reset the connection without reading it (``mcp._WriteWatch.reset_unread``),
  or it was refused locally for want of a token it would have had after re-resolving.
  A call whose request may have reached the server is never resent: it fails with
  ``CallOutcomeUnknown`` (the model can check and decide), and so does a call whose answer's
  body was lost after its headers arrived (an SSE answer cut off mid-run, a read timeout
  shorter than the tool). agent-framework's own retry on a closed connection is switched off
  for tool calls. An HTTP 404 to a ``tools/call`` on a legacy session is the server refusing
  the session before running anything: reconnect, retry. Decided from the status the
  transport recorded, never from an error's text: a tool's own error that says "Session not
  found" is the tool's result, raised once.
* A call is sent only once the tool list is loaded: agent-framework sends only the arguments
  the loaded schema declares, so a call sent while a connect is still listing the tools would
  go out with none (the tool would run with its defaults). A call naming a tool the loaded
  list does not have is refused (``ToolNotListed``), not sent without its arguments.
* Reconnects converge: one reconnect per dead connection (a generation counter, bumped only
  once the new connection is up), and calls that arrive while it runs wait for it (bounded).
* Every ``tools/call`` carries its user's token or is not sent: resolved in the call's task
  before each attempt (so after a reconnect too), applied until the token's own expiry, and
  the transport (``mcp.call_attempt``) answers locally, sending nothing, for a request in which
  no token could be applied (any request of the call: the GET that resumes its answer too).
* A shared tool notices a server that binds sessions to principals (404 on a session after an
  identity switch, twice in a row) and then fails every call at once with a message to use
  ``per_user=True``: never a reconnect per call.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import anyio
import httpx2
from agent_framework import Content
from agent_framework.exceptions import (
    ToolException,
    ToolExecutionException,
    UserInputRequiredException,
)

from .._auth import EntraAuth
from .._caller import Caller, active_caller, current_caller, reset_current, set_current
from .._chain import ended_caller_error
from .._docs import see
from .._errors import (
    AssertionExpired,
    ConfigurationError,
    ConsentRequired,
    EntraPassthroughError,
    InteractionRequired,
    NoCallerError,
    PolicyViolation,
    TokenAcquisitionError,
    TokenVerificationError,
)
from .._flow import Chain
from .._http import retry_after_seconds
from .._jwt import JwtDecodeError, UnverifiedClaims
from .._mcp_seams import set_elicitation_callback
from .._prefetch import prefetched_var
from .._types import IdentityKind, TokenResult
from .._user_key import UserKey
from ..mcp import (
    RESEND_ON_RESET_VARIABLE,
    CallAttempt,
    ConnectRefusal,
    attempt_var,
    call_attempt,
    call_refusal,
    connect_method,
    connect_refused,
    consent_from_exception,
    exception_chain,
    http_client_for,
    unreachable_check,
    unreachable_why,
    url_elicitation_as_error,
)
from ._af_seams import (
    DEFAULT_SSE_READ_TIMEOUT,
    DEFAULT_TIMEOUT,
    HookedMCPTool,
    McpClientContext,
    public_failure_type,
)
from ._signals import (
    CallOutcomeUnknown,
    MCPServerUnreachable,
    ToolNotListed,
    connect_lost,
    consent_exception,
    gateway_shaped,
    is_dead_connection,
    is_lost_response,
    is_public_failure,
    is_request_timeout,
    is_status_stand_in,
    oversized_event_limit,
    public_failure,
)

if TYPE_CHECKING:
    from ._pool import EntraMCPToolPool

__all__ = ["EntraMCPTool"]

_log = logging.getLogger("entra_passthrough.agent_framework")

Mode = Literal["shared", "per_user"]

#: A call that provably never left is tried again within this window, at most this many times
#: (and at most ``_MAX_RECONNECTS`` times on a replaced connection).
_RETRY_WINDOW = 15.0
_MAX_ATTEMPTS = 40
#: How long a connect tries again while the server refuses TCP connections (a restart).
_REFUSED_CONNECT_WAIT = 5.0
#: HTTP answers to a connection-lifetime request that say "not now" (a gateway in front of a
#: restarting server, an overloaded one, a rate limit): the connect is tried again within
#: ``_REFUSED_CONNECT_WAIT``, at most this many times in all.
_TRANSIENT_CONNECT_STATUSES = frozenset({429, 502, 503, 504})
_MAX_BUSY_CONNECTS = 6
_MAX_RECONNECTS = 6
#: ``request_timeout``'s default: how long a request (a tool call included) waits for its
#: answer. agent-framework 1.26's own default (1.23 had none); ``None`` waits for ever. Without
#: one, a server or device that keeps the answer's stream open (SSE comments, nothing else)
#: holds the user's run for ever: the HTTP read timeout restarts with every byte.
REQUEST_TIMEOUT = int(DEFAULT_TIMEOUT)
#: How long a call waits for a reconnect in progress before it is sent anyway.
_RECONNECT_WAIT = 30.0
#: How long a failed call waits for its requests to leave the transport before the verdict.
_SETTLE_WAIT = 5.0
#: How long a reconnect lets the calls still in flight on the old connection finish (their
#: requests reached a server that may still answer them, e.g. one shutting down gracefully)
#: before it closes that connection under them.
_DRAIN_WAIT = 10.0
#: How long agent-framework's own refresh of the tool (or prompt) list (after the server's
#: ``list_changed`` notice, or a lost catalog subscription) may take: new calls wait for it.
_REFRESH_WAIT = 30.0
#: Callers remembered per pooled connection (the runs holding it at once; bounded).
_MAX_LESSEES = 8
#: How long a "this server binds sessions to their opener" verdict stands (seconds) before the
#: tool tries again: a server that only restarted twice, each time first reached by another
#: user than the session's opener, looks the same from here, and must not stay refused for
#: the process's life.
_BOUND_VERDICT_SECONDS = 60.0


class EntraMCPTool(HookedMCPTool):
    """An ``MCPStreamableHTTPTool`` that sends each ``tools/call`` with the token of the user
    whose run made it, never leaks a user's token onto connection-lifetime requests, survives
    auth failures and reconnects by itself. Build it with ``entra_mcp_tool(...)``.

    >>> tool = entra_mcp_tool("files", "https://mcp.contoso.com/mcp", chain=chain,
    ...                       scopes=["api://<mcp-app>/.default"])
    >>> agent = Agent(client=client, tools=[tool], middleware=[EntraToolMiddleware()])
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        chain: Chain,
        scopes: Sequence[str],
        origins: Sequence[str],
        server_label: str | None = None,
        mode: Mode = "shared",
        pool: EntraMCPToolPool | None = None,
        pool_key: UserKey | None = None,
        verify: Any = True,
        timeout: httpx2.Timeout | None = None,
        client_capabilities: Sequence[str] = (),
        description: str | None = None,
        approval_mode: Any = None,
        allowed_tools: Collection[str] | None = None,
        tool_name_prefix: str | None = None,
        load_prompts: bool = False,
        request_timeout: int | None = REQUEST_TIMEOUT,
        terminate_on_close: bool | None = None,
        additional_properties: dict[str, Any] | None = None,
    ) -> None:
        self._entra_auth = EntraAuth(
            chain,
            scopes=scopes,
            origins=origins,
            on_error="record",
            client_capabilities=client_capabilities,
            connection=True,
        )
        super().__init__(
            name,
            url,
            description=description,
            approval_mode=approval_mode,
            allowed_tools=allowed_tools,
            tool_name_prefix=tool_name_prefix,
            load_prompts=load_prompts,
            request_timeout=request_timeout,
            terminate_on_close=terminate_on_close,
            additional_properties=additional_properties,
        )
        self.server_label = server_label or name
        self.mode: Mode = mode
        self._pool = pool
        self._pool_key = pool_key
        self._verify = verify
        self._timeout = timeout or httpx2.Timeout(DEFAULT_TIMEOUT, read=DEFAULT_SSE_READ_TIMEOUT)
        self._lifecycle_ctx: contextvars.Context | None = None
        # The caller connection-lifetime requests act for (see the module docstring).
        self._lifecycle_caller: Caller | None = None
        self._connect_lock = asyncio.Lock()
        self._generation = 0
        # The calls in progress (their attempt, set once the call returns or fails): a
        # reconnect lets those whose request was sent finish first.
        self._calls: dict[CallAttempt, asyncio.Event] = {}
        # The calls this tool closed the connection under after the drain, and why ("reconnect"
        # or "close"): what their "may have run" error says (never "the server answered 500").
        self._cut_off: dict[CallAttempt, str] = {}
        self._leases = 0
        # The callers of the runs that hold this pooled connection, latest last (bounded): when
        # one run ends while another of the same user goes on, the other one's caller backs
        # the connection-lifetime requests.
        self._lessees: list[Caller] = []
        # Leases handed out by the pool but not yet entered (the agent factory runs between):
        # counted from the moment the pool hands the tool out, so eviction never picks it.
        self._pending = 0
        self._pending_until = 0.0
        self._retired = False
        self.last_used = time.monotonic()
        # Shared mode: who opened the current session (oid, None for the app or nobody), and
        # whether the server was seen to bind sessions to the principal that opened them.
        self._session_owner: str | None = None
        # Generation of the session that first refused a user other than its opener (404).
        self._bound_suspect: int | None = None
        self._principal_bound = False
        self._bound_at = 0.0  # when ``_principal_bound`` was concluded (monotonic)
        # A call by another user than a session's opener ran on that session: this server does
        # not bind sessions to principals (a 404 later is a restart or an expiry, not that).
        self._sessions_shared = False
        self._background: set[asyncio.Task[None]] = set()
        # Bumped when a ``close()`` (not agent-framework's nested close on the lifecycle task)
        # begins and when it ends: a connect, reconnect or call that began before a close ended
        # stops at its next step (never connects again, never sends) instead of reopening the
        # tool behind the closer. ``_closing_now``: closes in progress.
        self._closes = 0
        self._closing_now = 0
        # The waits between two attempts in progress (``_pause``): a close ends them at once.
        self._pauses: set[asyncio.Future[None]] = set()
        # The bounds of agent-framework's own catalog refreshes in progress: a close ends them.
        self._refreshes: set[asyncio.Timeout] = set()
        self._deferred_for: Caller | None = None
        # The last 401/403 a connection-lifetime POST got (cleared by a later success): what a
        # failed connect reports, since no ``CallAttempt`` records a connect's answers.
        self._connect_refusal: ConnectRefusal | None = None
        # The last other HTTP error (429, 5xx...) a connection-lifetime POST got, with its
        # Retry-After (cleared by any later answer): a 429/502/503/504 is tried again, and a
        # connect that still fails names it.
        self._connect_status: _ConnectStatus | None = None
        self._connect_attempts = 0  # of the latest connect (its message counts them)
        #: The agent that holds this tool opened it (an enter returned, and no exit since). An
        #: enter while it is not is the agent opening (``ResponsesHostServer``: "agent
        #: initialization", which it repeats on every request until it succeeds); one while it
        #: is, a run's (agent-framework enters a tool that is not connected when a run starts).
        self._opened_by_agent = False

    @property
    def auth(self) -> EntraAuth:
        """The ``EntraAuth`` (``on_error="record"``) on this tool's HTTP client."""
        return self._entra_auth

    def __repr__(self) -> str:
        # Origin and path only: the query string may hold a key.
        url = urlsplit(self.url or "")._replace(query="", fragment="").geturl()
        return f"EntraMCPTool(name={self.name!r}, url={url!r}, mode={self.mode!r})"

    # -- the HTTP client: ours, with EntraAuth, one per connection -------------------------

    def get_mcp_client(self) -> McpClientContext:
        self.own_http_client(self._make_http_client)
        return super().get_mcp_client()

    def _make_http_client(self) -> httpx2.AsyncClient:
        client = http_client_for(self._entra_auth, timeout=self._timeout, verify=self._verify)
        hooks = dict(client.event_hooks)
        hooks["response"] = [*hooks.get("response", []), self._note_connect_answer]
        client.event_hooks = hooks
        if self.mode == "per_user":
            send = client.send

            async def send_for_the_connections_user(
                request: httpx2.Request, **kwargs: Any
            ) -> httpx2.Response:
                with self._acting_for_the_connections_user():
                    return await send(request, **kwargs)

            client.send = send_for_the_connections_user  # type: ignore[method-assign]
        return client

    @contextmanager
    def _acting_for_the_connections_user(self) -> Iterator[None]:
        """A pooled connection's request outside any tool call (``attempt_var`` unset) acts for
        the connection's user while one of that user's runs is active (the lessee that backs
        the connection-lifetime requests, ``_lifecycle_caller``), in whichever task sends it.

        The mcp SDK sends each request in a copy of its sender's context. The tasks the
        transport starts while connecting (the GET stream, on which a legacy server sends its
        ``ping``, ``roots/list`` or ``sampling/createMessage``, and the handlers that answer
        them) keep a copy of the lifecycle context *as it was then*: its caller is the run that
        connected, which ends with that run. Every later run's answer to such a request then
        went out with no token (refused 401: the server never got its answer, and the call
        waited for it until ``request_timeout``). Only a caller that is not active is
        replaced, and only by this connection's own lessee (the pool keys a connection by its
        user: never another user's); with no run of the user active, nothing is (no token)."""
        current = current_caller()
        backing = self._lifecycle_caller
        if (
            attempt_var.get() is not None
            or (current is not None and current.active)
            or backing is None
            or backing is current
            or not backing.active
        ):
            yield
            return
        bound = set_current(backing)
        try:
            yield
        finally:
            reset_current(bound)

    async def _note_connect_answer(self, response: httpx2.Response) -> None:
        """Keep the 401/403 of a connection-lifetime POST (discovery, initialize, tools/list):
        the mcp SDK turns it into "Server returned an error response", and a connect that fails
        on it must say that the server refused the token, and why; and any other HTTP error
        (a 503 from a gateway in front of a restarting server, a 429), with its Retry-After,
        which the SDK reports in the same words. A ``tools/call`` (inside ``call_attempt``)
        has its own record. The client runs this for every answer, the first 401 of the auth's
        one retry too: the latest answer replaces what an earlier one recorded."""
        if response.request.method != "POST" or attempt_var.get() is not None:
            return
        status = response.status_code
        if status in (401, 403):
            self._connect_refusal = ConnectRefusal.of(response)
            self._connect_status = None
        elif status < 400:
            self._connect_refusal = None
            self._connect_status = None
        else:
            rpc = connect_method(response.request)
            if rpc == "tools/call":
                return  # never a connect's (and never retried by one)
            self._connect_refusal = None
            self._connect_status = _ConnectStatus(
                status, retry_after_seconds(response.headers), rpc
            )

    # -- the lifecycle task runs in a context we own -----------------------------------------

    def lifecycle_context(self) -> contextvars.Context:
        """The lifecycle task's context: one we keep, so that we (not whoever connected first)
        decide which caller it acts for; none of a tool call's bindings leak into it."""
        ctx = contextvars.copy_context()
        ctx.run(self._reset_lifecycle_vars)
        self._lifecycle_ctx = ctx
        return ctx

    def _reset_lifecycle_vars(self) -> None:
        prefetched_var.set(None)
        attempt_var.set(None)
        set_current(self._lifecycle_caller)

    def session_opened(self, session: Any) -> None:
        """Every new session (reconnects included) maps URL elicitations to a consent error,
        and types its refusal of a result that breaks the tool's declared output schema
        (``_type_schema_refusals``)."""
        if not set_elicitation_callback(session, url_elicitation_as_error):
            _warn_no_elicitation_slot()
        _type_schema_refusals(session)

    def _set_lifecycle_caller(self, caller: Caller | None) -> None:
        self._lifecycle_caller = caller
        ctx = self._lifecycle_ctx
        if ctx is None:
            return
        if self.on_lifecycle_owner():
            set_current(caller)  # we are running in ctx right now
        else:
            ctx.run(set_current, caller)

    async def _discovery_caller(self, trigger: Caller | None) -> Caller | None:
        """Who connection-lifetime requests act for while ``trigger`` (re)connects."""
        if self.mode == "per_user":
            return trigger if trigger is not None else self._lifecycle_caller
        if trigger is None:
            return None
        # Shared mode: the app, where the policy allows it for connection-lifetime requests
        # (lifecycle_app=True, user_or_app, app_only); else the triggering user, while active.
        try:
            lifecycle = await self._entra_auth.chain.lifecycle_token_async(self.auth.scopes)
        except TokenAcquisitionError as exc:
            # The app is allowed but could not get a token now: the triggering user's copy
            # connects instead (a bug or a configuration error propagates).
            _log.warning(
                "MCP server %r: no lifecycle token (%s); connecting as the triggering user",
                self.server_label,
                exc,
            )
            lifecycle = None
        return None if lifecycle is not None else trigger

    async def connect(self, *, reset: bool = False) -> None:
        if self.on_lifecycle_owner():
            # Nested reconnect from inside the owner (e.g. a lost connection during discovery):
            # the outer connect already chose the caller.
            await super().connect(reset=reset)
            if reset:
                self._generation += 1
            return
        await self._connect_as(active_caller(), reset=reset)

    async def _connect_as(
        self,
        trigger: Caller | None,
        *,
        reset: bool,
        generation: int | None = None,
        closes: int | None = None,
    ) -> None:
        """(Re)connect acting for ``trigger``'s choice (``_discovery_caller``). ``closes``: the
        close count when the operation this connect belongs to began (default: now); a
        ``close()`` since then stops it (``_ToolClosed``) before any further request."""
        if closes is None:
            closes = self._closes
        async with self._connect_lock:
            self._stop_if_closed(closes)
            if generation is not None and generation != self._generation:
                return  # another call already replaced the dead connection
            if not reset and self.is_connected and self.tools_loaded:
                return  # e.g. a second lease while the first one's connect was in flight
            chosen = await self._discovery_caller(trigger)
            if chosen is not None:
                # Resolve the token of whoever the connect acts for *before* any request: a
                # caller whose token cannot work (a Foundry-audience token, no consent...) makes
                # no request at all, and gets the explanation.
                await self._preflight(chosen)
                # Closed while the token was resolved: stop before the lifecycle task starts
                # (nothing would end it, nor the caller it holds).
                self._stop_if_closed(closes)
            if reset:
                # Exclusive access first (1.26: no new call is admitted meanwhile, and a
                # catalog refresh or connect attempt in progress ends first), then the calls
                # whose requests are still on the old connection finish (bounded): closing it
                # would cut off calls the server is still answering, and each would end "may
                # have run". Marked under the same access: a call admitted after the drain
                # began would otherwise be closed under with no drain and no mark.
                async with self.exclusive_under_calls():
                    await self._drain()
                    # Close the old connection first, acting for nobody (shared) or its own
                    # user (pooled): its DELETE must not carry the token of whoever triggered
                    # the reset. Under the calls still in flight after the drain
                    # (agent-framework 1.26's own close would wait for them without a bound).
                    if self.mode == "shared":
                        self._set_lifecycle_caller(None)
                    self._mark_cut_off("reconnect")
                    await _not_cancelled_by_transport(self.close_under_calls())
                reset = False
            if self.mode == "shared" and chosen is not None:
                # A copy that ends with this connect: tasks the transport starts now (GET
                # stream, subscriptions) snapshot the context, and must not keep acting for the
                # triggering user once the connect is over, even while that user's run goes on.
                chosen = chosen.copy()
            await self.start_lifecycle_task()
            self._set_lifecycle_caller(chosen)
            self._entra_auth.take_errors()
            self._connect_refusal = None
            self._connect_status = None
            try:
                await self._connect_through_refusals(reset, closes)
            except _ToolClosed:
                self._entra_auth.take_errors()
                if chosen is not None:
                    chosen.take_errors()
                raise
            except Exception as exc:
                failure = self._connect_failure(exc, chosen)
                if failure is exc:
                    raise
                if isinstance(getattr(failure, "error", None), TokenVerificationError):
                    # Not chained: the mcp SDK's error may carry the server's answer, which can
                    # echo the token it refused. The typed error says what it said.
                    raise failure from None
                raise failure from exc
            finally:
                if self.mode == "shared":
                    self._set_lifecycle_caller(None)
                    if chosen is not None:
                        chosen.end()
            # Published only now that the new connection is up: a call that saw the old one
            # die with the old generation cannot tear this one down.
            self._generation += 1
            self._session_owner = _oid_of(chosen)

    async def _connect_through_refusals(self, reset: bool, closes: int) -> None:
        """``connect``, again while the server refuses the TCP connection (a restart's gap, in
        which a run that opens its tool failed at once: "An internal server error occurred"
        from the host), drops the connect's own connection or session mid-handshake (a
        restart during initialize or tools/list, ``connect_lost``; an answer cut off after its
        headers, ``is_lost_response``), or answers one of its requests 429/502/503/504 (a
        gateway in front of a restarting server, ``_TRANSIENT_CONNECT_STATUSES``; after its
        ``Retry-After``, when that fits): a connect runs no tool, so trying again is safe (again
        with ``reset``: its half-open session is closed first); for at most
        ``_REFUSED_CONNECT_WAIT`` seconds, then the failure stands. Never a ``tools/call``.
        A ``close()`` since ``closes`` ends it before the next attempt (``_ToolClosed``), and
        after one that was running (the close closed what it opened)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _REFUSED_CONNECT_WAIT
        delay = 0.1
        busy = 0  # attempts answered with a transient status
        self._connect_attempts = 0
        while True:
            self._stop_if_closed(closes)
            self._connect_status = None
            self._connect_attempts += 1
            try:
                # Without 1.26's wait for every call in flight (``connect_under_calls``): a reset
                # here replaces a connection lost mid-connect, or one already drained above.
                await _not_cancelled_by_transport(self.connect_under_calls(reset=reset))
            except Exception as exc:
                self._stop_if_closed(closes)  # a failure caused by the close, or during it
                refused = _connection_refused(exc)
                lost = not refused and (connect_lost(exc) or is_lost_response(exc))
                answered = self._answered()  # what the hook recorded in this attempt
                wait = delay
                if not (lost or refused):
                    if (
                        answered is None
                        or answered.status not in _TRANSIENT_CONNECT_STATUSES
                        or self._connect_refusal is not None
                    ):
                        raise
                    busy += 1
                    if busy >= _MAX_BUSY_CONNECTS:
                        raise
                    # Jittered (many tools reconnect to a restarting server at once), and never
                    # before the server's Retry-After.
                    wait = max(delay * (0.5 + random.random()), answered.retry_after or 0.0)  # noqa: S311
                    _log.info(
                        "MCP server %r: %s to a connect; connecting again in %.1f s",
                        self.server_label,
                        answered.named(),
                        wait,
                    )
                if loop.time() + wait > give_up:
                    raise  # never sleeps past the bound (nor when Retry-After is longer)
                reset = reset or not refused  # lost, or answered: close its half-open session
            else:
                # A close() that came during the attempt waited for it, then closed what it
                # opened: not connected, and the connect says so.
                self._stop_if_closed(closes)
                return
            await self._pause(wait, closes=closes)
            delay = min(delay * 2, 1.0)

    def _stop_if_closed(self, closes: int) -> None:
        """Raise ``_ToolClosed`` when ``close()`` ran since the close count was ``closes``, or
        one is running."""
        if self._closes != closes or self._closing_now:
            raise _ToolClosed(self.server_label)

    async def _pause(self, seconds: float, *, closes: int) -> None:
        """Sleep between two attempts; a ``close()`` (since ``closes``) ends the sleep and
        raises ``_ToolClosed``."""
        self._stop_if_closed(closes)
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pauses.add(woken)
        try:
            with suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await woken
        finally:
            self._pauses.discard(woken)
        self._stop_if_closed(closes)

    def _answered(self) -> _ConnectStatus | None:
        """The HTTP error (not 401/403) the latest connection-lifetime POST got, if any: read
        through a call, since the response hook sets it during the ``await`` (read directly,
        it is narrowed to the ``None`` set before it)."""
        return self._connect_status

    async def _drain(self) -> None:
        """Wait (at most ``_DRAIN_WAIT``) until every call whose ``tools/call`` was sent has
        its answer (the response's body is read after its headers leave the transport). Calls
        not sent yet do not count: they wait for a connection, perhaps for this reconnect."""
        busy = [done.wait() for attempt, done in self._calls.items() if attempt.sent]
        if not busy:
            return
        with suppress(TimeoutError):
            async with asyncio.timeout(_DRAIN_WAIT):
                await asyncio.gather(*busy)

    def _mark_cut_off(self, why: str) -> None:
        """The calls still in flight after the drain are about to have their connection closed
        under them (``why``: "reconnect" or "close"): their error says so."""
        for attempt in self._calls:
            if attempt.sent:
                self._cut_off[attempt] = why

    async def close(self) -> None:
        """Close the connection: the calls whose ``tools/call`` was sent get up to
        ``_DRAIN_WAIT`` seconds to finish, then it is closed under those still running (they
        fail "may have run"), as a reconnect does. agent-framework 1.26's own ``close`` would
        wait for every call in flight, however long it runs (1.23's closed at once).

        A connect or reconnect in progress (one retrying a refused or busy server, say) stops:
        it sends nothing more, and its waiting run or call fails saying the tool was closed; a
        call not sent yet is not sent (on 1.23, which has no exclusive access, a call already
        past its last check as the close begins may still go out during the drain: it ends
        "may have run ... the tool was closed"). A catalog refresh in progress ends at once.
        An attempt already running is waited for (the close then closes what it opened): its
        requests' own timeouts bound it."""
        if self.on_lifecycle_owner():
            await super().close()
            return
        # A close agent-framework refuses here (1.26: from inside a call's own operation) is
        # refused before it stops anything: other calls must not fail "the tool was closed"
        # for a close that never happened.
        self.check_exclusive_allowed()
        self._closes += 1
        for woken in self._pauses:
            if not woken.done():
                woken.set_result(None)
        self._closing_now += 1
        try:
            now = asyncio.get_running_loop().time()
            for bound in list(self._refreshes):
                if not bound.expired():
                    bound.reschedule(now)
            # Exclusive access first (1.26: no call is admitted meanwhile, and a refresh or
            # connect attempt in progress ends first), then the drain and the marks under it: a
            # call admitted after the drain began would be closed under with no drain, and its
            # error would not say that the tool was closed. Re-entrant: ``close_under_calls``
            # takes nothing more.
            async with self.exclusive_under_calls():
                await self._drain()
                self._mark_cut_off("close")
                await self.close_under_calls()
        finally:
            self._closing_now -= 1
            self._closes += 1  # what began during the close stops too

    async def load_tools(self) -> None:
        """Load the tool list. Run by a connect (on the lifecycle task), or by agent-framework
        on its own (a server's ``tools/list_changed``, a catalog subscription lost or ended):
        such a refresh acts for nobody's call. It goes out only if a token can be applied to it
        (the lifecycle identity, or a pooled connection's user while a run of theirs is active);
        else the list stays as loaded until the next connect. It never waits for calls in
        flight (``HookedMCPTool.load_tools``), and new calls wait for it at most
        ``_REFRESH_WAIT`` seconds."""
        if self.on_lifecycle_owner():
            await super().load_tools()
        elif await self._refresh_has_a_token("tool"):
            await self._bounded_refresh("tool", super().load_tools)

    async def load_prompts(self) -> None:
        """Load the prompt list: as ``load_tools``."""
        if self.on_lifecycle_owner():
            await super().load_prompts()
        elif await self._refresh_has_a_token("prompt"):
            await self._bounded_refresh("prompt", super().load_prompts)

    async def _bounded_refresh(self, kind: str, load: Callable[[], Awaitable[None]]) -> None:
        """Run a refresh outside a connect for at most ``_REFRESH_WAIT`` seconds; a ``close()``
        ends it at once (its connection is about to be closed): the close need not wait for a
        slow ``tools/list`` holding the exclusive access."""
        closes = self._closes
        try:
            async with asyncio.timeout(_REFRESH_WAIT) as bound:
                self._refreshes.add(bound)
                try:
                    await load()
                finally:
                    self._refreshes.discard(bound)
        except TimeoutError:
            if self._closes == closes:
                raise
            _log.info(
                "MCP server %r: its %s list refresh was ended: the tool was closed",
                self.server_label,
                kind,
            )

    async def _refresh_has_a_token(self, kind: str) -> bool:
        """Whether a refresh of the ``kind`` list outside a connect can carry a token here (what
        the transport's ``EntraAuth`` would apply to it); if not, it is skipped: sent without
        one, the server refuses it (401) and the refresh fails for nothing."""
        why = await self._why_no_token("list")
        if why is None:
            return True
        _log.info(
            "MCP server %r: its %s list changed, not reloaded: %s; the list stays as loaded "
            "until the tool connects again",
            self.server_label,
            kind,
            why,
        )
        return False

    async def subscription_reopens(self) -> bool:
        """agent-framework reopens a catalog subscription (``subscriptions/listen``) that ended
        or was lost, outside any connect, every few seconds for as long as the connection
        lives. It is reopened only when a token can be applied to it, as a refresh is
        (``_refresh_has_a_token``); else it stays closed (one INFO line) until the next connect
        opens a new one: sent without a token, each reopen is refused (401), for nothing."""
        why = await self._why_no_token("subscription")
        if why is None:
            return True
        _log.info(
            "MCP server %r: its catalog subscription (subscriptions/listen) ended and is not "
            "reopened: %s; changes to its tool and prompt lists are not followed until the "
            "tool connects again",
            self.server_label,
            why,
        )
        return False

    async def _why_no_token(self, what: str) -> str | None:
        """Why a connection-lifetime request outside a connect (a ``what``: "list" refresh, a
        "subscription") could carry no token here, or ``None`` when one can be applied."""
        try:
            token = await self._entra_auth.acquire_async()
        except Exception as exc:
            return f"no token could be had for it ({type(exc).__name__})"
        if token is not None:
            return None
        return (
            "it acts for no user's call and the policy names no lifecycle identity "
            f"(lifecycle_app=True would let the app {'list it' if what == 'list' else 'open it'})"
        )

    async def _preflight(self, chosen: Caller) -> None:
        # Resolved as ``chosen`` (the trigger, or a pooled connection's own user).
        ctx = contextvars.copy_context()
        ctx.run(set_current, chosen)
        try:
            result = await asyncio.create_task(self._entra_auth.acquire_async(), context=ctx)
        except Exception as exc:
            consent = consent_from_exception(exc, server_label=self.server_label)
            if consent is not None:
                raise gateway_shaped(consent, server_label=self.server_label) from exc
            if isinstance(exc, EntraPassthroughError):
                raise public_failure(exc) from exc
            raise
        if result is None and self.mode == "per_user":
            raise public_failure(NoCallerError())

    def _connect_failure(self, exc: Exception, chosen: Caller | None) -> Exception:
        recorded = (chosen.take_errors() if chosen is not None else []) + (
            self._entra_auth.take_errors()
        )
        for error in recorded:
            consent = consent_from_exception(error, server_label=self.server_label)
            if consent is not None:
                return gateway_shaped(consent, server_label=self.server_label)
        consent = consent_from_exception(exc, server_label=self.server_label)
        if consent is not None:
            return gateway_shaped(consent, server_label=self.server_label)
        why = next((e for e in recorded if isinstance(e, EntraPassthroughError)), None)
        refusal, self._connect_refusal = self._connect_refusal, None
        if isinstance(why, TokenAcquisitionError) and (chosen is None or chosen.active):
            # The user's token could not be had or was not accepted as it was (a claims
            # challenge it cannot meet, say): typed, in the host's public shape, as a pooled
            # connection's open shows it (the host shows only "server_error" otherwise), and
            # naming the server, as the connect's other refusals do.
            return shown_at_agent_init(why, server_label=self.server_label)
        if (
            why is None
            and refusal is not None
            and refusal.with_token
            and (chosen is None or chosen.active)
        ):
            # Typed and in the host's public shape: at the agent's open (the host shows only
            # "server_error" for anything else) and on a run's reconnect alike.
            return shown_at_agent_init(self._connect_refused(refusal, chosen))
        answered, self._connect_status = self._connect_status, None
        if (
            why is None
            and answered is not None
            and answered.status in _TRANSIENT_CONNECT_STATUSES
            and not _unreachable(exc)
        ):
            # Typed and in the host's public shape, like an unreachable server: no tool ran,
            # and the token is not the problem (the SDK's text says neither).
            return shown_at_agent_init(self._busy_error(answered))
        if why is None and _unreachable(exc):
            return shown_at_agent_init(self._unreachable_error(exc))
        who = (
            "the user whose call triggered it"
            if chosen is not None
            else "the policy's lifecycle identity (none under user_only unless lifecycle_app=True)"
        )
        detail = f" Token error: {why}" if why is not None else ""
        # The status that the SDK's "Server returned an error response" does not name.
        exc_text = f"{exc} ({answered.named()})" if answered is not None else str(exc)
        return ToolException(
            f"Could not connect to MCP server {self.server_label!r}: {exc_text}. "
            "Connection-lifetime "
            f"requests (discovery, tools/list) were authenticated as {who}.{detail}",
            why if why is not None else exc,
        )

    def _connect_refused(
        self, refusal: ConnectRefusal, chosen: Caller | None
    ) -> TokenVerificationError:
        """The MCP server's 401/403 to a connect, typed like a ``tools/call``'s (``_refusal``),
        with the scopes its challenge says it requires and the refused token lacks
        (``connect_refused``, which the plain client's connect says too)."""
        whose = refusal.whose(chosen)
        refused = (
            f"MCP server {self.server_label!r} refused {whose} while the tool was connecting "
            f"({refusal.answer()}), so none of its tools can be used for this request."
        )
        return connect_refused(refusal, refused, own_scopes=self.auth.scopes)

    def _busy_error(self, answered: _ConnectStatus) -> MCPServerUnreachable:
        """A connect whose request the server (or a gateway in front of it) kept answering
        429/502/503/504 within the connect's bound: named from the status and Retry-After
        alone (the answer's body is the server's free text, and may echo what it was sent)."""
        origin = _origin_of(self.url or "")
        if answered.status == 429:
            why = "it is throttling this client (too many requests)"
            fix = (
                "wait as long as the server asks and send the request again; if it throttles "
                "often, raise its rate limit (or that of the gateway in front of it) or open "
                "fewer connections to it"
            )
        else:
            why = "the server, or a gateway in front of it, is restarting or overloaded"
            fix = (
                "send the request again in a moment; if it persists, check the MCP server's "
                "health and logs and those of the ingress, gateway or load balancer in front "
                "of it (its upstream, health probes, replicas)"
            )
        tries = self._connect_attempts
        if tries > 1:
            again = f" (the last of {tries} attempts)"
        elif answered.retry_after is not None:
            again = " (longer than the connect could still wait: not tried again)"
        else:
            again = ""
        return MCPServerUnreachable(
            f"Could not connect to MCP server {self.server_label!r} ({origin}): it answered "
            f"{answered.named()}{again}; {why}. No tool ran (a connect runs none), and this "
            "is not a problem with the user's token.",
            server_label=self.server_label,
            origin=origin,
            fix=f"{fix} ({see('agent-framework')})",
            status=answered.status,
            retry_after=answered.retry_after,
        )

    def _unreachable_error(self, exc: Exception) -> MCPServerUnreachable:
        origin = _origin_of(self.url or "")
        check = unreachable_check("the tool's URL and port")
        return MCPServerUnreachable(
            f"Could not connect to MCP server {self.server_label!r} ({origin}): it could not "
            f"be reached ({unreachable_why(exc)}), also when the tool tried again. Nothing "
            "was sent to it, and this is not a problem with the user's token.",
            server_label=self.server_label,
            origin=origin,
            fix=f"{check}, then send the request again ({see('agent-framework')})",
        )

    # -- per-user pool leases (EntraMCPToolPool calls these) ------------------------------------

    def hand_out(self, caller: Caller, *, pending_for: float) -> None:
        """The pool hands this connection to ``caller``'s run: it counts as leased from now
        (the agent enters it later), for at most ``pending_for`` seconds, so that neither the
        pool's eviction nor its reaper picks it meanwhile."""
        self._pending += 1
        self._pending_until = time.monotonic() + pending_for
        self._lease(caller)

    def busy(self, now: float) -> bool:
        """Leased, or handed out by the pool and about to be entered."""
        return self._leases > 0 or (self._pending > 0 and now < self._pending_until)

    def retire(self) -> None:
        """The pool dropped this connection: the last lease's exit closes it."""
        self._retired = True

    @property
    def retired(self) -> bool:
        """Dropped by its pool (closed when its last lease ends)."""
        return self._retired

    def _lease(self, caller: Caller) -> None:
        self.last_used = time.monotonic()
        others = [c for c in self._lessees if c is not caller and c.active]
        self._lessees = [*others[-(_MAX_LESSEES - 1) :], caller]
        self._set_lifecycle_caller(caller)

    async def __aenter__(self) -> EntraMCPTool:
        if self._pool is None:
            # An enter before the agent holds the tool open is the host's "agent
            # initialization": ResponsesHostServer opens the agent until that succeeds, again on
            # each request after a failed one (a consent met there must become that request's
            # own oauth_consent_request, not the host's bare server_error). Every later enter
            # is a run's own: agent-framework enters a tool that is not connected when a run
            # starts, into the agent's stack, so the exit comes when the agent closes.
            first = not self._opened_by_agent
            try:
                await self._connect_retrying()
            except ToolException as exc:
                consent = (
                    None if first else consent_from_exception(exc, server_label=self.server_label)
                )
                if consent is not None:
                    # A run's enter: the host turns a consent into an oauth_consent_request
                    # only at agent initialization (the gateway's shape); a run surfaces it as
                    # a user input request, as a tool call does.
                    raise consent_exception(consent, server_label=self.server_label) from exc
                raise
            except Exception as exc:
                if is_public_failure(exc):
                    caller = active_caller()
                    if first and caller is not None:
                        # The caller's token cannot work and nothing was sent. Opened with the
                        # agent (ResponsesHostServer: "agent initialization", where the host
                        # shows only "server_error"): not connected, the run opens the tool again
                        # and fails there, where the host shows the explanation. Only then: a
                        # run's enter that defers too would leave the run with no tools at all
                        # (the host enters the agent once; later requests come here from runs).
                        self._deferred_for = caller
                        self._opened_by_agent = True
                        return self
                    raise  # the host's public shape: the client sees the explanation
                await self.close()
                raise ToolExecutionException(
                    "Failed to enter context manager.", inner_exception=exc
                ) from exc
            self._opened_by_agent = True
            return self
        self._leases += 1
        if self._pending:
            self._pending -= 1
        try:
            # Always through the connect lock: is_connected turns true before the tools are
            # loaded, and a concurrent lease must not expose an empty tool list.
            await self._connect_retrying()
        except _ToolClosed:
            self._leases -= 1
            raise
        except Exception as exc:
            self._leases -= 1
            # The host shows only "server_error" for a failure while the agent opens its tools,
            # unless it is public (or a consent): when the connect failed for want of the user's
            # token (e.g. their assertion expired while it ran, so its requests went out without
            # one), the client is told that.
            if consent_from_exception(exc) is None:
                public = getattr(exc, "error", None) if is_public_failure(exc) else None
                why = public or _token_error_of(exc) or await self._token_error_now()
                if isinstance(why, ConsentRequired):
                    raise gateway_shaped(why, server_label=self.server_label) from exc
                if isinstance(why, Exception):
                    raise shown_at_agent_init(why, server_label=self.server_label) from exc
            raise
        except BaseException:
            self._leases -= 1
            raise
        return self

    async def _token_error_now(self) -> EntraPassthroughError | None:
        """Why the active caller's token cannot be had now, if it cannot."""
        try:
            await self._entra_auth.acquire_async()
        except EntraPassthroughError as exc:
            return exc
        return None

    async def _connect_retrying(self) -> None:
        """Connect; while the server cannot be reached (a restart's gap), back off and try
        again, bounded. Any other failure (auth, consent, a server error) raises at once."""
        deadline = asyncio.get_running_loop().time() + _RETRY_WINDOW
        closes = self._closes  # a close() from now on stops it (its waits too)
        await _while_unreachable(
            lambda: self._connect_as(active_caller(), reset=False, closes=closes),
            deadline,
            pause=functools.partial(self._pause, closes=closes),
        )

    async def __aexit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if self._pool is None:
            self._opened_by_agent = False  # the agent closed (or failed to open after it)
            await super().__aexit__(exc_type, exc_value, traceback)
            return
        # A pooled connection outlives the run: the pool closes it when idle. The run is over:
        # its caller stops backing connection-lifetime requests, and a background run's own
        # Caller ends here.
        from ._hosting import end_run_caller

        self._leases = max(0, self._leases - 1)
        self.last_used = time.monotonic()
        ending = current_caller()
        end_run_caller()
        self._lessees = [c for c in self._lessees if c is not ending and c.active]
        if self._leases == 0 and not self.busy(time.monotonic()):
            self._lessees = []
            self._set_lifecycle_caller(None)
            if self._retired:
                await self.close()
            else:
                self._pool.released()  # over its bound after a burst: trimmed now
        elif self._lifecycle_caller is ending or (
            self._lifecycle_caller is not None and not self._lifecycle_caller.active
        ):
            # Another run of the connection's user goes on: its caller backs the
            # connection-lifetime requests from now (else they would go out with no token).
            self._set_lifecycle_caller(self._lessees[-1] if self._lessees else None)

    # -- tool calls ------------------------------------------------------------------------------

    async def call_tool(self, tool_name: str, **kwargs: Any) -> str | list[Content]:
        caller = active_caller()
        if caller is not None:
            caller.take_errors()
        try:
            return await self._call_at_most_once(caller, tool_name, kwargs)
        except UserInputRequiredException:
            raise
        except _ToolClosed as closed:
            if closed.tool_name is not None:
                raise
            raise _ToolClosed(self.server_label, tool_name) from closed
        except Exception as exc:
            failure = self._call_failure(exc, caller)
            if failure is exc:
                raise  # unchanged: keep its own cause (``raise exc from exc`` would lose it)
            raise failure from exc

    async def _call_at_most_once(
        self, caller: Caller | None, tool_name: str, kwargs: dict[str, Any]
    ) -> str | list[Content]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _RETRY_WINDOW
        # A close() from now on: the call is not sent (again), and nothing reconnects for it.
        closes = self._closes
        delay = 0.05  # backoff while the server cannot be reached on a live connection
        reconnects = 0
        refusals = 0  # attempts whose session the server refused (404)
        # Sent again after a prompt reset (taken as "the server never read it"): only once. A
        # second one says the assumption does not hold here (a device that forwards each call
        # and then resets), and each resend would run the tool once more.
        resent_after_reset = False
        sent: CallAttempt | None = None  # the last attempt made
        for number in range(1, _MAX_ATTEMPTS + 1):
            if self._principal_bound:
                if time.monotonic() - self._bound_at < _BOUND_VERDICT_SECONDS:
                    raise self._bound_error()
                # The verdict lapsed: try again (a real principal-bound server is found again
                # within two user switches).
                self._principal_bound = False
                self._bound_suspect = None
            try:
                await self._await_reconnect()
                result = await self._resolve(caller)  # again before every attempt
                # Resolving may have taken a while (a token exchange): a connect may have
                # started meanwhile, and may have a session but no tool list yet.
                await self._until_sendable(tool_name, closes)
                self._stop_if_closed(closes)
            except Exception as exc:
                if resent_after_reset and sent is not None:  # the resent one may have run
                    # Consent asked for now included: "consent, then call again" would run a
                    # call that may have run once more. The next call asks for consent again.
                    raise self._outcome_unknown("reset_then_unsent", exc, sent, tool_name) from exc
                raise
            generation = self._generation
            attempt: CallAttempt
            try:
                with self._entra_auth.use(result), call_attempt() as attempt:
                    attempt.started = time.monotonic()
                    self._calls[attempt] = done = asyncio.Event()
                    try:
                        if self._pool is not None and caller is not None:
                            self._lease(caller)
                        outcome = await super().call_tool(tool_name, **kwargs)
                    finally:
                        del self._calls[attempt]
                        done.set()
            except UserInputRequiredException as consent:
                self._cut_off.pop(attempt, None)
                if resent_after_reset:  # an earlier attempt, reset, may have run
                    raise self._outcome_unknown(
                        "reset_then_unsent", consent, attempt, tool_name
                    ) from consent
                raise
            except Exception as exc:
                sent = attempt
                cut_off = self._cut_off.pop(attempt, None)
                attempt.close()  # a request of it not yet in the transport never leaves now
                with suppress(TimeoutError):  # its requests' own outcome, then the verdict
                    async with asyncio.timeout(_SETTLE_WAIT):
                        await attempt.settled()
                verdict = self._verdict(exc, attempt, caller, generation)
                if verdict == "retry" and attempt.not_sent == "reset":
                    if resent_after_reset:
                        verdict = "reset_again"
                    resent_after_reset = True
                stop: Exception | None = None  # the call is not sent again, for this reason
                if verdict == "raise":
                    refused = self._refusal(attempt, tool_name, caller)
                    if refused is None:
                        if resent_after_reset and consent_from_exception(exc) is not None:
                            # The resend was answered with a consent link (a URL elicitation):
                            # "consent, then call again" would run once more a call that may
                            # have run. The next call asks for consent again.
                            raise self._outcome_unknown(
                                "reset_then_unsent", exc, attempt, tool_name
                            ) from exc
                        raise  # the tool's own error: its answer
                    stop = refused
                elif verdict == "bound":
                    stop = self._bound_error()
                elif verdict == "no_token":
                    stop = self._no_token_error(exc, caller)
                if stop is not None:
                    if resent_after_reset:
                        # An earlier attempt was reset and taken as not read: it may have run.
                        raise self._outcome_unknown(
                            "reset_then_refused" if verdict == "raise" else "reset_then_unsent",
                            stop,
                            attempt,
                            tool_name,
                        ) from stop
                    # Not chained for a refusal: the mcp SDK's error may carry the server's
                    # answer, which can echo the token it refused. The typed error says it.
                    raise stop from (None if verdict == "raise" else exc)
                if verdict in (
                    "maybe_ran",
                    "session_lost",
                    "reset_again",
                    "no_answer",
                    "misrouted",
                    "broke_schema",
                ):
                    if cut_off == "close":
                        pass  # the tool was closed under it: not reopened behind the closer
                    elif verdict == "session_lost":
                        # The connection is alive, its session is not: replaced before this
                        # call answers (bounded), so that the next call does not go out on it.
                        with suppress(Exception):
                            await self._recover(generation, deadline, closes)
                    elif is_dead_connection(exc):
                        self._reconnect_soon(generation, closes)
                    raise self._outcome_unknown(
                        verdict, exc, attempt, tool_name, cut_off=cut_off
                    ) from exc
                # "retry"/"refused": the request provably never reached the server, or the
                # server refused the session (404) before running anything.
                if verdict == "refused":
                    refusals += 1
                if (
                    number == _MAX_ATTEMPTS
                    or reconnects == _MAX_RECONNECTS
                    or loop.time() >= deadline
                ):
                    if resent_after_reset:
                        # The reset, taken for "never read", may not have been one.
                        raise self._outcome_unknown(
                            "reset_then_gave_up", exc, attempt, tool_name
                        ) from exc
                    raise ToolException(
                        f"The call to tool {tool_name!r} could not be sent to MCP server "
                        f"{self.server_label!r} (it did not run): " + _gave_up(number, refusals),
                        exc,
                    ) from exc
                try:
                    if verdict != "refused" and not is_dead_connection(exc) and self.is_connected:
                        # The server could not be reached (a restart's gap) but the connection
                        # is alive: back off and send again on it. Replacing it would cut off
                        # the calls still in flight on it, which the server may yet answer.
                        _log.info(
                            "MCP server %r: call not sent (%s), retrying",
                            self.server_label,
                            type(exc).__name__,
                        )
                        pause = functools.partial(self._pause, closes=closes)
                        delay = await _back_off(delay, pause)
                        continue
                    self._stop_if_closed(closes)  # not reopened behind the closer
                    _log.info(
                        "MCP server %r: call not sent (%s), reconnecting and retrying",
                        self.server_label,
                        type(exc).__name__,
                    )
                    reconnects += 1
                    await self._recover(generation, deadline, closes)
                    continue
                except Exception as stopped:
                    if resent_after_reset:  # the attempt sent after the reset may have run
                        raise self._outcome_unknown(
                            "reset_then_unsent", stopped, attempt, tool_name
                        ) from stopped
                    raise
            self._cut_off.pop(attempt, None)  # answered before the close cut it off
            if (
                self.mode == "shared"
                and generation == self._generation
                and _oid_of(caller) not in (None, self._session_owner)
            ):
                self._bound_suspect = None  # another user's call ran on this session
                self._sessions_shared = True
            return outcome
        raise AssertionError("unreachable")  # pragma: no cover

    def _verdict(
        self, exc: Exception, attempt: CallAttempt, caller: Caller | None, generation: int
    ) -> str:
        """``raise`` (not about the connection: e.g. the tool's own error), ``no_token``
        (nothing sent: no token could be applied), ``retry`` (provably never reached the
        server), ``refused`` (the server refused the session, 404, before running anything),
        ``bound`` (the server binds sessions to principals), ``maybe_ran``, ``no_answer`` (it
        may have run: the server, or a device in front of it, answered the call 2xx with no
        JSON-RPC answer in it), ``misrouted`` (it may have run: the answer on its response
        carried another request's id)."""
        if attempt.not_sent == "no_token" and not attempt.sent:
            return "no_token"
        # 404 to this very call on a legacy session, as the transport recorded it: the SDK
        # then reports "Session not found", or "Connection closed" when the refusal closed its
        # connection first. Never from the error's text: a tool that ran may fail with a
        # message that says "Session not found" (HTTP 200, or 400 from a modern server), and
        # resending it would run it again.
        if attempt.session_refused:
            # 404 on the session: refused before anything ran, so a retry is safe. In shared
            # mode: a session refused another user than its opener; if the session opened after
            # that (by that user) refuses yet another user, the server binds sessions to
            # principals. (After a plain restart every old session is refused: that counts once.)
            if self.mode == "shared" and generation == self._generation:
                user = _oid_of(caller)
                if user is not None and user != self._session_owner:
                    if (
                        self._bound_suspect is not None
                        and self._bound_suspect < generation
                        and not self._sessions_shared
                    ):
                        self._principal_bound = True
                        self._bound_at = time.monotonic()
                        return "bound"
                    if self._bound_suspect is None:
                        self._bound_suspect = generation
                else:
                    self._bound_suspect = None
            return "refused"
        if attempt.session_lost:
            # A 404 on the session through a proxy, or with resends switched off: a device may
            # have answered it after the server ran the call. Not sent again; reconnected.
            return "session_lost"
        if attempt.never_left and (
            is_dead_connection(exc) or attempt.not_sent in ("connect", "reset")
        ):
            return "retry"
        if attempt.misrouted:
            # The server answered it with another request's JSON-RPC id (the transport dropped
            # that answer, given to no caller): it was sent, and may have run.
            return "misrouted"
        if attempt.sent and _schema_breach(exc) is not None:
            # The server answered a result (not an error: the tool ran) that the mcp client
            # refused against the tool's declared output schema. Never resent: it ran.
            return "broke_schema"
        if _not_an_answer(exc, attempt):
            return "no_answer"
        if attempt.sent and (
            is_dead_connection(exc)
            # Lost before the answer's headers, or while reading its body (an SSE answer
            # streams for as long as the tool runs).
            or attempt.transport_error is not None
            or (attempt.status is not None and attempt.status >= 500)
            # Throttled: a rate limit in front of the tool, or the server after running it.
            or attempt.status == 429
            # Another HTTP error with no JSON-RPC error in it (the SDK's stand-in): nothing
            # says it did not run. (401/403 are the token's refusal: ``_refusal``.)
            or (
                attempt.status is not None
                and attempt.status >= 400
                and attempt.status not in (401, 403)
                and is_status_stand_in(exc)
            )
            or is_request_timeout(exc)  # no answer in time: it may be running still
            or is_lost_response(exc)  # the SDK's stand-in for a body it could not read
        ):
            return "maybe_ran"
        return "raise"

    def _outcome_unknown(
        self,
        verdict: str,
        exc: Exception,
        attempt: CallAttempt,
        tool_name: str,
        *,
        cut_off: str | None = None,
    ) -> CallOutcomeUnknown:
        """The "may have run" error of a call that is not sent again: what happened, and what
        to do (the server's own text is never quoted: it may echo what it was sent).
        ``cut_off``: this tool closed the call's connection under it ("reconnect", "close")."""
        status = attempt.status
        if cut_off or (
            verdict not in ("no_answer", "misrouted")
            and (attempt.transport_error is not None or status is None or status < 400)
        ):
            # No HTTP error answered the call: the connection, or its body, lost. Or our own
            # close cut it off: what the server answered the request it was ended with (a 500,
            # say, after the session's DELETE) is no fault of the server's. (A 2xx with no
            # JSON-RPC answer in it is what the server answered: its status stays.)
            status = None
        retry_after = attempt.retry_after if status is not None else None
        fix = ""
        if cut_off is not None:
            by = (
                "this tool replaced its connection (another call found it dead, or the server "
                "refused its session: a server restart, say)"
                if cut_off == "reconnect"
                else "the tool was closed (its agent closed, the host shut down, or its pool "
                "retired the connection)"
            )
            why = (
                f"{by} and closed the connection under this call after waiting {_DRAIN_WAIT:g} "
                "s for it to finish"
            )
        elif verdict.startswith("reset_"):
            if verdict == "reset_again":
                then = (
                    "sent once more, and was reset again: a device in front of the server (a "
                    "load balancer, a gateway) may forward each call and then reset the "
                    "connection"
                )
            elif verdict == "reset_then_refused":
                then = (
                    "sent once more, and the server refused the token of that resend (HTTP "
                    f"{attempt.status}; the refusal is this error's cause)"
                )
            elif verdict == "reset_then_unsent":
                then = f"then {_not_sent_again(exc)}"
            else:  # reset_then_gave_up
                then = "then the server could not be reached to send it again"
            why = (
                "the server reset the connection as the call arrived, before any answer; it "
                f"was taken as not read, {then}"
            )
            fix = (
                " Fix: if a device in front of the server forwards calls and then resets "
                f"connections, set {RESEND_ON_RESET_VARIABLE}=false so that no call is sent "
                "again after a reset."
            )
        elif verdict == "session_lost":
            why = (
                "the session was refused (HTTP 404) through a proxy or a gateway (a Foundry "
                f"toolbox route), or with {RESEND_ON_RESET_VARIABLE}=false, where a 404 may "
                "come after the call ran"
            )
        elif verdict == "broke_schema":
            breach = _schema_breach(exc)
            why = (
                "the server answered it with a result, not an error, but "
                f"{breach.what if breach is not None else 'the result breaks its outputSchema'}"
                "; the mcp client drops a result that breaks the tool's declared outputSchema"
            )
            fix = (
                " Fix: correct the MCP server's tool so that its structured content matches "
                "its declared outputSchema (or correct the outputSchema, or declare none); "
                "until then every call of it fails this way after running."
            )
        elif verdict == "misrouted":
            why = (
                "the server answered it with the JSON-RPC id of another request (a server, "
                "cache or gateway that mislabels answers; that answer was dropped, given to no "
                "caller)"
            )
            fix = (
                " Fix: look in the MCP server's log (or that of a proxy or gateway in front of "
                "it) for why it answered this call with another request's id."
            )
        elif verdict == "no_answer":
            if status == 202:
                why = (
                    "the server answered HTTP 202 Accepted, with no answer in it (202 is for "
                    "notifications: a request's answer comes in its response), after taking "
                    "the call"
                )
            else:
                why = (
                    f"the server answered HTTP {status} with a body that is not a JSON-RPC "
                    "answer (neither JSON-RPC JSON nor an event stream: a proxy's, gateway's or "
                    "sign-in page, say)"
                )
            fix = (
                " Fix: look in the MCP server's log (or that of a proxy or gateway in front of "
                f"it) for why it answered this call HTTP {status} without an answer."
            )
        elif attempt.held_back == "no_token":
            why = (
                "the server closed its answer's stream, which could not be resumed: no token "
                "could be applied to the request that resumes it (the user's token expired "
                "during the call, say)"
            )
        elif status is not None:
            why = f"the server answered HTTP {status}"
            if status == 429:
                why += " (too many requests), which does not say the tool did not run"
                fix = (
                    " Fix: wait as the server asks, check whether the call took effect, and "
                    "call it again only if it did not; if the server throttles often, make "
                    "fewer calls or raise its limit."
                )
            elif status < 500:
                why += " without a JSON-RPC error, which does not say whether it ran"
                fix = (
                    f" Fix: look in the MCP server's log (or that of a proxy or gateway in "
                    f"front of it) for why it answered HTTP {status} to this call."
                )
        elif is_request_timeout(exc) and not self._answered_timeout(attempt):
            limit = self.request_timeout
            why = "no answer came within the tool's request timeout" + (
                f" ({limit:g} s)" if isinstance(limit, (int, float)) else ""
            )
            fix = (
                " Fix: if this tool runs longer than that, raise request_timeout= "
                "(entra_mcp_tool, EntraMCPTool) for it."
            )
        elif is_request_timeout(exc):
            why = (
                "the server, or a gateway in front of it, answered that the request timed out "
                "(JSON-RPC -32001) before this tool's own request timeout"
            )
            fix = (
                " Fix: look in the MCP server's log (or the gateway's) for the timeout it "
                "applies to this tool; raising this tool's request_timeout= does not change it."
            )
        elif (size := oversized_event_limit(exc)) is not None:
            why = (
                "its answer was larger than the client's limit for one server-sent event "
                f"({size} bytes, the mcp SDK's), so it was dropped"
            )
            fix = (
                " Fix: have the tool return less per call (page its results), or serve the MCP "
                "server's answers as JSON (json_response=True) rather than SSE."
            )
        elif attempt.transport_error == "ReadTimeout":
            why = "its answer did not arrive within the HTTP client's read timeout"
        else:
            why = "the connection was lost after the request was sent"
        wait = ""
        if retry_after is not None:
            wait = (
                f" The server asked to wait {_wait_text(retry_after)} (Retry-After) before "
                "calling again."
            )
        if verdict == "reset_again":
            not_again = "it is not sent a third time (it may have run twice)"
        elif verdict == "broke_schema":
            not_again = "it is not retried automatically (that would run it again)"
        else:
            not_again = "it is not retried automatically so that it never runs twice"
        ran = "ran" if verdict == "broke_schema" else "may have run"
        return CallOutcomeUnknown(
            f"The call to tool {tool_name!r} on MCP server {self.server_label!r} {ran}: "
            f"{why}, and {not_again}. Check whether it took effect before calling it "
            f"again.{wait}{fix}",
            # Not the error that stopped a resend: it speaks of that request alone ("the call
            # did not run"), which is no longer known. It stays this error's cause.
            None if verdict in ("reset_then_refused", "reset_then_unsent") else exc,
            status=status,
            retry_after=retry_after,
        )

    def _answered_timeout(self, attempt: CallAttempt) -> bool:
        """Whether a "timed out" error (-32001) came well before this tool's request timeout:
        then it is an answer (the server's, a gateway's), not the mcp SDK giving up."""
        limit = self.request_timeout
        if attempt.started is None or not isinstance(limit, (int, float)) or limit <= 0:
            return False
        return time.monotonic() - attempt.started < 0.9 * limit

    def _refusal(
        self, attempt: CallAttempt, tool_name: str, caller: Caller | None
    ) -> TokenVerificationError | None:
        """The MCP server's 401/403 to this call, typed (``call_refusal``): the mcp SDK reports
        only "Server returned an error response", which tells neither the model nor the user
        that the token was refused nor why."""
        if caller is not None and not caller.active:
            # The run's caller ended while the call was out (a background run is capped at its
            # user's token expiry, about when a server starts refusing that token): the 401 is
            # that expiry, and "check the scopes" would send the operator the wrong way.
            return None
        # A toolbox's 403 refuses the call (its call id), not the agent's token it expects.
        toolbox_403 = attempt.toolbox == "user" and attempt.status == 403
        what = "the call" if toolbox_403 else "the token of the call"
        return call_refusal(
            attempt,
            f"MCP server {self.server_label!r} refused {what} to tool {tool_name!r}",
            claims_recorded=caller is not None
            and any(isinstance(e, InteractionRequired) for e in caller.errors),
            assertion_expired_at=next(
                (e.expired_at for e in caller.errors if isinstance(e, AssertionExpired)), None
            )
            if caller is not None
            else None,
            own_scopes=self.auth.scopes,
        )

    async def _until_sendable(self, tool_name: str, closes: int) -> None:
        """Return once a call to ``tool_name`` can go out with its arguments: no connect of
        ours in progress, and the tool's schema loaded (agent-framework keeps only the
        arguments the loaded schema declares: before the first ``tools/list`` is answered,
        none). Not connected: return, the send fails "not connected" before anything leaves
        and the call reconnects. A loaded list without the tool: ``ToolNotListed``."""
        for _ in range(3):  # bounded: a connect that keeps failing is the call's error
            await self._await_reconnect()
            if not self.is_connected or tool_name in self.listed_tools():
                return
            if self.tools_loaded:
                raise ToolNotListed(tool_name, self.server_label, self.listed_tools())
            if self._connect_lock.locked():
                break  # a connect still running after the wait (bounded): not sent, below
            # Connected, no connect of ours running and no tool list (agent-framework
            # reconnected by itself without loading one): load it now, as the caller.
            await self._connect_as(active_caller(), reset=False, closes=closes)
        raise ToolException(
            f"The call to tool {tool_name!r} was not sent to MCP server {self.server_label!r} "
            "(it did not run): the server's tool list could not be loaded. Fix: check that "
            "the server answers tools/list, then call the tool again."
        )

    async def _await_reconnect(self) -> None:
        """A call that arrives during a reconnect waits for it (bounded) instead of failing on
        the connection being replaced."""
        if not self._connect_lock.locked():
            return
        try:
            async with asyncio.timeout(_RECONNECT_WAIT):
                async with self._connect_lock:
                    pass
        except TimeoutError:
            pass  # sent anyway: it fails (and is retried) if the connection is still down

    async def _recover(self, generation: int, deadline: float, closes: int) -> None:
        """Replace the connection of ``generation`` (once, however many calls saw it die); if the
        server cannot be reached yet, back off (bounded by ``deadline``). Not after a close
        since ``closes``."""
        await _while_unreachable(
            functools.partial(self._reconnect, generation, closes),
            deadline,
            pause=functools.partial(self._pause, closes=closes),
        )

    def _reconnect_soon(self, generation: int, closes: int) -> None:
        """After a call that may have run: replace the dead connection for the next calls, in
        the background (this call is not retried). Not after a close since ``closes``."""
        caller = active_caller()
        task = asyncio.create_task(self._reconnect_quietly(caller, generation, closes))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reconnect_quietly(self, caller: Caller | None, generation: int, closes: int) -> None:
        try:
            await self._connect_as(caller, reset=True, generation=generation, closes=closes)
        except _ToolClosed:
            pass  # closed meanwhile: nothing to replace
        except Exception as exc:
            _log.info(
                "MCP server %r: reconnect failed (%s); the next call tries again",
                self.server_label,
                type(exc).__name__,
            )

    def _bound_error(self) -> ConfigurationError:
        return ConfigurationError(
            f"MCP server {self.server_label!r} binds each session to the user who opened it "
            "(404 'Session not found' when another user's call used it): one shared connection "
            "cannot serve several users. No call was sent.",
            fix="use a per-user pool: entra_mcp_tool(..., per_user=True) with "
            "ResponsesHostServer(agent=<factory>) and await pool.tool() "
            f"({see('agent-framework')})",
        )

    def _no_token_error(self, exc: Exception, caller: Caller | None) -> Exception:
        recorded = caller.take_errors() if caller is not None else []
        recorded += self._entra_auth.take_errors()
        typed = next((e for e in recorded if isinstance(e, EntraPassthroughError)), None)
        if typed is not None:
            return typed
        return NoCallerError(
            f"The call to MCP server {self.server_label!r} was not sent: no token could be "
            "applied to it."
        )

    def reconnects_after_loss(self, operation: str) -> bool:
        """Not for a tool call: agent-framework would reconnect and resend it, and a call that
        may have reached the server would run twice (``_call_at_most_once`` decides instead)."""
        return operation != "tool call"

    async def _resolve(self, caller: Caller | None) -> TokenResult:
        """The token for this call, resolved here in the tool call's task (errors raise here,
        in the agent run, never in the transport)."""
        result = await self._entra_auth.acquire_async(call=True)
        if result is None:
            bound = current_caller()
            if bound is not None and not bound.active:
                # The run's caller has ended (a background run past its user's token, capped at
                # its expiry): the error that says so, not "install CallerMiddleware".
                raise ended_caller_error(bound, self.auth.scopes)
            raise NoCallerError(
                f"The call to MCP server {self.server_label!r} has no active caller and the "
                "policy names no identity for it (a background run resumed after a restart, or "
                "code running outside any user's request)."
            )
        if self._pool_key is not None and result.kind is IdentityKind.USER:
            self._check_pool_identity(result)
        return result

    def _check_pool_identity(self, result: TokenResult) -> None:
        # The pooled connection is keyed by the caller's (tid, oid); the token Entra issued for
        # this call must name the same user, or the call would run on another user's session.
        try:
            claims = UnverifiedClaims.from_token(result.token)
        except JwtDecodeError:
            return  # opaque token: nothing to compare (the server binds its session itself)
        if (
            claims.tid
            and claims.oid
            and UserKey.for_entra_user(claims.tid, claims.oid) != self._pool_key
        ):
            raise PolicyViolation(
                "The token resolved for this call names another user than the pooled MCP "
                "connection it would use; the call was not sent.",
                policy="per_user",
                scopes=self.auth.scopes,
            )

    async def _reconnect(self, generation: int, closes: int) -> None:
        await self._connect_as(active_caller(), reset=True, generation=generation, closes=closes)

    def _call_failure(self, exc: Exception, caller: Caller | None) -> Exception:
        recorded = caller.take_errors() if caller is not None else []
        if isinstance(exc, CallOutcomeUnknown):
            # "May have run" outranks a consent request in its causes (one asked for on the
            # resend of a reset call): "consent, then call again" could run it once more.
            return exc
        for error in [exc, *recorded]:
            consent = consent_from_exception(error, server_label=self.server_label)
            if consent is not None:
                return consent_exception(consent, server_label=self.server_label)
        if isinstance(exc, (EntraPassthroughError, CallOutcomeUnknown, ToolNotListed)):
            return exc
        typed = next((e for e in recorded if isinstance(e, TokenAcquisitionError)), None)
        if typed is not None:
            return typed
        return exc


class _ToolClosed(ToolException):
    """A connect, or a call waiting for its connection, stopped because the tool was closed
    (``close()``, ``pool.aclose()``): nothing more was sent, and no tool ran."""

    def __init__(self, server_label: str, tool_name: str | None = None) -> None:
        self.tool_name = tool_name
        if tool_name is not None:
            what = (
                f"The call to tool {tool_name!r} was not sent to MCP server {server_label!r} "
                "(it did not run): the tool was closed"
            )
            when = "before the call could be sent"
        else:
            what = f"The connect to MCP server {server_label!r} was stopped: the tool was closed"
            when = "while it was connecting (no tool ran)"
        super().__init__(
            f"{what} (close(), pool.aclose(), the agent or the host shutting down) {when}; "
            "nothing more is sent for it. Fix: none while the host shuts down; else run it "
            "again on an open tool (closing a tool that runs still use cuts them off)."
        )


def _not_sent_again(exc: BaseException) -> str:
    """Why a call reset once (taken as not read) was not sent again, in a few words (never the
    error's own text: a closed tool's says "it did not run", which is no longer known)."""
    if isinstance(exc, _ToolClosed):
        return "the tool was closed (its agent or the host shutting down) before it was sent again"
    if isinstance(exc, ToolNotListed):
        return "the server's tool list no longer has the tool"
    if isinstance(exc, UserInputRequiredException) or consent_from_exception(exc) is not None:
        return "the user's consent was asked for before it could run again"
    if isinstance(exc, EntraPassthroughError):
        return f"no token could be applied to send it again ({type(exc).__name__})"
    return f"it could not be sent again ({type(exc).__name__})"


def _gave_up(attempts: int, refusals: int) -> str:
    """Why a call that never reached the server (or whose session was refused before it ran)
    was given up: a server that refuses its sessions is not an unreachable one, and the
    message must not send the operator looking for a network problem."""
    if refusals:
        return (
            f"the server refused its session (HTTP 404 to the call) on {refusals} of "
            f"{attempts} attempts, each time on a new session. Fix: check the MCP server's "
            "sessions: one it has just opened is unknown when the call arrives (several "
            "replicas without session affinity, sessions kept per process, a session store "
            "that loses them); use session affinity or a shared store, or run the server "
            "stateless."
        )
    return (
        f"the server was unreachable after {attempts} attempts. Fix: check that the MCP server "
        "is up and reachable from this host, then call the tool again."
    )


async def _back_off(
    delay: float, pause: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> float:
    """Sleep ``delay`` with jitter (0.5x to 1.5x), with ``pause`` (a close may end it); the next
    delay (doubled, at most 1 s)."""
    await pause(delay * (0.5 + random.random()))  # noqa: S311 (jitter)
    return min(delay * 2, 1.0)


async def _while_unreachable(
    operation: Callable[[], Awaitable[None]],
    deadline: float,
    *,
    pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run ``operation`` (a connect); while the server cannot be reached (a restart's gap),
    back off (``pause``) and run it again, until ``deadline`` (loop time). Any other failure
    raises."""
    loop = asyncio.get_running_loop()
    delay = 0.05
    while True:
        try:
            await operation()
            return
        except _ToolClosed:
            raise
        except Exception as exc:
            if not connect_lost(exc) or loop.time() + delay >= deadline:
                raise
        delay = await _back_off(delay, pause)


async def _not_cancelled_by_transport(operation: Awaitable[None]) -> None:
    """Run a connect/close that the lifecycle task performs. When the transport's task group
    dies under it (the server went away mid-handshake), the lifecycle task is cancelled and the
    waiting caller gets its ``CancelledError`` although nobody cancelled the caller: that is a
    dead connection (retryable), not a cancellation to propagate (the host would answer 500)."""
    try:
        await operation
    except asyncio.CancelledError as cancelled:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # we are being cancelled
        raise ToolException(
            "the MCP connection was lost while connecting", anyio.ClosedResourceError()
        ) from cancelled


@functools.cache
def _public_tool_failure_type() -> type[Exception] | None:
    public = public_failure_type()
    if public is None:
        return None

    def init(self: Any, error: Exception) -> None:
        ToolException.__init__(self, str(error), error)
        self.error = error
        self.public_message = str(error)

    kind: type[Exception] = type("PublicToolFailure", (ToolException, public), {"__init__": init})
    return kind


def shown_at_agent_init(error: Exception, *, server_label: str | None = None) -> Exception:
    """``error`` in the shape ``ResponsesHostServer`` shows its client when the agent's tools
    fail to open: there it catches agent-framework's exceptions only, and shows the message of
    its public failure type alone (anything else is "server_error"). A pooled connection opens
    there. Without the hosting package, ``public_failure(error)``. ``server_label``: the
    message names that MCP server, unless the error's own message does."""
    kind = _public_tool_failure_type()
    shown = public_failure(error) if kind is None else kind(error)
    named = f"MCP server {server_label!r}"
    if server_label and shown is not error and named not in str(error):
        message = f"{named} could not be opened for this user: {error}"
        shown.args = (message, *shown.args[1:])
        if hasattr(shown, "public_message"):
            shown.public_message = message
    return shown


def _token_error_of(exc: BaseException) -> EntraPassthroughError | None:
    """The typed token error that made a connect fail (``_connect_failure`` puts it inside its
    ``ToolException``), unless the failure is already in a shape the host shows (a consent, or
    a public failure)."""
    if not isinstance(exc, ToolException) or consent_from_exception(exc) is not None:
        return None
    # ToolException(message, inner): agent-framework keeps the inner exception in args.
    inner = exc.args[1] if len(exc.args) > 1 else None
    return inner if isinstance(inner, EntraPassthroughError) else None


def _not_an_answer(exc: BaseException, attempt: CallAttempt) -> bool:
    """The call's ``tools/call`` was answered 2xx with no JSON-RPC answer in it: ``202
    Accepted`` (no body: what a server answers a notification), or a body that is neither
    JSON-RPC JSON nor an event stream (a proxy's or a sign-in page, ``200 text/html``), or JSON
    that is no JSON-RPC message. The mcp SDK resolves the call with a stand-in error of its own
    (INVALID_REQUEST "server answered a request with 202 Accepted", "Unexpected content type:
    ...", PARSE_ERROR "Failed to parse JSON response: ..."), which reads like the tool's own
    error. The request was taken (a server that answers it 202 may well have run it): it may
    have run."""
    from mcp import MCPError
    from mcp_types import INVALID_REQUEST, PARSE_ERROR

    status = attempt.status
    if not attempt.sent or attempt.transport_error is not None or status is None:
        return False
    if not 200 <= status < 300:
        return False
    if status == 202:
        return True  # a request's answer is never a 202: whatever the SDK made of it
    for current in exception_chain(exc):
        if isinstance(current, MCPError):
            code, message = current.error.code, current.error.message
            if (code == INVALID_REQUEST and message.startswith("Unexpected content type:")) or (
                code == PARSE_ERROR and message.startswith("Failed to parse JSON response")
            ):
                return True
    return False


class _OutputSchemaBreach(RuntimeError):
    """Raised in place of the mcp SDK's ``RuntimeError`` from ``ClientSession.
    validate_tool_result``: the server answered a tool's call with a result (so the tool ran)
    that breaks the tool's declared ``outputSchema``, and the SDK refused it. ``what`` says how,
    from the server's declared schema alone (never the result's content, which may echo what
    the tool was sent)."""

    def __init__(self, tool_name: str, what: str) -> None:
        super().__init__(f"the answer of tool {tool_name!r} was refused: {what}")
        self.what = what


#: Marks a ``validate_tool_result`` already wrapped by ``_type_schema_refusals``.
_SCHEMA_TYPED = "_entra_typed_schema_refusals"


def _type_schema_refusals(session: Any) -> None:
    """Wrap the session's public ``validate_tool_result`` (the mcp SDK calls it on the
    session for every result that is not an error, ``ClientSession.call_tool`` and
    ``Client.call_tool`` alike): its ``RuntimeError`` (structured content missing or not
    matching the tool's declared output schema, or that schema unusable) becomes an
    ``_OutputSchemaBreach`` (still a ``RuntimeError``), which ``call_tool`` turns into a
    ``CallOutcomeUnknown`` that says the call ran. agent-framework would report it as a bare
    "Failed to call tool", which reads as "it did not run" and invites running it again."""
    validate = getattr(session, "validate_tool_result", None)
    if not callable(validate) or getattr(validate, _SCHEMA_TYPED, False):
        return

    async def typed(name: str, result: Any) -> None:
        try:
            await validate(name, result)
        except _OutputSchemaBreach:
            raise
        except RuntimeError as exc:
            what = _how_it_broke(exc, result)
        else:
            return
        # Raised outside the ``except``: neither the SDK's error nor jsonschema's (both quote
        # the result's values, which may echo what the tool was sent) stays on the chain that
        # agent-framework logs at DEBUG.
        raise _OutputSchemaBreach(name, what)

    setattr(typed, _SCHEMA_TYPED, True)
    session.validate_tool_result = typed


def _how_it_broke(exc: RuntimeError, result: Any) -> str:
    """How a result broke its tool's output schema: from the result's shape and the failed
    check's place in the declared schema (``absolute_schema_path``: schema keywords and
    property names the server declared), never from the result's values."""
    if getattr(result, "structured_content", None) is None:
        return (
            "the tool declares an outputSchema and its result has no structured content "
            "(structuredContent)"
        )
    # jsonschema's ValidationError (the SDK's cause for a result that does not match) has it.
    failed = getattr(exc.__cause__, "absolute_schema_path", None)
    if failed is not None:
        path = "/".join(str(part) for part in failed)
        where = f" (the check that failed: {path[:120]!r} in the schema)" if path else ""
        return (
            "its structured content (structuredContent) does not match the outputSchema the "
            f"server declared for the tool{where}"
        )
    return (
        "the outputSchema the server declared for the tool cannot be checked against (not a "
        "valid JSON Schema, or a $ref that does not resolve within it)"
    )


def _schema_breach(exc: BaseException) -> _OutputSchemaBreach | None:
    """The ``_OutputSchemaBreach`` in ``exc``'s chain, if any."""
    return next((e for e in exception_chain(exc) if isinstance(e, _OutputSchemaBreach)), None)


def _oid_of(caller: Caller | None) -> str | None:
    if caller is None:
        return None
    if caller.verified is not None:
        oid = caller.verified.get("oid")
        if isinstance(oid, str) and oid:
            return oid
    claims = caller.claims
    return claims.oid if claims is not None and claims.oid else None


def _connection_refused(exc: BaseException) -> bool:
    """The MCP server refused the TCP connection (nothing was sent): httpx2's ``ConnectError``
    or the OS's refusal, anywhere in the chain agent-framework wraps it in."""
    return any(
        isinstance(e, httpx2.ConnectError | ConnectionRefusedError) for e in exception_chain(exc)
    )


@functools.cache
def _warn_no_elicitation_slot() -> None:
    """Once per process: the mcp installed moved the session's elicitation slot, so a server's
    URL elicitation (a consent link) is declined by the SDK instead of reaching the user."""
    try:
        version = metadata.version("mcp")
    except metadata.PackageNotFoundError:  # pragma: no cover - mcp is imported above
        version = "unknown"
    _log.warning(
        "mcp %s has no ClientSession._elicitation_callback (checked against 2.2 and 2.3): a "
        "server's URL elicitation (a consent link) is declined instead of reaching the user. "
        "Fix: install the mcp version entra-passthrough[agent-framework] pins.",
        version,
    )


@dataclass(frozen=True, slots=True)
class _ConnectStatus:
    """An HTTP error other than 401/403 to a connection-lifetime request: its status, the
    seconds its ``Retry-After`` asked to wait (``None`` without one), the request's method."""

    status: int
    retry_after: float | None
    rpc: str | None

    def named(self) -> str:
        """E.g. "HTTP 503 to its tools/list request, Retry-After: 1 s"."""
        text = f"HTTP {self.status}"
        if self.rpc:
            text += f" to its {self.rpc} request"
        if self.retry_after is not None:
            text += f", Retry-After: {_wait_text(self.retry_after)}"
        return text


def _wait_text(seconds: float) -> str:
    """A ``Retry-After`` as read (``retry_after_seconds`` bounds it to an hour): an hour is
    "an hour or more", since the server may have asked for longer."""
    if seconds >= 3600:
        return "an hour or more"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.2g} s"


def _origin_of(url: str) -> str:
    """The URL's scheme, host and port: no user information, path or query (either may hold a
    key)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}" if parts.scheme and host else "its URL"


def _unreachable(exc: BaseException) -> bool:
    """The connect failed because the server could not be reached at all: the TCP or TLS
    connection could not be opened (refused, no such host, timed out, handshake failed)."""
    return any(
        isinstance(e, httpx2.ConnectError | httpx2.ConnectTimeout | ConnectionRefusedError)
        for e in exception_chain(exc)
    )
