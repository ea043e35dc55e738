"""Apply: ``EntraAuth`` for httpx2 (the client mcp and agent-framework use).

The decisions live in ``_flow`` (one generator, no I/O); this module adds the drivers (the only
code that does I/O: token acquisition), the httpx2 front and the pieces both fronts share:
acquiring a token ahead of the transport (``acquire_async``, ``prefetch``), the redirect
hook, and the error log for caller-less requests. The classic httpx front is
``entra_passthrough.httpx.EntraAuth``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator, Generator, Iterable, Sequence
from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import Any, cast

import httpx2

from ._caller import Caller, active_caller, current_caller
from ._errors import ConfigurationError
from ._flow import (
    APPLIED,
    Acquired,
    Chain,
    FlowCore,
    OnError,
    SendRequest,
    Step,
    UnsafeTokenValue,
)
from ._httpx_seams import skip_cookie_extraction_without_set_cookie
from ._origins import format_origin
from ._prefetch import use_token
from ._types import TokenResult
from ._verify import names

__all__ = ["APPLIED", "EntraAuth", "EntraAuthBase", "UnsafeTokenValue", "use_token"]


# --- the drivers: the only place that does I/O ---------------------------------------------


def acquire_sync(core: FlowCore, caller: Caller | None, claims: str | None) -> TokenResult | None:
    """The token for ``caller``; with none active, what ``acquire_async`` says. Raises."""
    if caller is not None and caller.active:
        result = core.chain.get_token(
            core.scopes,
            caller=caller,
            claims=claims,
            client_capabilities=core.client_capabilities,
        )
        if not _ended_meanwhile(caller):
            return result
        # The request ended while its token was being acquired (work that outlived it): it
        # gets what an ended caller's work gets, never the token acquired for the request.
        if core.connection:
            return core.chain.lifecycle_token(core.scopes)
        return core.chain.get_token(
            core.scopes, caller=caller, claims=claims, client_capabilities=core.client_capabilities
        )
    ended = None if core.connection else _ended_caller()
    if ended is not None:  # the chain refuses it with a typed error (or allows the app)
        return core.chain.get_token(
            core.scopes, caller=ended, claims=claims, client_capabilities=core.client_capabilities
        )
    return core.chain.lifecycle_token(core.scopes)


def _ended_meanwhile(caller: Caller) -> bool:
    """Whether ``caller``, active when its token was asked for, has ended since (its request
    completed while the token request was out)."""
    return not caller.active


def _ended_caller() -> Caller | None:
    """The caller bound to this context if it has ended: its user's work (a task that outlived
    the request, a bound run past its token's expiry), which never takes the lifecycle
    identity's allowance (``lifecycle_app=True``): the chain gives it only what a call of an
    ended caller gets (``Policy.call_kinds``). ``None`` when nothing is bound."""
    caller = current_caller()
    if caller is None or caller.active:
        return None
    return caller


async def acquire_async(
    core: FlowCore, caller: Caller | None, claims: str | None, *, call: bool = False
) -> TokenResult | None:
    """The token for ``caller`` while it is active. With none active:

    * a ``call`` (an MCP ``tools/call``): what the policy allows a call with no active caller
      (``chain.call_token_async``, told about ``caller`` if it has ended);
    * a request whose context holds an ended caller (a task that outlived its request, a
      bound run past its token's expiry) is that user's work: the chain gives it what a call of
      an ended caller gets (``Policy.call_kinds``: under ``app_only`` the app, under
      ``user_or_app`` the app if it presented no assertion) or refuses it with a typed error,
      unless the auth serves an MCP connection (``core.connection``), whose requests outside a
      call are connection-lifetime ones;
    * anything else: the lifecycle identity (``chain.lifecycle_token_async``).

    Raises."""
    if caller is not None and caller.active:
        result = await core.chain.get_token_async(
            core.scopes,
            caller=caller,
            claims=claims,
            client_capabilities=core.client_capabilities,
        )
        if not _ended_meanwhile(caller):
            return result
        # The request ended while its token was being acquired (a task that outlived it, its
        # token request already out): it gets what it would have got had it started after the
        # end (below), never the token acquired while the request was alive.
    if call:
        return await core.chain.call_token_async(core.scopes, ended=caller)
    ended = None if core.connection else _ended_caller()
    if ended is not None:
        return await core.chain.get_token_async(
            core.scopes, caller=ended, claims=claims, client_capabilities=core.client_capabilities
        )
    return await core.chain.lifecycle_token_async(core.scopes)


def drive_sync(auth: EntraAuthBase, request: Any) -> Generator[Any, Any, None]:
    """``sync_auth_flow`` of both fronts (assigned as the method: no call in between): run the
    decisions, do the token I/O with the sync chain."""
    core = auth._core
    hit = core.apply_hit(request)
    if hit is None:
        flow = core.flow(request)
        sent = False
    else:
        response = yield request
        if response.status_code != 401:
            return
        flow = core.after_401(request, hit[0], hit[1], response)
        sent = True
    value: Any = None
    try:
        while (step := _advance(core, request, flow, value, sent=sent)) is not None:
            if isinstance(step, SendRequest):
                sent = True
                value = yield step.request
                continue
            try:
                value = Acquired(result=acquire_sync(core, step.caller, step.claims))
            except Exception as exc:
                value = Acquired(error=exc)
    finally:
        flow.close()


async def drive_async(auth: EntraAuthBase, request: Any) -> AsyncGenerator[Any, Any]:
    """``async_auth_flow`` of both fronts (assigned as the method: the client's call creates
    this generator, with no call in between): the same loop as ``drive_sync``; only the
    acquisition awaits. A fresh cache hit skips the decision generator
    (``FlowCore.apply_hit``); a 401 to it continues in ``FlowCore.after_401``, the same step 5
    as the full flow."""
    core = auth._core
    hit = core.apply_hit(request)
    if hit is None:
        flow = core.flow(request)
        sent = False
    else:
        response = yield request
        if response.status_code != 401:
            return
        flow = core.after_401(request, hit[0], hit[1], response)
        sent = True
    value: Any = None
    try:
        while (step := _advance(core, request, flow, value, sent=sent)) is not None:
            if isinstance(step, SendRequest):
                sent = True
                value = yield step.request
                continue
            try:
                value = Acquired(result=await acquire_async(core, step.caller, step.claims))
            except Exception as exc:
                value = Acquired(error=exc)
    finally:
        flow.close()


def _advance(
    core: FlowCore, request: Any, flow: Generator[Step, Any, None], value: Any, *, sent: bool
) -> Step | None:
    """The flow's next step, ``None`` when it is done. In record mode an error escaping the
    flow never raises inside the transport: it is recorded, our headers are stripped, and the
    request still goes out (once) if it had not yet."""
    try:
        return flow.send(value)
    except StopIteration:
        return None
    except Exception as exc:
        if core.on_error == "raise":
            raise
        core.record(current_caller(), exc)
        FlowCore.strip(request)
        return None if sent else SendRequest(request)  # the finished flow then stops the loop


class _KeepNothingNew(DefaultCookiePolicy):
    """A cookie policy that sends what the jar holds and stores nothing a response sets."""

    def set_ok(self, cookie: Cookie, request: Any) -> bool:
        return False


_SCOPE = "api://<app>/.default"


def _check_chain(chain: object) -> None:
    """A ``TokenChain`` (or a chain of the application's own with ``get_token`` and
    ``get_token_async``), else a ``ConfigurationError``: ``None`` or a string was taken and the
    first request through the client raised ``AttributeError`` inside the application."""
    if not all(callable(getattr(chain, m, None)) for m in ("get_token", "get_token_async")):
        raise ConfigurationError(
            f"EntraAuth needs a TokenChain as its first argument, not {type(chain).__name__}.",
            fix=f"EntraAuth(TokenChain([...]), scopes=[{_SCOPE!r}], origins=[...]).",
        )


_ORIGIN = "https://mcp.contoso.com"


def _origin_list(origins: object) -> tuple[str, ...]:
    """``origins=`` as a tuple (one string is one origin), else a ``ConfigurationError``:
    ``None`` or a number ended in a bare ``TypeError``, and bytes were read as numbers."""
    if isinstance(origins, str):
        return (origins,)
    if not isinstance(origins, bytes | bytearray):
        try:
            return tuple(cast("Iterable[str]", origins))
        except TypeError:
            pass
    raise ConfigurationError(
        f"origins must be a list of origins ({type(origins).__name__} given).",
        fix=f"pass the origins that may receive a token as strings: origins=[{_ORIGIN!r}].",
    )


def _capabilities(value: object) -> tuple[str, ...]:
    """``client_capabilities=`` as a tuple of names, else a ``ConfigurationError``: one string
    (``"CP1"`` was declared as the capabilities C, P and 1), ``None`` or a number."""
    if value is None:
        raise ConfigurationError(
            "client_capabilities must be a list of names (None given).",
            fix="pass client_capabilities=['CP1'] for continuous access evaluation, or leave "
            "it out (no capabilities).",
        )
    return names(value, what="client_capabilities", example="CP1")


#: ``install``'s fix for a client of the other library (by its top-level module).
_OTHER_FRONT = {
    "httpx": "use entra_passthrough.httpx.EntraAuth for a classic httpx client "
    "(entra_passthrough.EntraAuth, the default, is for httpx2).",
    "httpx2": "use entra_passthrough.EntraAuth (the default) for an httpx2 client "
    "(entra_passthrough.httpx.EntraAuth is for classic httpx).",
}


class EntraAuthBase:
    """What the httpx2 and httpx fronts of ``EntraAuth`` share (everything but the base class)."""

    _core: FlowCore
    #: The front's client classes: ``install`` takes only these, and picks the matching
    #: redirect hook with the async one.
    _sync_client: type[Any]
    _async_client: type[Any]
    #: Where this front lives and the library its clients come from (``install``'s refusal).
    _front: str
    _library: str

    def __init__(
        self,
        chain: Chain,
        *,
        scopes: Sequence[str],
        origins: Iterable[str],
        on_error: OnError = "raise",
        client_capabilities: Sequence[str] = (),
        allow_insecure_loopback: bool = True,
        connection: bool = False,
    ) -> None:
        _check_chain(chain)
        # One string is one scope (FlowCore wraps it). A scope holding a space was sent as two
        # scopes; a number was a bare TypeError: refused as JwtVerifier refuses them.
        # ``names`` returns the entries as a tuple: a generator is read once, here.
        checked = names(
            (scopes,) if isinstance(scopes, str) else scopes, what="scopes", example=_SCOPE
        )
        self._core = FlowCore(
            chain,
            scopes=checked,
            origins=_origin_list(origins),
            on_error=on_error,
            client_capabilities=_capabilities(client_capabilities),
            allow_insecure_loopback=allow_insecure_loopback,
            connection=connection,
        )

    @property
    def chain(self) -> Chain:
        return self._core.chain

    @property
    def scopes(self) -> tuple[str, ...]:
        return self._core.scopes

    @property
    def origins(self) -> tuple[str, ...]:
        """The normalised origins that may receive a token, e.g. ``https://mcp.contoso.com``."""
        return tuple(sorted(format_origin(o) for o in self._core.origins))

    @property
    def on_error(self) -> OnError:
        return self._core.on_error

    def allows(self, url: Any) -> bool:
        """Whether a request to ``url`` (an ``httpx2``/``httpx`` URL) may carry a token: its
        origin is one of ``origins``."""
        return self._core.allows(url)

    def install(self, client: Any) -> None:
        """Make ``client`` (sync or async, of this front's library) use this auth and the
        redirect hook that strips our headers from a redirect to another origin, and stop it
        storing cookies: one client serves every user, and a cookie set on one user's response
        would ride on the next user's requests (an API that reads its session cookie before
        the bearer would serve them as the first user). Cookies the client was given are kept
        and sent as before. A classic httpx client also skips the jar for a response that sets
        no cookie, as httpx2 does itself (``skip_cookie_extraction_without_set_cookie``).
        Another client (the other library's) is refused before anything of it is changed."""
        self._check_client(client)
        jar = CookieJar(policy=_KeepNothingNew())
        for cookie in client.cookies.jar:
            jar.set_cookie(cookie)
        client.cookies = jar
        skip_cookie_extraction_without_set_cookie(client)
        hooks = dict(client.event_hooks)
        async_client = isinstance(client, self._async_client)
        hook: Any = self.async_request_hook if async_client else self.request_hook
        hooks["request"] = [*hooks.get("request", []), hook]
        client.event_hooks = hooks
        client.auth = self

    def _check_client(self, client: Any) -> None:
        if isinstance(client, self._sync_client | self._async_client):
            return
        kind = type(client)
        library = kind.__module__.partition(".")[0]
        for name in _OTHER_FRONT:  # a subclass (openai's client, say) is its base's library's
            module = sys.modules.get(name)
            if module is not None and isinstance(client, module.Client | module.AsyncClient):
                library = name
                break
        given = f"{library}.{kind.__qualname__}"
        mine = f"{self._library}.Client or {self._library}.AsyncClient"
        fix = _OTHER_FRONT.get(library, f"pass an {mine}.")
        raise ConfigurationError(
            f"{self._front}.install() was given {given}; it installs on {mine} only.", fix=fix
        )

    def take_errors(self) -> list[BaseException]:
        """Acquisition errors recorded (``on_error="record"``) for requests with no caller at
        all; errors of requests with a caller, active or ended, are on that ``Caller``
        (``take_errors()``)."""
        return self._core.take_errors()

    # -- ahead of the transport --

    def acquire(self, *, claims: str | None = None) -> TokenResult | None:
        """Resolve the token the next request in this context would carry. Raises the typed
        error (whatever ``on_error`` says): meant for code that can handle it."""
        return acquire_sync(self._core, active_caller(), claims)

    async def acquire_async(
        self, *, claims: str | None = None, call: bool = False
    ) -> TokenResult | None:
        """Async twin of ``acquire``. ``call=True`` for a call made for someone (an MCP
        ``tools/call``): with no active caller it gets only what the policy allows a call
        (``Policy.call_kinds``: the app under ``app_only``, or ``user_or_app`` when no user
        was ever bound or the ended one presented nothing), never the allowance of
        ``TokenChain(lifecycle_app=True)``, which is for connection-lifetime requests."""
        return await acquire_async(
            self._core, current_caller() if call else active_caller(), claims, call=call
        )

    def use(self, result: TokenResult) -> use_token:
        """``with auth.use(result):`` requests in this block carry ``result`` (this caller,
        these scopes) with no acquisition in the transport."""
        return use_token(result, scopes=self.scopes)

    def prefetch(self) -> _Prefetch:
        """``with auth.prefetch():`` or ``async with auth.prefetch():`` acquire now (errors
        raise here, in your task) and apply that token to the requests made inside the block."""
        return _Prefetch(self)

    # -- redirects --

    def request_hook(self, request: Any) -> None:
        """A client ``event_hooks["request"]`` hook: the client runs it for every hop, redirects
        included, so it removes the token from a hop to an origin we were not configured for.
        (httpx already drops ``Authorization`` on cross-origin redirects, except a same-host
        http->https upgrade; this also covers that case and the result's extra headers.)"""
        self._core.strip_if_foreign(request)

    async def async_request_hook(self, request: Any) -> None:
        """The same hook for ``AsyncClient``."""
        self._core.strip_if_foreign(request)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._core.describe()})"


class _Prefetch:
    def __init__(self, auth: EntraAuthBase) -> None:
        self._auth = auth
        self._binding: use_token | None = None

    def _bind(self, result: TokenResult | None) -> TokenResult | None:
        if result is not None:
            self._binding = self._auth.use(result)
            self._binding.__enter__()
        return result

    def __enter__(self) -> TokenResult | None:
        return self._bind(self._auth.acquire())

    async def __aenter__(self) -> TokenResult | None:
        return self._bind(await self._auth.acquire_async())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._binding is not None:
            self._binding.__exit__(exc_type, exc, tb)
            self._binding = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class EntraAuth(EntraAuthBase, httpx2.Auth):
    """``httpx2.Auth`` that attaches the right Entra token to every request.

    For each request to one of ``origins``: the active caller's token for ``scopes`` from
    ``chain`` (cached there). With no active caller, the lifecycle identity the chain's policy
    allows (often none), except for a user's work whose caller ended (a task that outlived its
    request, a bound run past its token's expiry): a typed error, never the app.
    ``connection=True`` (the MCP integrations set it): every request outside a call is a
    connection-lifetime one and gets the lifecycle identity. 401 with a claims challenge or
    ``invalid_token``: the token is dropped and the request retried once.
    ``on_error="record"`` never raises inside the transport: the error goes to
    ``Caller.record`` and the request goes out without a token.

    >>> auth = EntraAuth(chain, scopes=["api://mcp/.default"], origins=["https://mcp.contoso.com"])
    >>> client = httpx2.AsyncClient(auth=auth, event_hooks={"request": [auth.async_request_hook]})
    """

    requires_request_body = False
    requires_response_body = False

    _sync_client = httpx2.Client
    _async_client = httpx2.AsyncClient
    _front = "entra_passthrough.EntraAuth"
    _library = "httpx2"

    sync_auth_flow = drive_sync
    async_auth_flow = drive_async
