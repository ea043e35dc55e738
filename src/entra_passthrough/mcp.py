"""Per-user Entra tokens for the plain mcp SDK client (``mcp >= 2.2``).

``entra_http_client(chain=..., scopes=[...])`` gives an ``httpx2.AsyncClient`` for
``streamable_http_client(url, http_client=...)``; ``entra_call(client)`` resolves the caller's
token *in the calling task, before the transport* and hands it to that call's requests::

    http = entra_http_client(chain=chain, scopes=["api://<mcp-app>/.default"])
    async with streamable_http_client(url, http_client=http) as (read, write), \\
            ClientSession(read, write) as session:
        await session.initialize()
        async with entra_call(http):                   # typed errors surface here
            result = await session.call_tool("whoami", {})

Why (docs/platform-facts.md): an exception raised inside the httpx2 auth flow kills the MCP
connection for every later call, so the client's ``EntraAuth`` uses ``on_error="record"`` and the
token is resolved by ``entra_call`` *before* the transport, where the typed error can be raised
safely.
Requests made inside ``entra_call`` (mcp 2.x runs each POST in the sender's context) carry the
token resolved there. Every other request — discover/initialize, tools/list, the GET stream,
DELETE — is a *connection-lifetime* request and carries what ``EntraAuth`` decides from the
context it runs in: the caller that opened the connection while that caller is still active
(open the client inside the user's request), else the policy's lifecycle identity
(``chain.lifecycle_token_async``: the app only where the policy allows it), else nothing. A
stale (ended) caller's token is never sent.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import socket
import ssl
import time
import weakref
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

from . import _env
from ._caller import CALL_ID_HEADER, active_caller, current_caller
from ._docs import see
from ._errors import (
    AssertionExpired,
    ConfigurationError,
    ConsentRequired,
    EntraPassthroughError,
    InsufficientScope,
    NoCallerError,
    TokenAcquisitionError,
    TokenVerificationError,
    install_extra_hint,
    require_extra,
)
from ._tls import shared_verify
from ._types import TokenResult, token_exp

try:
    import httpx2
    import mcp as _mcp_pkg  # noqa: F401  (presence check; the version is checked below)
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise require_extra("mcp", "mcp", _exc) from _exc

from ._auth import EntraAuth
from ._cache import EXPIRY_REFUSAL
from ._chain import ended_caller_error
from ._challenge import bearer_parameters, parse_bearer_challenges
from ._checks import seconds
from ._flow import APPLIED, Chain
from ._http import MAX_SECONDS, retry_after_seconds
from ._httpx_seams import wrap_transports
from ._jwt import JwtDecodeError, UnverifiedClaims
from ._origins import format_origin, origin_key
from ._policy import Policy
from ._sources.foundry import FEATURES_HEADER, FOUNDRY_SCOPE, TOOLBOX_FEATURE

__all__ = [
    "FOUNDRY_CONSENT_REQUIRED",
    "MIN_MCP_VERSION",
    "URL_ELICITATION_REQUIRED",
    "auth_of",
    "consent_from_exception",
    "entra_call",
    "entra_http_client",
    "url_elicitation_as_error",
]

logger = logging.getLogger("entra_passthrough.mcp")

MIN_MCP_VERSION = (2, 2)

#: JSON-RPC codes that mean "the user must visit a link": URL elicitation (protocol 2025-11-25)
#: and Foundry's MCP gateway consent error.
URL_ELICITATION_REQUIRED = -32042
FOUNDRY_CONSENT_REQUIRED = -32006


def _check_mcp_version() -> None:
    try:
        raw = metadata.version("mcp")
    except metadata.PackageNotFoundError:  # pragma: no cover - import above succeeded
        return
    match = re.match(r"(\d+)\.(\d+)", raw)
    if match is None or (int(match[1]), int(match[2])) < MIN_MCP_VERSION:
        raise ImportError(
            f"entra_passthrough needs mcp >= {MIN_MCP_VERSION[0]}.{MIN_MCP_VERSION[1]} (found "
            f"{raw}). mcp 1.x sends every request of a connection with the context of the task "
            "that connected (python-sdk #1969), so a per-user token cannot be applied per call. "
            f"Fix: {install_extra_hint('mcp')} (or [agent-framework])."
        )


_check_mcp_version()


def entra_http_client(
    *,
    chain: Chain,
    scopes: Sequence[str],
    origins: Iterable[str],
    timeout: httpx2.Timeout | float | None = None,
    verify: Any = True,
    client_capabilities: Sequence[str] = (),
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` for ``streamable_http_client(url, http_client=...)`` whose auth
    is ``EntraAuth(on_error="record")`` (never raises inside the transport) with the redirect
    hook installed. ``origins`` are the only origins (scheme, host, port) that ever get a
    token: pass the MCP server's.

    >>> http = entra_http_client(chain=chain, scopes=["api://mcp/.default"],
    ...                          origins=["https://mcp.contoso.com"])
    """
    auth = EntraAuth(
        chain,
        scopes=scopes,
        origins=origins,
        on_error="record",
        client_capabilities=client_capabilities,
        connection=True,
    )
    return http_client_for(
        auth,
        timeout=timeout if timeout is not None else httpx2.Timeout(30.0, read=300.0),
        verify=verify,
        explain_refusals=True,
    )


def _checked_timeout(timeout: object) -> httpx2.Timeout | float | None:
    """``timeout=``: an ``httpx2.Timeout``, a number of seconds or ``None``, else a
    ``ConfigurationError`` (``"5"`` was httpx's bare ``TypeError``, NaN or -1 were taken)."""
    if timeout is None or isinstance(timeout, httpx2.Timeout):
        return timeout
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise ConfigurationError(
            f"timeout must be a number of seconds or an httpx2.Timeout ("
            f"{type(timeout).__name__} given).",
            fix="pass timeout=30.0, or httpx2.Timeout(30.0, read=300.0) (the default).",
        )
    return seconds(timeout, what="timeout", low=0, high=MAX_SECONDS, above_low=True)


def _checked_verify(verify: object) -> Any:
    """``verify=``: ``True``, ``False``, an ``ssl.SSLContext``, or the path of a CA bundle
    (a PEM file, or a folder of them) loaded here, as httpx loads it, so that a path that does
    not exist or a file that is not PEM is a ``ConfigurationError`` naming ``verify=``, not a
    ``FileNotFoundError`` or ``ssl.SSLError``. The path is not shown."""
    if isinstance(verify, bool | ssl.SSLContext):
        return verify
    fix = (
        "pass verify= the path of a readable PEM file with the CA that issued the server's "
        "certificate, or an ssl.SSLContext (default True: the system's CAs)."
    )
    if not isinstance(verify, str | os.PathLike) or not os.fspath(verify):
        raise ConfigurationError(
            f"verify must be True, an ssl.SSLContext or the path of a CA file "
            f"({type(verify).__name__} given).",
            fix=fix,
        )
    path = os.fspath(verify)
    try:
        if os.path.isdir(path):
            return ssl.create_default_context(capath=path)
        return ssl.create_default_context(cafile=path)
    except ssl.SSLError:
        why = "holds no certificate (it is empty or not PEM)"
    except (OSError, ValueError):
        why = "does not exist or cannot be read"
    raise ConfigurationError(f"the CA file given as verify= {why}.", fix=fix)


#: Seconds an idle keep-alive connection of the MCP client is kept for reuse. Well below the idle
#: timeout of common servers (uvicorn, hypercorn, Node: 5 s; gunicorn: 2 s), because a request
#: written onto a connection the server is closing at that very moment is reset unanswered, and
#: for a ``tools/call`` nobody can tell whether the server read it first: it "may have run" and
#: is never resent (``CallOutcomeUnknown``). httpx's default of 5 s equals uvicorn's timeout, and
#: about one call in a thousand met that race under load. Measured in docs/agent-framework.md.
KEEPALIVE_EXPIRY = 1.0


def http_client_for(
    auth: EntraAuth,
    *,
    timeout: httpx2.Timeout | float,
    verify: Any,
    explain_refusals: bool = False,
) -> httpx2.AsyncClient:
    """The MCP connection's ``httpx2.AsyncClient`` with ``auth`` installed (``EntraMCPTool``
    builds its clients here too). Redirects are not followed: the mcp SDK follows same-origin
    redirects itself. Cookies are neither stored nor sent (as in agent-framework's own client):
    one connection serves every user, and a cookie set on one user's response would ride on the
    next user's requests. Idle connections are dropped after ``KEEPALIVE_EXPIRY``, before the server
    closes them. Every transport it may use (its own, and the proxy mounts built from the
    environment) is wrapped in ``_CallGuard`` (see ``call_attempt``): a proxied request must not
    bypass it. ``explain_refusals`` (the plain client's): a 401/403 to a connection-lifetime
    request that carried a token is answered for the mcp SDK with what ``connect_refused`` says
    (``EntraMCPTool`` says it itself, from its own record of the answer)."""
    # Checked here, where EntraMCPTool's clients are built too: a wrong type or CA path is a
    # ConfigurationError naming the argument. One default TLS context per process (_tls.py).
    client = httpx2.AsyncClient(
        follow_redirects=False,
        timeout=_checked_timeout(timeout),
        verify=shared_verify(_checked_verify(verify)),
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        limits=httpx2.Limits(
            max_connections=100, max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_EXPIRY
        ),
    )
    # Not by default through a route whose every request a gateway forwards (a Foundry
    # toolbox): there a prompt reset does not say the tool never ran. Set to true, it is.
    resend = _env.get_bool(
        os.environ, RESEND_ON_RESET_VARIABLE, default=not forwards_calls(auth.chain)
    )
    wrap_transports(
        client,
        functools.partial(
            _CallGuard, resend_on_reset=resend, auth=auth, explain_refusals=explain_refusals
        ),
        # A proxy (HTTP_PROXY/HTTPS_PROXY) may reset the connection after it forwarded the
        # request: through one, a reset never says the server did not read it.
        wrap_proxy=functools.partial(
            _CallGuard, resend_on_reset=False, auth=auth, explain_refusals=explain_refusals
        ),
    )
    auth.install(client)
    return client


def forwards_calls(chain: object) -> bool:
    """Whether a source of ``chain`` routes every request through a gateway that forwards it
    (``forwards_calls = True``: ``FoundryToolboxRoute``, Foundry's toolbox proxy). A reset of
    the connection after a call was written then does not say the server never read it: the
    call is not sent again after one unless ``RESEND_ON_RESET_VARIABLE`` is set to true."""
    sources = getattr(chain, "sources", ())
    if not isinstance(sources, tuple | list):
        return False
    return any(getattr(source, "forwards_calls", False) is True for source in sources)


def toolbox_request(request: httpx2.Request) -> str | None:
    """``"user"`` when ``request`` went to a Foundry toolbox naming its user by a call id
    (``FoundryToolboxRoute``: the agent's own token, ``x-agent-foundry-call-id``); ``"agent"``
    for a toolbox request that names none (a lifecycle request, sent as the agent); else
    ``None``. Its 401/403 is then the toolbox's: the agent's token is the expected credential
    there, and "the app's own token, no user" would be wrong."""
    if CALL_ID_HEADER in request.headers:
        return "user"
    features = request.headers.get(FEATURES_HEADER, "")
    if any(p.strip().casefold() == TOOLBOX_FEATURE.casefold() for p in features.split(",")):
        return "agent"
    return None


# -- one call's requests: sent with its token or not at all, and what became of them ------------


@dataclass(eq=False, slots=True)
class CallAttempt:
    """What happened to the requests one call made (``call_attempt``): whether a ``tools/call``
    may have reached the server (``sent``), or why none left (``not_sent``: ``"no_token"`` when
    a request had no ``Authorization`` and was not sent, ``"connect"`` when the connection to
    the server could not be opened, ``"reset"`` when the server reset the connection without
    reading the request, see ``_WriteWatch.reset_unread``), and the type of a transport error
    after sending (while waiting for the answer's headers, or reading its body). ``held_back``
    says why another request of the call (the mcp SDK's GET with ``Last-Event-ID`` that resumes
    the answer's SSE stream) was answered locally and not sent: ``"no_token"`` or ``"closed"``."""

    require_token: bool = True
    sent: bool = False
    not_sent: str | None = None
    transport_error: str | None = None
    #: HTTP status of the last ``tools/call`` answer (a 5xx: the server may have run it).
    status: int | None = None
    #: The ``Retry-After`` of that answer when it is an error (429, 503...), in seconds.
    retry_after: float | None = None
    #: Why a request of the call that is not a POST was not sent (``_held_back``).
    held_back: str | None = None
    #: The ``error`` of the Bearer challenge (``WWW-Authenticate``) of that answer when it is a
    #: 401 or 403 (``insufficient_scope``, ``invalid_token``...): a bare RFC 6750 code, or
    #: ``None`` (no challenge, none understood, or not a code).
    challenge_error: str | None = None
    #: The ``scope`` values of that challenge the library may quote (``challenge_of``).
    challenge_scopes: tuple[str, ...] = ()
    #: Whether that answer is a 401 to a token that had expired, or was within seconds of it,
    #: when the answer came (``refused_at_expiry``).
    at_expiry: bool = False
    #: Whether that answer is a 401/403 to an app-only token (the app's own identity, as a
    #: policy serves a request without a user): its error says so, with the app's fix.
    app_token: bool = False
    #: Whether that answer is a Foundry toolbox's 401/403 (``toolbox_request``): ``"user"``
    #: when the call named its user by call id. The agent's token is expected there; the
    #: error says what the toolbox refused instead (``app_token`` is then false).
    toolbox: str | None = None
    #: Whether the last ``tools/call`` carried an ``Mcp-Session-Id`` (a legacy session).
    on_session: bool = False
    #: When the call was started (``time.monotonic()``): a "timed out" error that came sooner
    #: than the caller's own request timeout is the server's (or a gateway's), not the client's.
    started: float | None = None
    #: The last 401/403 to another JSON-RPC request of the call (the ``tools/list`` the mcp SDK
    #: sends after a tool's first call on a session, to check its result against the tool's
    #: output schema): (its method, the status, whether its token had expired or was about to
    #: when the answer came). The call's error then says what was refused after it ran.
    refused_after: tuple[str, int, bool] | None = None
    #: Whether the server's own answers say what it did: no proxy in between and resends not
    #: switched off (``RESEND_ON_RESET_VARIABLE``). Otherwise a 404 on the session may be a
    #: device's (a load balancer that retried the POST on another replica after the first ran
    #: it), and a call refused that way may have run.
    direct: bool = True
    #: Whether the server answered a ``tools/call`` of this attempt with a JSON-RPC id that is
    #: not that request's (``_AnswerCheck``): the answer was dropped, given to no caller, and
    #: the call failed with ``MISROUTED_ANSWER``. The call was sent: it may have run.
    misrouted: bool = False
    #: The JSON-RPC ids of this attempt's ``tools/call`` requests (``_rpc_key``): what the
    #: stream that resumes one of their answers (GET with ``Last-Event-ID``) may answer.
    call_ids: set[int | str] = field(default_factory=set, repr=False)
    #: ``tools/call`` requests of this attempt still inside the transport.
    in_flight: int = field(default=0, repr=False)
    #: Decided (``close()``): a request of this attempt that reaches the transport only now is
    #: answered locally and never sent.
    closed: bool = field(default=False, repr=False)
    _idle: asyncio.Event | None = field(default=None, repr=False)

    def close(self) -> None:
        """The call's outcome is being decided: nothing more of this attempt may leave. (The
        mcp client can report "Connection closed" to the caller before the task that POSTs the
        call has reached the transport; a retry must not race that task onto the wire.)"""
        self.closed = True

    @property
    def never_left(self) -> bool:
        """True when no ``tools/call`` of this attempt can have reached the server."""
        return not self.sent

    @property
    def may_have_run(self) -> bool:
        """True when a ``tools/call`` of this attempt reached the server and its answer does not
        say that it did not run (the token refused with 401/403, a legacy session refused with
        404)."""
        if not self.sent:
            return False
        if self.transport_error is not None:
            return True
        return self.status not in (401, 403) and not self.session_refused

    @property
    def session_refused(self) -> bool:
        """True when the server answered this attempt's ``tools/call`` on a legacy session with
        HTTP 404: the session was refused (unknown, expired, or bound to another principal)
        before anything ran. Decided from the status alone, never from an error's text: a tool
        may fail with a message that says "Session not found" (its own notion of a session) in
        a 200 answer after it ran. Only on a session: a modern (2026-07-28) server answers a
        handler's METHOD_NOT_FOUND with 404 too, after running it."""
        return self.session_lost and self.direct

    @property
    def session_lost(self) -> bool:
        """HTTP 404 to this attempt's ``tools/call`` on a legacy session: the session is gone
        (refused before anything ran, when ``direct``)."""
        return self.status == 404 and self.on_session and self.transport_error is None

    def _begin(self) -> None:
        self.in_flight += 1
        if self._idle is not None:
            self._idle.clear()

    def _end(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def settled(self) -> None:
        """Return once no ``tools/call`` of this attempt is still inside the transport (bound it
        with ``asyncio.timeout``). When the mcp client tears a connection down, the call learns
        "Connection closed" before its request's task has unwound, and whether that request was
        written is known only then (``sent`` stays true meanwhile: it "may have run")."""
        if self.in_flight == 0:
            return
        if self._idle is None:
            self._idle = asyncio.Event()
        await self._idle.wait()


attempt_var: ContextVar[CallAttempt | None] = ContextVar(
    "entra_passthrough.mcp_attempt", default=None
)

#: Raised by httpx2 before a byte of the request was written.
_NOT_SENT_ERRORS = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)

#: How soon after its first byte a reset must come to say the server never read a request
#: (``_WriteWatch.reset_unread``). Far below any idle timeout that resets connections (load
#: balancers: minutes), far above a loaded loop's delay in reading a reset.
RESET_WINDOW = 1.0

#: ``false`` turns the resend off: a reset within ``RESET_WINDOW`` is then
#: ``CallOutcomeUnknown`` like any other. For a device between the agent and the MCP server
#: that reads a request, forwards it and may then reset the client's connection (an L7 load
#: balancer, a service mesh sidecar, a TLS-terminating gateway that answers an upstream failure
#: with a reset instead of a 502): there a prompt reset no longer says the server never read it.
RESEND_ON_RESET_VARIABLE = "ENTRA_PASSTHROUGH_MCP_RESEND_ON_RESET"


@contextmanager
def call_attempt(*, require_token: bool = True) -> Iterator[CallAttempt]:
    """Track the requests made in this task (mcp 2.x sends each POST in the sender's context)
    for one call. Inside it, the transport (``_CallGuard``):

    * never sends a request without ``Authorization`` when ``require_token`` (the token could
      not be applied: the request is answered locally with a JSON-RPC error, nothing leaves),
      whatever its method: the GET with which the mcp SDK resumes a call's answer after the
      server closed its SSE stream (``Last-Event-ID``) runs in the call's task, and is refused
      the same way (``held_back``);
    * records whether a ``tools/call`` was handed to the network (``sent``), so that a call whose
      request provably never left can be retried and any other never is;
    * answers a transport error of a JSON-RPC request with a JSON-RPC error for *that* request
      instead of raising, which in the mcp SDK would tear the connection down for every other
      call in flight.
    """
    attempt = CallAttempt(require_token=require_token)
    reset = attempt_var.set(attempt)
    try:
        yield attempt
    finally:
        attempt_var.reset(reset)


def _rpc_of(request: httpx2.Request) -> tuple[Any, str | None]:
    try:
        body = json.loads(request.content)
    except (ValueError, httpx2.RequestNotRead):
        return None, None
    if not isinstance(body, dict):
        return None, None
    method = body.get("method")
    return body.get("id"), method if isinstance(method, str) else None


def _not_sent_text(
    attempt: CallAttempt, method: str | None, why: str, *, paren: bool = False
) -> str:
    """The text of the local answer to a request of a call that was not sent. Once the call's
    ``tools/call`` has reached the server, a later request of the call (the ``tools/list`` with
    which the mcp SDK fetches a tool's output schema after its first call) that is not sent
    must not read as the call's "not sent": the SDK raises that answer as the call's error, and
    the call may have run."""
    detail = f" ({why})" if paren else f", {why}"
    if method != "tools/call" and attempt.sent:
        return (
            f"entra_passthrough: the call's tools/call reached the MCP server and may have run; "
            f"a later request of the call ({method or 'a response'}) was not sent{detail}"
        )
    return f"entra_passthrough: not sent{detail}"


def _local_error(request: httpx2.Request, rpc_id: Any, message: str) -> httpx2.Response:
    from mcp_types import INTERNAL_ERROR

    body = {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": INTERNAL_ERROR, "message": message}}
    return httpx2.Response(
        200,
        headers={"content-type": "application/json"},
        content=json.dumps(body).encode(),
        request=request,
    )


#: The Bearer challenge error codes the library names in its messages (RFC 6750, and Entra's
#: claims challenge): anything else a server puts there, chosen freely (it could echo the token
#: it refused), is left out of the messages the model and the user see.
_ERROR_CODES = frozenset(
    {"invalid_request", "invalid_token", "insufficient_scope", "insufficient_claims"}
)


def _challenge_error(response: httpx2.Response) -> str | None:
    challenge = parse_bearer_challenges(response.headers.get_list("www-authenticate"))
    error = challenge.error if challenge is not None else None
    return error if error in _ERROR_CODES else None


#: A scope as the library quotes it from a challenge: a short name or an App ID URI and a name,
#: bounded. The server fills ``scope`` freely (it could echo the token it refused, which has
#: none of ``/``, ``:`` in a JWT's place and is far longer): anything else is left out.
_QUOTABLE_SCOPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~:/\-]{0,159}")
_MAX_QUOTED_SCOPES = 16


def challenge_of(
    response: httpx2.Response, request: httpx2.Request | None = None
) -> tuple[str | None, tuple[str, ...]]:
    """The ``error`` code (a bare RFC 6750 code, else ``None``) and the ``scope`` values of the
    Bearer challenge of a 401/403 answer (``()`` when it names none the library may quote):
    what a refusal at the connect, which no ``CallAttempt`` records, says."""
    params = bearer_parameters(response.headers.get_list("www-authenticate")) or {}
    raw = params.get("scope", "")
    sent = _sent_bearer(response, request)
    scopes = [
        s
        for s in raw.split()
        if _QUOTABLE_SCOPE.fullmatch(s) and "eyj" not in s.lower() and not _echoes(s, sent)
    ]
    return _challenge_error(response), tuple(dict.fromkeys(scopes[:_MAX_QUOTED_SCOPES]))


def _sent_bearer(response: httpx2.Response, request: httpx2.Request | None) -> str:
    """The bearer the refused request carried ("" when none is known). ``request``: the one
    ``response`` answers, in the transport (the client gives it to the response later)."""
    if request is None:
        try:
            request = response.request
        except RuntimeError:  # a response built without its request
            return ""
    header = request.headers.get("authorization") or ""
    return header[7:] if header[:7].lower() == "bearer " else ""


def _echoes(scope: str, bearer: str) -> bool:
    """Whether a challenge's scope could be a piece of the token the request carried: its name
    (after the last ``/``) is shorter than a permission name is, or is found in the token. A
    server can cut the token it was sent into scope-shaped pieces; none is ever quoted."""
    name = scope.rstrip("/").rsplit("/", 1)[-1]
    return len(name) < 3 or (bool(bearer) and name in bearer)


def _drop_ended_callers_token(request: httpx2.Request) -> None:
    """A connection-lifetime request (GET stream, ping, DELETE...) whose token was applied for
    a caller who has ended since (their response completed while this request waited for a
    connection, e.g. after a restart on a saturated loop) goes out without it: no request carries
    a user's token once that user's request is over."""
    if APPLIED not in request.extensions:
        return
    caller = current_caller()
    if caller is None or caller.active:
        return
    token = request_bearer(request)
    if token is None:
        return
    try:
        oid = UnverifiedClaims.from_token(token).oid
    except (ValueError, OverflowError):
        return
    claims = caller.claims
    if oid and claims is not None and claims.oid == oid:
        for name in request.extensions.pop(APPLIED, ()):
            request.headers.pop(name, None)


class _WriteWatch:
    """Whether httpcore began writing a request: its ``trace`` extension reports
    ``*.send_request_headers.started`` before the first byte of a request is written (a proxy's
    CONNECT counts too: earlier, never later). Until then the request was waiting for a
    connection, connecting or in TLS, and a failure or a cancellation there (the connection torn
    down under the call by a reconnect) provably sent nothing. Only for httpx2's own transport,
    which hands the extensions to httpcore: with another transport nothing is inferred.

    It also learns whether a byte of the answer arrived (``answered``), from the reads of a
    watched connection (``_watch_reads``) while this request is in the transport
    (``_answer_watch``): ``observed`` once such a read ran for it. A connection this request
    opens is watched from its trace (``*.connect_tcp.complete``, ``*.start_tls.complete``), one
    it reuses since the answer that left it idle (``_CallGuard``)."""

    __slots__ = ("_at", "_outer", "answered", "observed", "started")

    def __init__(self, request: httpx2.Request) -> None:
        self.started = False
        self.observed = False
        self.answered = False
        self._at = 0.0
        self._outer = request.extensions.get("trace")
        request.extensions["trace"] = self._trace

    async def _trace(self, name: str, info: dict[str, Any]) -> None:
        if name.endswith("send_request_headers.started"):
            self.started = True
            self._at = time.monotonic()
        elif name.endswith(_NEW_STREAM_EVENTS):
            _watch_reads(info.get("return_value"))
        if self._outer is not None:
            await self._outer(name, info)

    def reset_unread(self, exc: BaseException) -> bool:
        """Whether ``exc`` (raised by the transport, so before the answer's headers were all
        read) is the server resetting the connection within ``RESET_WINDOW`` of the request's
        first byte (``ECONNRESET`` on reading, or ``EPIPE`` on writing the rest of it), with no
        byte of an answer received before it.

        A peer resets (RST) instead of closing (FIN) when it closes a socket with bytes it
        never read: the request, or its end. A server that read the whole request and ran it
        closes with FIN ("Server disconnected without sending a response"), unless it aborts
        the connection (``SO_LINGER`` 0: Node's ``resetAndDestroy``, Go's ``SetLinger(0)``).
        Such a server that began its answer (a status line, some headers) read the request and
        may have run it, so a byte of an answer rules "unread" out; where the reads could not be
        watched, nothing rules it out, and the reset is not taken for unread either. What is
        left is the race of a server closing an idle keep-alive connection (a graceful restart
        closes them all at once) just as a request is written onto it: the server never read
        it, and it is sent again. The window leaves out the one reset that can follow a request
        that ran: a load balancer's idle timeout during a long call (minutes)."""
        if not self.started or time.monotonic() - self._at > RESET_WINDOW:
            return False
        if not self.observed or self.answered:
            return False
        # httpx2 -> httpcore2 -> anyio -> the OSError
        return any(
            isinstance(cause, ConnectionResetError | BrokenPipeError)
            for cause in exception_chain(exc)
        )


#: httpcore's trace events whose ``return_value`` is a new connection's network stream (the
#: stream its HTTP/1.1 connection reads from is the last of them: TLS wraps the TCP one).
_NEW_STREAM_EVENTS = (
    ".connect_tcp.complete",
    ".connect_unix_socket.complete",
    ".start_tls.complete",
)

#: The ``_WriteWatch`` of the ``tools/call`` this task is sending through ``_CallGuard``:
#: httpcore reads an HTTP/1.1 answer's headers in the task that sent the request, so a read of
#: a watched connection in this context is that request's.
_answer_watch: ContextVar[_WriteWatch | None] = ContextVar(
    "entra_passthrough.mcp_answer_watch", default=None
)


class _ObservedRead:
    """A network stream's ``read`` that records, on the ``tools/call`` this task is sending
    (``_answer_watch``), that a read ran for it and whether it returned a byte. It holds its
    stream weakly: stored on that stream, a strong reference would make a cycle, and the
    stream (and its socket) would wait for the garbage collector instead of going at once."""

    __slots__ = ("_function", "_stream")

    def __init__(self, function: Any, stream: Any) -> None:
        self._function = function
        self._stream = weakref.ref(stream)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        stream = self._stream()  # alive: it is being read
        watch = _answer_watch.get()
        if watch is None:
            return await self._function(stream, *args, **kwargs)
        watch.observed = True
        data = await self._function(stream, *args, **kwargs)
        if data:
            watch.answered = True
        return data


def _watch_reads(stream: Any) -> None:
    """Record the reads of ``stream`` (httpcore's network stream of a connection) on the
    ``tools/call`` that makes them (``_ObservedRead``), once per stream. A stream whose ``read``
    is not a plain method, or that takes no new attribute, stays unwatched: a reset on it is
    then never taken for unread (``_WriteWatch.reset_unread``)."""
    read = getattr(stream, "read", None)
    function = getattr(read, "__func__", None)
    if function is None or getattr(read, "__self__", None) is not stream:
        return  # already watched (an _ObservedRead), or not a method we know how to wrap
    with suppress(AttributeError, TypeError):  # __slots__, no weak reference to it
        setattr(stream, "read", _ObservedRead(function, stream))  # noqa: B010 (mypy narrows stream to None)


class _CallGuard(httpx2.AsyncBaseTransport):
    """The MCP client's transport: outside ``call_attempt`` it only forwards; inside, see
    ``call_attempt``."""

    def __init__(
        self,
        inner: httpx2.AsyncBaseTransport,
        *,
        resend_on_reset: bool = True,
        auth: EntraAuth | None = None,
        explain_refusals: bool = False,
    ) -> None:
        self._inner = inner
        self._auth = auth  # the client's: why a request went out without a token
        self._explain_refusals = explain_refusals
        # httpx2's own transport passes request.extensions (the trace hook) to httpcore.
        self._traced = type(inner) is httpx2.AsyncHTTPTransport
        self._resend_on_reset = resend_on_reset
        # Whose connections' reads are watched for answer bytes: only where a reset may be
        # taken for unread (``_WriteWatch.reset_unread``).
        self._watching = self._traced and resend_on_reset

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if "authorization" in request.headers:
            # Its answer uncompressed, so that ``_scrub`` reads what the server wrote (httpx2
            # asks for gzip by default, and decodes after the transport).
            request.headers["accept-encoding"] = "identity"
        attempt = attempt_var.get()
        if attempt is None or request.method != "POST":
            _drop_ended_callers_token(request)
            if attempt is not None and (held := _held_back(request, attempt)) is not None:
                return held
            response = await self._inner.handle_async_request(request)
            if self._watching:
                # A connection is reused only after an answer left it idle: watched from that
                # answer on, whichever request opened it (a later tools/call may reuse it).
                _watch_reads(response.extensions.get("network_stream"))
            if _RECORDED_REFUSAL in request.extensions and response.status_code not in (401, 403):
                _forget_refusal(request)
            if attempt is None and response.status_code in (401, 403):
                if "authorization" not in request.headers:
                    if response.status_code == 401:
                        return await _tokenless_refusal(request, response, self._auth)
                elif self._explain_refusals and request.method == "POST":
                    return await _refused_connect_answer(request, response, self._auth)
            _scrub(request, response)
            if attempt is not None and attempt.call_ids and "last-event-id" in request.headers:
                # The GET that resumes a call's SSE answer: still that call's answer.
                _check_answer(request, response, attempt, frozenset(attempt.call_ids))
            return response
        rpc_id, method = _rpc_of(request)
        if attempt.closed:
            attempt.not_sent = attempt.not_sent or "closed"
            if rpc_id is None:
                return httpx2.Response(202, request=request)
            return _local_error(
                request, rpc_id, _not_sent_text(attempt, method, "call already over")
            )
        if attempt.require_token and "authorization" not in request.headers:
            attempt.not_sent = attempt.not_sent or "no_token"
            if rpc_id is None:
                # A notification (e.g. a cancel): nothing to answer, nothing sent.
                return httpx2.Response(202, request=request)
            return _local_error(
                request, rpc_id, _not_sent_text(attempt, method, "no token could be applied")
            )
        is_call = method == "tools/call"
        was_sent = attempt.sent
        watch = _WriteWatch(request) if is_call and self._traced else None
        if is_call:
            attempt.sent = True  # from here on it may reach the server
            attempt.on_session = "mcp-session-id" in request.headers
            attempt.direct = self._resend_on_reset
            if (key := _rpc_key(rpc_id)) is not None:
                attempt.call_ids.add(key)
            attempt._begin()
        reading = _answer_watch.set(watch) if watch is not None and self._watching else None
        try:
            response = await self._inner.handle_async_request(request)
        except httpx2.TransportError as exc:
            why: str | None = None
            if isinstance(exc, _NOT_SENT_ERRORS) or (watch is not None and not watch.started):
                why = "connect"  # before a byte was written (connect, TLS to a server going away)
            elif watch is not None and self._resend_on_reset and watch.reset_unread(exc):
                why = "reset"  # the server reset it unread
            if why is not None:
                attempt.sent = was_sent
                attempt.not_sent = attempt.not_sent or why
                if rpc_id is None:
                    raise
                detail = f"{why}, {type(exc).__name__}"
                if why == "connect":
                    return _local_error(
                        request,
                        rpc_id,
                        _not_sent_text(attempt, method, detail, paren=True)
                        + not_connected_text(request, exc),
                    )
                if why == "reset":
                    # What the client saw, and the assumption "not sent" rests on.
                    detail += (
                        ": the connection was reset before the server read the call; behind a "
                        "device that forwards a call and then resets, it may have run: set "
                        f"{RESEND_ON_RESET_VARIABLE}=false there"
                    )
                return _local_error(
                    request, rpc_id, _not_sent_text(attempt, method, detail, paren=True)
                )
            attempt.transport_error = type(exc).__name__
            if rpc_id is None:
                raise
            return _local_error(
                request, rpc_id, f"entra_passthrough: connection lost ({type(exc).__name__})"
            )
        except BaseException:
            # Cancelled: the mcp client tears the connection down under its requests (a
            # reconnect, a dead stream). The call fails "Connection closed"; it is retried only
            # if this request was still waiting for a connection or connecting.
            if watch is not None and not watch.started:
                attempt.sent = was_sent
                attempt.not_sent = attempt.not_sent or "connect"
            raise
        finally:
            if reading is not None:
                _answer_watch.reset(reading)
            if is_call:
                attempt._end()
        if self._watching:
            _watch_reads(response.extensions.get("network_stream"))
        if is_call:
            attempt.status = response.status_code
            attempt.challenge_error, attempt.challenge_scopes = (
                challenge_of(response, request)
                if response.status_code in (401, 403)
                else (None, ())
            )
            attempt.at_expiry = _refused_on_its_way(request, response.status_code)
            refused = response.status_code in (401, 403)
            attempt.toolbox = toolbox_request(request) if refused else None
            attempt.app_token = refused and attempt.toolbox is None and _app_only_bearer(request)
            attempt.retry_after = (
                retry_after_seconds(response.headers) if response.status_code >= 400 else None
            )
            if isinstance(response.stream, httpx2.AsyncByteStream):
                response.stream = _BodyWatch(response.stream, attempt)
        elif response.status_code in (401, 403) and method is not None:
            attempt.refused_after = (
                method if _QUOTABLE_METHOD.fullmatch(method) else "request",
                response.status_code,
                _refused_on_its_way(request, response.status_code),
            )
            if self._explain_refusals and not attempt.sent and "authorization" in request.headers:
                # Before any tools/call of the call (the tools/list the docs advise inside
                # entra_call): said as at the connect, and raised typed by entra_call (recorded).
                return await _refused_connect_answer(request, response, self._auth, in_call=True)
        elif attempt.refused_after is not None:
            attempt.refused_after = None  # accepted on the retry: that refusal is not the cause
            _forget_refusal(request)
        _scrub(request, response)
        if is_call and (key := _rpc_key(rpc_id)) is not None:
            _check_answer(request, response, attempt, frozenset((key,)), reply_id=rpc_id)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


#: A JSON-RPC method as the library quotes it in its own messages (the client's, never a server's).
_QUOTABLE_METHOD = re.compile(r"[A-Za-z0-9_./-]{1,64}")


async def _tokenless_refusal(
    request: httpx2.Request, response: httpx2.Response, auth: EntraAuth | None
) -> httpx2.Response:
    """A connection-lifetime JSON-RPC request (``initialize`` at connect, a call made outside
    ``entra_call``) that went out without a token, by the rules of docs/mcp-client.md, and that
    the server refused with 401: answered with a JSON-RPC error that says why no token was sent
    and what to change. The mcp SDK turns the bare 401 into "Server returned an error response"
    (raised from the ``Client`` as an ``ExceptionGroup`` at connect), which names neither. A
    request that carried a token, or a server that lets tokenless ones through, is untouched."""
    if request.method != "POST" or "authorization" in request.headers:
        return response
    rpc_id, method = _rpc_of(request)
    if rpc_id is None:
        return response
    await response.aclose()
    name = method if method is not None and _QUOTABLE_METHOD.fullmatch(method) else "request"
    why, fix = _no_token_reason(request, auth)
    return _local_error(
        request,
        rpc_id,
        f"entra_passthrough: the MCP server refused {name} (401): it was sent without a token, "
        f"because {why}. Fix: {fix}. {see('mcp-client', 'connection-lifetime-requests')}",
    )


#: Where the refusal of a connection-lifetime request was recorded on its caller: the auth's
#: retry sends the same request again, and its refusal replaces the first one's.
_RECORDED_REFUSAL = "entra_passthrough.connect_refusal"


async def _refused_connect_answer(
    request: httpx2.Request,
    response: httpx2.Response,
    auth: EntraAuth | None,
    *,
    in_call: bool = False,
) -> httpx2.Response:
    """The plain client's connection-lifetime POST (``initialize``, ``tools/list`` or a
    notification, made outside ``entra_call``) that carried a token and was refused with
    401/403: the mcp SDK says only "Server returned an error response" (raised from the
    ``Client`` in an ``ExceptionGroup`` at connect). Answered, with the same status and
    challenge (the auth's one retry of a 401 reads them), with a JSON-RPC error whose text is
    ``connect_refused``'s, which the SDK raises as its ``MCPError``; the typed error is recorded
    on the active caller (``current_caller().take_errors()``). ``in_call``: a request made
    inside ``entra_call`` before its ``tools/call`` (a ``tools/list``), which ``entra_call``
    then raises typed. Nothing of the server's answer but its status and its challenge's error
    code and scopes is quoted."""
    refusal = ConnectRefusal.of(response, request)
    caller = active_caller()
    whose = refusal.whose(caller)
    kind = "" if in_call else ", a connection-lifetime request: made outside entra_call"
    refused = (
        f"The MCP server at {request_origin(request)} refused {whose} ({refusal.answer()}{kind})."
    )
    error = connect_refused(
        refusal,
        refused,
        own_scopes=auth.scopes if auth is not None else (),
        scopes_in="the client's scopes (entra_http_client(scopes=...))",
    )
    if caller is not None:
        earlier = request.extensions.get(_RECORDED_REFUSAL)
        if earlier is not None and any(e is earlier for e in caller.errors):
            # The auth's retry of this request was refused too: one refusal, the last.
            caller.errors[[id(e) for e in caller.errors].index(id(earlier))] = error
        else:
            caller.record(error)
        request.extensions[_RECORDED_REFUSAL] = error
    rpc_id, _ = _rpc_of(request)
    if rpc_id is None:
        _scrub(request, response)
        return response  # a notification: the SDK reads no answer to it
    await response.aclose()
    from mcp_types import INTERNAL_ERROR

    body = {
        "jsonrpc": "2.0",
        "id": rpc_id,
        "error": {"code": INTERNAL_ERROR, "message": f"entra_passthrough: {error}"},
    }
    headers = [("content-type", "application/json")]
    headers += [("www-authenticate", v) for v in response.headers.get_list("www-authenticate")]
    return httpx2.Response(
        response.status_code,
        headers=headers,
        content=json.dumps(body).encode(),
        request=request,
    )


def _forget_refusal(request: httpx2.Request) -> None:
    """The auth's retry of ``request`` was accepted: its first refusal, recorded on the caller
    (``_refused_connect_answer``), is no error of the caller's any more."""
    earlier = request.extensions.pop(_RECORDED_REFUSAL, None)
    caller = current_caller()
    if earlier is not None and caller is not None:
        caller.errors = [e for e in caller.errors if e is not earlier]


def request_origin(request: httpx2.Request) -> str:
    """The request's origin as a message names it: scheme, host and port (never the path or
    query, which may carry a key, nor user information)."""
    key = origin_key(request.url.scheme, request.url.raw_host, request.url.port)
    return format_origin(key) if key is not None else request.url.scheme


#: A JSON-RPC method our client sent, as a message about a connect names it.
_CONNECT_METHOD = re.compile(r"[a-z][a-z/_]{0,39}")


def connect_method(request: httpx2.Request) -> str | None:
    """The JSON-RPC method of a request our client sent, if its body names one we may quote."""
    with suppress(ValueError, httpx2.RequestNotRead, RecursionError):
        body = json.loads(request.content)
        method = body.get("method") if isinstance(body, dict) else None
        if isinstance(method, str) and _CONNECT_METHOD.fullmatch(method):
            return method
    return None


@dataclass(frozen=True, slots=True)
class ConnectRefusal:
    """A 401/403 to a connection-lifetime request, as a message may name it: the status, the
    challenge's error code and required scopes (``challenge_of``), the request's method, and
    the ``scp``/``roles`` of the token it refused (``None`` when it had none readable)."""

    status: int
    error: str | None
    required: tuple[str, ...]
    granted: tuple[str, ...] | None
    rpc: str | None
    with_token: bool
    #: A 401 to a token that had expired, or was about to, as it came (``refused_at_expiry``).
    at_expiry: bool = False
    #: The refused token is an app-only token (no ``scp``: the app's own identity, as a policy
    #: serves a request without a user), not a user's: said as such, with the app's fix.
    app_token: bool = False
    #: A Foundry toolbox's refusal (``toolbox_request``: ``"user"``, the request named its
    #: user by call id; ``"agent"``, none): the agent's own token is what it expects, so
    #: never said to be "the app's own token, no user" (``app_token`` is then false).
    toolbox: str | None = None

    @classmethod
    def of(cls, response: httpx2.Response, request: httpx2.Request | None = None) -> ConnectRefusal:
        """``request``: the one ``response`` answers, for a response not yet given it (in the
        transport); else ``response.request``."""
        if request is None:
            request = response.request
        error, required = challenge_of(response, request)
        token = request_bearer(request)
        with_token = token is not None
        granted: tuple[str, ...] | None = None
        app_token = False
        if token is not None:
            try:
                claims = UnverifiedClaims.from_token(token)
            except (JwtDecodeError, ValueError, OverflowError):
                pass  # opaque: which scope it lacks is unknown here
            else:
                granted = (*claims.scp, *claims.roles)
                app_token = claims.is_app_only
        rpc = connect_method(request)
        at_expiry = response.status_code == 401 and token is not None and refused_at_expiry(token)
        toolbox = toolbox_request(request)
        return cls(
            response.status_code,
            error,
            required,
            granted,
            rpc,
            with_token,
            at_expiry,
            app_token and toolbox is None,
            toolbox,
        )

    def whose(self, caller: object | None) -> str:
        """Whose token was refused, for a message: through a Foundry toolbox, the agent's (for
        the user its call id names, or for none); the app's own (an app-only token), else the
        user's when a caller was bound, else the lifecycle identity's."""
        if self.toolbox == "user":
            return f"the agent's token for the user named by its {CALL_ID_HEADER}"
        if self.toolbox == "agent":
            return "the agent's token (a request naming no user)"
        if self.app_token:
            return "the app's own token (an app-only token: no user)"
        return "the user's token" if caller is not None else "the lifecycle identity's token"

    def answer(self) -> str:
        """E.g. 'HTTP 401 error="invalid_token" to its initialize request'."""
        text = f"HTTP {self.status}" + (f' error="{self.error}"' if self.error else "")
        return text + (f" to its {self.rpc} request" if self.rpc else "")

    def missing(self) -> tuple[str, ...]:
        """The required scopes the refused token does not carry (a required App ID URI scope
        matches the short name Entra puts in ``scp``); ``()`` when that is unknown."""
        if self.granted is None:
            return ()
        have = {g.lower() for g in self.granted}
        return tuple(
            s
            for s in self.required
            if s.lower() not in have and _short_scope(s).lower() not in have
        )


def _short_scope(scope: str) -> str:
    return scope.rstrip("/").rsplit("/", 1)[-1]


def connect_refused(
    refusal: ConnectRefusal,
    refused: str,
    *,
    own_scopes: Iterable[str],
    scopes_in: str = "the tool's scopes",
) -> TokenVerificationError:
    """The MCP server's 401/403 to a connect, typed like a ``tools/call``'s (``call_refusal``),
    with the scopes its challenge says it requires and the refused token lacks: ``refused``
    (who refused whose token, ``refusal.answer()``) and why, and the fix. Named from the
    status, the challenge's error code and scopes alone (``challenge_of``): the server's own
    description is its free text, and no part of the token is quoted. ``own_scopes``: the
    scopes the client asks tokens for; ``scopes_in``: where they are set."""
    if refusal.toolbox is not None and not (refusal.status == 401 and refusal.at_expiry):
        return toolbox_refused(refused, refusal.status, refusal.error, refusal.toolbox)
    if refusal.status == 403 or refusal.error == "insufficient_scope":
        # The challenge's scopes are the server's words: only those of the API the client asks
        # tokens for (or bare names) are quoted, so that a server cannot have the message tell
        # an administrator to grant some other API's permission.
        own = {s.rsplit("/", 1)[0].lower() for s in own_scopes if "/" in s}

        def quotable(scope: str) -> bool:
            return "/" not in scope or scope.rsplit("/", 1)[0].lower() in own

        missing = tuple(filter(quotable, refusal.missing()))
        required = tuple(filter(quotable, refusal.required))
        if missing:
            lacks = f" The token lacks the scope(s) it requires: {', '.join(missing)}."
        elif required:
            lacks = (
                " The token lacks a scope or app role it requires (it requires: "
                f"{', '.join(required)})."
            )
        else:
            lacks = " The token is valid but lacks a scope or app role the server requires."
        named = ", ".join(missing or required) or "what the server requires"
        if refusal.app_token:
            return InsufficientScope(
                refused + lacks,
                required=refusal.required,
                fix=APP_TOKEN_SCOPE_FIX,
            )
        return InsufficientScope(
            refused + lacks,
            required=refusal.required,
            fix=f"grant {named} to the agent app for the MCP server's API (API "
            "permissions, with consent: admin consent for the tenant, or the user's own), "
            f"and request it in {scopes_in} (the server's App ID URI + /.default "
            "carries every scope granted); or, if the server should not require it, change "
            f"the server's required scopes ({see('errors')})",
        )
    if refusal.status == 401 and refusal.at_expiry:
        return expiring_token_refused(refused)
    return TokenVerificationError(
        f"{refused} The server does not accept the token.",
        fix=token_refused_fix(scopes_in, app=refusal.app_token),
    )


def unreachable_why(exc: BaseException) -> str:
    """Why a connection to a server could not be opened, from the error's types alone (its
    text may name a proxy with its credentials)."""
    chain = list(exception_chain(exc))
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "it refused the connection (nothing listens there: down, restarting, wrong port)"
    if any(isinstance(e, socket.gaierror) for e in chain):
        return "its host name could not be resolved (DNS)"
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return "the TLS handshake failed (its certificate is not trusted here, or it is not TLS)"
    if any(isinstance(e, httpx2.ConnectTimeout | TimeoutError) for e in chain):
        return "the connection timed out (a firewall, or the host is down)"
    return "the connection could not be opened"


def unreachable_check(address: str) -> str:
    """What to check when an MCP server could not be reached; ``address``: where its address
    is set."""
    return (
        "check that the MCP server is running and reachable from this host at that address "
        f"({address}, DNS, firewalls, a proxy, its TLS certificate)"
    )


def not_connected_text(request: httpx2.Request, exc: BaseException) -> str:
    """What follows the plain client's "not sent (connect, ...)": the server's origin, why no
    connection could be had, and what to check (``EntraMCPTool`` says it in
    ``MCPServerUnreachable``)."""
    if any(isinstance(e, httpx2.PoolTimeout) for e in exception_chain(exc)):
        return (
            ": no connection of the client's pool came free in time (all of them busy with other "
            "requests). Fix: call again; if it recurs, make fewer calls at "
            "once on this client, or give it a longer pool timeout (entra_http_client(timeout="
            f"httpx2.Timeout(30.0, read=300.0, pool=60.0))) ({see('mcp-client')})"
        )
    check = unreachable_check("the URL and port given to streamable_http_client")
    return (
        f": the MCP server at {request_origin(request)} could not be reached: "
        f"{unreachable_why(exc)}. This is not a problem with the token. Fix: {check}, then "
        f"call again ({see('mcp-client')})"
    )


def _no_token_reason(request: httpx2.Request, auth: EntraAuth | None) -> tuple[str, str]:
    """(why a connection-lifetime request went out without a token, what to change)."""
    if auth is not None and not auth.allows(request.url):
        origin = request_origin(request)
        return (
            f"its origin ({origin}) is not one of the client's origins, the only ones a token "
            "is ever sent to",
            "add the MCP server's origin to entra_http_client(origins=[...])",
        )
    if current_caller() is not None:
        return (
            "no token could be acquired for the active caller (the error is recorded on it: "
            "current_caller().take_errors())",
            "handle that error before connecting (entra_call(...) and the client's "
            "EntraAuth.acquire_async() raise it, e.g. ConsentRequired with its link)",
        )
    chain = auth.chain if auth is not None else None
    policy = getattr(chain, "policy", None)
    if isinstance(policy, Policy) and policy.lifecycle_kinds(
        lifecycle_app=bool(getattr(chain, "lifecycle_app", False))
    ):
        return (
            "no caller was active, and the identity the policy gives connection-lifetime "
            "requests could not be acquired (the error is recorded on the client's EntraAuth: "
            "auth_of(client).take_errors())",
            "read that error: it says what to configure",
        )
    return (
        "no caller was active (the Client was opened, or the request made, outside the "
        "user's request) and the policy names no identity for connection-lifetime requests",
        "open the Client inside the user's request, while its caller is active, and make "
        "calls inside entra_call(...); or let the app identity connect "
        "(TokenChain(..., lifecycle_app=True))",
    )


def _held_back(request: httpx2.Request, attempt: CallAttempt) -> httpx2.Response | None:
    """The local answer to a request of ``attempt`` that is not a POST (the GET that resumes the
    call's answer) and must not leave: the call is over, or no token could be applied to it.
    ``None``: send it. The status is one no server sends (nginx's "client closed request"): a
    401 would be taken by the auth flow for the server's and tried again, and a 403 or a 5xx
    would read as the server's in the client's log."""
    if attempt.closed:
        why = "closed"
    elif attempt.require_token and "authorization" not in request.headers:
        why = "no_token"
    else:
        return None
    attempt.held_back = attempt.held_back or why
    text = "call already over" if why == "closed" else "no token could be applied"
    return httpx2.Response(
        499,
        headers={"content-type": "text/plain"},
        content=f"entra_passthrough: not sent, {text}".encode(),
        request=request,
    )


#: What an MCP server's echo of the token it was sent becomes.
_SCRUBBED = b"[redacted]"


def _scrub(request: httpx2.Request, response: httpx2.Response) -> None:
    """An answer that quotes the bearer token its request carried (a server's error that
    repeats the Authorization header, a debugging tool that returns it) has the token taken
    out: it would go on into the mcp SDK's errors and spans, the agent's tool result, the
    model's context and the stored response. Only that exact token is replaced, so nothing
    else a tool returns changes."""
    token = request_bearer(request)
    if token is None or len(token) < 16 or not isinstance(response.stream, httpx2.AsyncByteStream):
        return
    coding = response.headers.get("content-encoding", "").strip().lower()
    inflate = _INFLATE.get(coding)
    if inflate is not None:
        # Compressed although it was asked for "identity": decoded here, so that the token can
        # be found, and passed on decoded (httpx2 would decode it again otherwise). Another
        # coding (br, zstd) is passed on as it came: not read here.
        del response.headers["content-encoding"]
        response.headers.pop("content-length", None)
    response.stream = _Scrubbed(response.stream, token.encode("ascii", "ignore"), inflate=inflate)


#: Decoders for a compressed answer ``_scrub`` must read: zlib's window bits per coding.
_INFLATE = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _token_start(buffer: bytes, token: bytes) -> int:
    """Where a tail of ``buffer`` may begin ``token`` (cut off by the chunk's end): kept back
    for the next chunk. ``len(buffer)`` when no tail can."""
    size = len(buffer)
    if not size or buffer[-1] not in token:
        return size  # a JSON body or an SSE event ends with a byte a token has not ("}", "\n")
    head, first = token[:8], token[:1]
    at = buffer.find(first, max(0, size - len(token) + 1))
    while at != -1:
        # The token's first bytes first (no copy), the whole tail only for a match of those.
        if buffer.startswith(head[: size - at], at) and token.startswith(buffer[at:]):
            return at
        at = buffer.find(first, at + 1)
    return size


class _Scrubbed(httpx2.AsyncByteStream):
    """A body with every occurrence of ``token`` replaced, across chunk boundaries: a chunk
    that ends with what may be the token's beginning keeps that tail back for the next one (an
    SSE event ends with a blank line, so no event waits for the next chunk)."""

    __slots__ = ("_inflate", "_inner", "_token")

    def __init__(
        self, inner: httpx2.AsyncByteStream, token: bytes, *, inflate: int | None = None
    ) -> None:
        self._inner = inner
        self._token = token
        self._inflate = inflate

    async def __aiter__(self) -> AsyncIterator[bytes]:
        token = self._token
        stream = self._inner.__aiter__()
        held = b""
        decoder = zlib.decompressobj(self._inflate) if self._inflate is not None else None
        try:
            async for raw in stream:
                try:
                    chunk = decoder.decompress(raw) if decoder is not None else raw
                except zlib.error as exc:
                    raise httpx2.DecodingError(f"compressed answer not readable ({exc})") from None
                buffer = held + chunk if held else chunk
                if token in buffer:
                    buffer = buffer.replace(token, _SCRUBBED)
                cut = _token_start(buffer, token)
                held = buffer[cut:]
                if cut:
                    yield buffer[:cut]
            if decoder is not None:
                held += decoder.flush()
                if token in held:
                    held = held.replace(token, _SCRUBBED)
            if held:
                yield held
        finally:
            if isinstance(stream, AsyncGenerator):  # closed with us, as httpx2 closes its own
                await stream.aclose()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _BodyWatch(httpx2.AsyncByteStream):
    """The body of a ``tools/call`` answer, read after ``handle_async_request`` returned (an SSE
    answer streams for as long as the tool runs): a transport error while reading it (the
    server gone mid-call, a read timeout shorter than the tool) is recorded on the attempt.
    The mcp SDK swallows it and resolves the call with a stand-in error of its own ("SSE
    stream ended without a response"), so without this record a call that ran and lost its
    answer would look like the tool's own failure."""

    __slots__ = ("_attempt", "_inner")

    def __init__(self, inner: httpx2.AsyncByteStream, attempt: CallAttempt) -> None:
        self._inner = inner
        self._attempt = attempt

    async def __aiter__(self) -> AsyncIterator[bytes]:
        stream = self._inner.__aiter__()
        try:
            async for chunk in stream:
                yield chunk
        except httpx2.TransportError as exc:
            # Recorded, and the body ends here instead of raising: the mcp SDK reads a JSON
            # answer outside any handler that would keep the error to this request, and a
            # transport error there tore the whole connection down under every other call in
            # flight on it. Ended, the body fails this request alone (a truncated JSON, an SSE
            # stream with no answer), and the recorded error makes it "may have run".
            self._attempt.transport_error = self._attempt.transport_error or type(exc).__name__
        finally:
            if isinstance(stream, AsyncGenerator):  # closed with us, as httpx2 closes its own
                await stream.aclose()

    async def aclose(self) -> None:
        await self._inner.aclose()


# -- an answer belongs to the request it answers -------------------------------------------------

#: The error a ``tools/call`` fails with when the server answered it with another request's
#: JSON-RPC id (``_AnswerCheck``). The answer itself is never quoted: it may be another user's.
MISROUTED_ANSWER = (
    "entra_passthrough: the MCP server answered this tools/call with the JSON-RPC id of another "
    "request (a fault of the server, or of a device in front of it: a cache, a gateway). That "
    "answer was dropped and given to no caller: it may be another call's, another user's. The "
    "call reached the server and may have run: check whether it took effect before calling it "
    "again. Fix: have the owner of the MCP server (or of the device in front of it) find why "
    "its answers carry other requests' ids; until then, open one connection per user."
)


def _rpc_key(value: object) -> int | str | None:
    """A JSON-RPC id as the mcp SDK correlates answers with requests (``"7"`` and ``7`` are one
    id, a whole float is that int); ``None`` for a value that is no id (``null``, a bool...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return None


def _json_message(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # not JSON (the SDK fails it for this request itself)
        return None


#: The id the mcp SDK's server (1.x, still the most deployed; 2.x sends ``null``) gives the
#: JSON-RPC error of an HTTP-level refusal (401, 403, 404 "Session not found", 406...:
#: ``mcp.server.streamable_http``): like ``null``, it names no request, the server's own error,
#: not another request's answer.
_SDK_ERROR_ID = "server-error"


def _misrouted(message: object, ids: frozenset[int | str]) -> bool:
    """Whether ``message`` (a JSON-RPC message read from a ``tools/call`` answer) is an answer (a
    result or an error) to none of ``ids``. The server's own requests and notifications on the
    stream (elicitation, progress, log messages) have a ``method`` and pass. An error with a
    ``null`` id (JSON-RPC's, for a request whose id the server could not read) passes too: it
    names no other request; so does the mcp SDK server's ``"server-error"`` (``_SDK_ERROR_ID``)."""
    if not isinstance(message, dict) or "method" in message:
        return False
    if "result" not in message and "error" not in message:
        return False
    rpc_id = message.get("id")
    if (rpc_id is None or rpc_id == _SDK_ERROR_ID) and "result" not in message:
        return False
    key = _rpc_key(rpc_id)
    return key is None or key not in ids


def _check_answer(
    request: httpx2.Request,
    response: httpx2.Response,
    attempt: CallAttempt,
    ids: frozenset[int | str],
    *,
    reply_id: Any = None,
) -> None:
    """Read the answer to a ``tools/call`` (or the GET that resumes its SSE stream) through
    ``_AnswerCheck``: the bodies the mcp SDK reads messages from, a 2xx JSON or SSE body and
    the JSON error of a 4xx/5xx (whose id it replaces with the request's)."""
    status = response.status_code
    if not isinstance(response.stream, httpx2.AsyncByteStream) or not (
        200 <= status < 300 or status >= 400
    ):
        return
    if response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
        return  # a coding not decoded here (br, zstd, against Accept-Encoding: identity)
    kind = response.headers.get("content-type", "").strip().lower()
    if kind.startswith("text/event-stream") and status < 300:
        sse = True
    elif kind.startswith("application/json") and request.method == "POST":
        sse = False
    else:
        return  # the SDK reads no message from it
    if reply_id is None:
        reply_id = next(iter(ids))
    response.stream = _AnswerCheck(
        response.stream, attempt, ids, reply_id, sse=sse, origin=request_origin(request)
    )


#: How much of one SSE event ``_AnswerCheck`` holds back to read it whole: far above the mcp
#: SDK's own bound on an event (1 MiB by default: a larger one fails the call there). An event
#: larger still (the SDK's bound switched off) is passed on as it comes, unread.
_MAX_CHECKED_EVENT = 32 * 1024 * 1024

_LINE_END = re.compile(rb"\r\n|\r|\n")


class _AnswerCheck(httpx2.AsyncByteStream):
    """The body of a ``tools/call`` answer, checked: a JSON-RPC answer (a result or an error) in
    it whose id is not that request's is dropped and replaced by ``MISROUTED_ANSWER`` for that
    request (``attempt.misrouted``; a WARNING, without the answer's content, is logged). The mcp
    SDK routes a JSON answer by its id alone: on a connection shared by several users, user A's
    POST answered with user B's id (a server bug, a cache or gateway that mislabels answers)
    would resolve B's call with A's result, and B's own answer would then be dropped. (It takes
    an SSE answer's id to be the POST's own, whatever it says: that answer may be another's.)

    A JSON body is read whole (the SDK reads it whole too) and parsed once; an SSE body is read
    event by event, each held back only until its end (the blank line the SDK waits for as well),
    and only events of type ``message`` with data are parsed. Everything else passes unchanged,
    the server's own requests and notifications on the stream included."""

    __slots__ = ("_attempt", "_ids", "_inner", "_origin", "_reply_id", "_sse")

    def __init__(
        self,
        inner: httpx2.AsyncByteStream,
        attempt: CallAttempt,
        ids: frozenset[int | str],
        reply_id: Any,
        *,
        sse: bool,
        origin: str,
    ) -> None:
        self._inner = inner
        self._attempt = attempt
        self._ids = ids
        self._reply_id = reply_id
        self._sse = sse
        self._origin = origin

    async def __aiter__(self) -> AsyncIterator[bytes]:
        stream = self._inner.__aiter__()
        try:
            if self._sse:
                async for piece in self._events(stream):
                    yield piece
                return
            body = b"".join([chunk async for chunk in stream])
            if body and _misrouted(_json_message(body), self._ids):
                body = self._dropped()
            if body:
                yield body
        finally:
            if isinstance(stream, AsyncGenerator):  # closed with us, as httpx2 closes its own
                await stream.aclose()

    async def _events(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        event: list[tuple[bytes, bytes]] = []  # the current event's lines: (content, line end)
        size = 0  # the bytes held of it, the current line's included
        line: list[bytes] = []  # the current line, as far as it came
        open_line = False  # the current line has begun (held in ``line``, or passed on)
        unread = False  # the current event is too large to hold: passed on as it comes
        after_cr = False  # the last chunk ended with CR: an LF opening this one is its CRLF's
        async for chunk in stream:
            if not chunk:
                continue
            out: list[bytes] = []
            start = 0
            if after_cr and chunk[:1] == b"\n":
                if event:
                    event[-1] = (event[-1][0], event[-1][1] + b"\n")
                else:
                    out.append(b"\n")
                start = 1
            for end in _LINE_END.finditer(chunk, start):
                blank = not open_line and end.start() == start
                if unread:
                    out.append(chunk[start : end.end()])
                    unread = not blank
                elif blank:  # the event is complete
                    event.append((b"", end.group()))
                    out.append(self._checked(event))
                    event, size = [], 0
                else:
                    line.append(chunk[start : end.start()])
                    size += end.start() - start
                    event.append((b"".join(line), end.group()))
                    line = []
                open_line = False
                start = end.end()
            after_cr = chunk.endswith(b"\r")
            if start < len(chunk):
                open_line = True
                if unread:
                    out.append(chunk[start:])
                else:
                    line.append(chunk[start:])
                    size += len(chunk) - start
            if not unread and size > _MAX_CHECKED_EVENT:
                unread = True
                out.extend(part for pair in event for part in pair)
                out.extend(line)
                event, size, line = [], 0, []
            if out:
                yield b"".join(out)
        if line:
            event.append((b"".join(line), b""))
        if event:
            yield self._checked(event)  # an event the stream's end cut off

    def _checked(self, event: list[tuple[bytes, bytes]]) -> bytes:
        """The event as it came, or ``MISROUTED_ANSWER`` in its place."""
        kind = b""
        data: list[bytes] = []
        for content, _ in event:
            name, colon, value = content.partition(b":")
            if colon and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                kind = value
        if (
            data
            and kind in (b"", b"message")
            and _misrouted(_json_message(b"\n".join(data)), self._ids)
        ):
            return self._dropped()
        return b"".join(part for pair in event for part in pair)

    def _dropped(self) -> bytes:
        from mcp_types import INTERNAL_ERROR

        self._attempt.misrouted = True
        logger.warning(
            "MCP server at %s answered a tools/call with the JSON-RPC id of another request: "
            "that answer was dropped (given to no caller) and the call fails",
            self._origin,
        )
        error = {"code": INTERNAL_ERROR, "message": MISROUTED_ANSWER}
        body = json.dumps({"jsonrpc": "2.0", "id": self._reply_id, "error": error}).encode()
        return b"event: message\ndata: " + body + b"\n\n" if self._sse else body

    async def aclose(self) -> None:
        await self._inner.aclose()


def auth_of(target: httpx2.AsyncClient | EntraAuth) -> EntraAuth:
    """The ``EntraAuth`` of a client built by ``entra_http_client`` (or ``target`` itself)."""
    if isinstance(target, EntraAuth):
        return target
    auth = target.auth
    if not isinstance(auth, EntraAuth):
        raise ConfigurationError(
            "entra_call needs a client whose auth is EntraAuth (see entra_http_client)."
        )
    if auth.on_error != "record":
        raise ConfigurationError(
            "the MCP client's EntraAuth must use on_error='record': an exception raised inside "
            "the transport kills the MCP connection for every later call."
        )
    return auth


@asynccontextmanager
async def entra_call(target: httpx2.AsyncClient | EntraAuth) -> AsyncIterator[TokenResult]:
    """Resolve the active caller's token in this task and use it for the requests inside.

    Raises the chain's typed error (``ConsentRequired``, ``NoCallerError``, ``AssertionExpired``
    for a caller whose token has expired, ...) *before* any request is sent; after the block,
    re-raises the first error the transport recorded on the caller during the call (e.g. a 401
    retry that could not get a token), unless the call's ``tools/call`` reached the server and
    may have run: then the call's own error stands, with a note that says so (an error saying
    "not sent" would invite sending it again). Consent signals that
    the *server* sends (URL elicitation -32042, Foundry -32006) come back as ``MCPError``:
    ``consent_from_exception(exc)`` maps them to ``ConsentRequired``.
    """
    auth = auth_of(target)
    caller = active_caller()
    if caller is not None:
        caller.take_errors()  # errors of earlier calls are not this call's
    result = await auth.acquire_async(call=True)
    if result is None:
        # No active caller and the policy names no identity for it: fail closed here rather
        # than send the call without a token.
        bound = current_caller()
        if bound is not None and not bound.active:
            # Ended (bind_caller(token=...) ends at the token's expiry): say why, not "install
            # CallerMiddleware".
            raise ended_caller_error(bound, auth.scopes)
        raise NoCallerError()
    failure: BaseException | None = None
    with auth.use(result), call_attempt() as attempt:
        try:
            yield result
        except BaseException as exc:
            failure = exc
            raise
        finally:
            recorded = caller.take_errors() if caller is not None else []
            foreign = isinstance(failure, Exception) and not isinstance(
                failure, EntraPassthroughError
            )
            if recorded and attempt.may_have_run:
                # The tools/call reached the server: the recorded error (a later request of the
                # call, such as the GET resuming its answer, got no token) says "not sent", and
                # the user would send it again. The call's own error stands.
                if failure is not None:
                    failure.add_note(_may_have_run_note(attempt, recorded[0]))
            elif recorded and (failure is None or foreign):
                raise recorded[0] from failure
            elif (
                foreign
                and (caller is None or caller.active)
                and (
                    refused := call_refusal(
                        attempt,
                        # A toolbox's 403 refuses the call (its call id), not the agent's token.
                        "the MCP server refused the call"
                        if attempt.toolbox == "user" and attempt.status == 403
                        else "the MCP server refused the call's token",
                    )
                )
            ):
                # The SDK says only "Server returned an error response" for a 401/403 as for a
                # 503. Not chained: its error may carry the server's answer, which can echo the
                # token it refused; the typed error says what the server said.
                raise refused from None
            elif foreign and failure is not None and attempt.may_have_run:
                failure.add_note(_may_have_run_note(attempt, None))


def call_refusal(
    attempt: CallAttempt,
    refused: str,
    *,
    claims_recorded: bool = False,
    assertion_expired_at: float | None = None,
    own_scopes: Iterable[str] = (),
) -> TokenVerificationError | None:
    """The MCP server's 401/403 to a call's ``tools/call`` (after the auth's one retry on a
    claims challenge or ``invalid_token``), typed: ``InsufficientScope`` for a 403 or an
    ``insufficient_scope`` challenge, else ``TokenVerificationError``; ``None`` for any other
    answer. Named from the status and the challenge's error code alone (``refused`` says who
    refused what): the server's own description is its free text, and no part of the token is
    quoted. The call did not run. ``claims_recorded``: the auth recorded why a claims challenge
    could not be met (``InteractionRequired``, with the claims), which then stands.
    ``assertion_expired_at``: the retry could not get a token because the user's token expired
    then (the auth recorded ``AssertionExpired``): said so (the user signs in again), not that
    the server does not accept the token."""
    status = attempt.status
    if status not in (401, 403) or attempt.transport_error is not None:
        return None
    error = attempt.challenge_error
    if error == "insufficient_claims" and status == 401 and claims_recorded:
        # A claims challenge the auth could not meet: its own error (``InteractionRequired``,
        # with the claims for ``step_up_challenge``) is recorded on the caller and says what
        # to do; "check the scopes" would not. (A challenge whose claims could not be read, or
        # met after an ``invalid_token`` retry, records nothing: refused as any 401.)
        return None
    answer = f"HTTP {status}" + (f' error="{error}"' if error else "")
    refused = f"{refused} ({answer}); the call did not run."
    if error == "insufficient_claims":
        # Claims it asks for (conditional access), whatever the status: not a scope.
        return TokenVerificationError(
            f"{refused} The server asks for claims the token does not carry (a conditional "
            "access step-up).",
            fix="have the user sign in again meeting the server's conditional access (the "
            "claims come in its 401 WWW-Authenticate challenge; a 403 carrying them does not "
            f"follow RFC 6750: ask the server's owner) ({see('errors')})",
        )
    if attempt.toolbox is not None and not (status == 401 and attempt.at_expiry):
        return toolbox_refused(refused, status, error, attempt.toolbox)
    if status == 403 or error == "insufficient_scope":
        if attempt.app_token:
            return InsufficientScope(
                f"{refused} The token, the app's own (an app-only token: no user), is valid "
                "but lacks a scope or app role the server requires.",
                fix=APP_TOKEN_SCOPE_FIX,
            )
        # The challenge's scopes, as at the connect (``connect_refused``): only those of the
        # API the client asks tokens for (or bare names) are quoted.
        own = {s.rsplit("/", 1)[0].lower() for s in own_scopes if "/" in s}
        required = tuple(
            s
            for s in attempt.challenge_scopes
            if "/" not in s or s.rsplit("/", 1)[0].lower() in own
        )
        if required:
            return InsufficientScope(
                f"{refused} The token is valid but lacks a scope or app role the server "
                f"requires (it requires: {', '.join(required)}).",
                required=required,
                fix=f"grant {', '.join(required)} to the user (or the agent app, with admin "
                f"consent), and request it in the tool's scopes ({see('errors')})",
            )
        return InsufficientScope(
            f"{refused} The token is valid but lacks a scope or app role the server requires.",
            fix="grant the user (or the agent app, with admin consent) what the server "
            f"requires, and request it in the tool's scopes ({see('errors')})",
        )
    if status == 401 and assertion_expired_at is not None:
        # The retry got no token: the user's token has expired (a token capped at it was
        # served to its end, and likely refused for that). "Check the scopes" would mislead.
        ended = time.strftime("%H:%M:%S UTC", time.gmtime(assertion_expired_at))
        return TokenVerificationError(
            f"{refused} The user's token has expired (at {ended}), so no new token could be "
            "acquired to send the call again.",
            fix="the user signs in again (a new token for the agent), then calls the tool "
            f"again ({see('errors')})",
        )
    if status == 401 and attempt.at_expiry:
        return expiring_token_refused(refused)
    if attempt.app_token:
        return TokenVerificationError(
            f"{refused} The server does not accept the token, the app's own (an app-only "
            "token: no user).",
            fix=token_refused_fix(app=True),
        )
    return TokenVerificationError(
        f"{refused} The server does not accept the token.", fix=token_refused_fix()
    )


def request_bearer(request: httpx2.Request) -> str | None:
    """The bearer token ``request`` carries in its ``Authorization`` header, else ``None``."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _refused_on_its_way(request: httpx2.Request, status: int) -> bool:
    """Whether ``status`` is a 401 to a bearer token that ended on its way
    (``refused_at_expiry``)."""
    if status != 401:
        return False
    bearer = request_bearer(request)
    return bearer is not None and refused_at_expiry(bearer)


def _app_only_bearer(request: httpx2.Request) -> bool:
    """Whether ``request`` carried an app-only bearer token (read only on a 401/403; an opaque
    token: ``False``)."""
    bearer = request_bearer(request)
    if bearer is None:
        return False
    try:
        return UnverifiedClaims.from_token(bearer).is_app_only
    except (JwtDecodeError, ValueError, OverflowError):
        return False


def refused_at_expiry(token: str) -> bool:
    """Whether the bearer ``token`` a 401 answered had expired, or had less than
    ``EXPIRY_REFUSAL`` seconds left, as the 401 came: refused for its expiry, as far as can be
    told (read only on a 401; an opaque token: ``False``)."""
    exp = token_exp(token)
    return exp is not None and exp - time.time() < EXPIRY_REFUSAL


def expiring_token_refused(refused: str) -> TokenVerificationError:
    """A 401 to a token that ended on its way (``refused_at_expiry``), said as such: "check
    the scopes" would send the operator the wrong way."""
    return TokenVerificationError(
        f"{refused} The token had expired, or was about to, when the server read it: the "
        "request took longer to reach the server than the token had left, or the server's "
        "clock runs ahead of this host's.",
        fix="send the request again (a new token is acquired); if it recurs, look at what "
        "delays requests to the server (a connection pool that queues them, a proxy) and at "
        f"the server's clock ({see('errors')})",
    )


def toolbox_refused(
    refused: str, status: int, error: str | None, toolbox: str
) -> TokenVerificationError:
    """A Foundry toolbox's 401/403 (``toolbox_request``), typed and said as the toolbox's: the
    agent's own token is the credential it expects (never "the app's own token, no user"), and
    a 403 whose challenge is not ``insufficient_scope`` is the toolbox refusing the call id
    (``toolbox="user"``) or the agent (``"agent"``), not a missing scope. ``refused``: who
    refused what, and the answer."""
    where = see("toolbox", "when-a-call-fails")
    if error == "insufficient_scope":
        return InsufficientScope(
            f"{refused} The toolbox says the agent's token (the agent's own, for "
            f"{FOUNDRY_SCOPE}; the user is named by the call id) lacks a scope or role "
            "it requires.",
            fix="give the agent's identity (the route's inner source, e.g. its managed "
            "identity) the access the Foundry project requires to use its toolboxes, and "
            f"request {FOUNDRY_SCOPE} in the tool's scopes ({where})",
        )
    if status == 401:
        return TokenVerificationError(
            f"{refused} The toolbox does not accept the agent's token.",
            fix=f"request {FOUNDRY_SCOPE} in the tool's scopes, with the agent's "
            "identity in the Foundry project's tenant as the route's inner source "
            "(FoundryToolboxRoute(ManagedIdentity())); a toolbox never accepts a user's token "
            f"({where})",
        )
    if toolbox == "user":
        return TokenVerificationError(
            f"{refused} The toolbox did not accept the call id ({CALL_ID_HEADER}) the request "
            "carried: it takes the agent's own token (as sent) and resolves the user from the "
            "call id, which it does not know, no longer accepts (its request has ended), or "
            "does not let use this toolbox.",
            fix="send each call with the call id of the request it serves, as Foundry issued "
            "it (install(app) binds it per request; a call made after its request ended, or "
            "with another request's or another agent's call id, is refused), and check that "
            f"the user may use this toolbox in the Foundry project ({where})",
        )
    return TokenVerificationError(
        f"{refused} The toolbox refused the agent itself (a request that names no user, as "
        "connection-lifetime requests are).",
        fix="give the agent's identity (the route's inner source, e.g. its managed identity) "
        "access to the Foundry project that holds the toolbox, and check the toolbox's URL and "
        f"the {FEATURES_HEADER} flags ({where})",
    )


#: The fix of a 403 (or ``insufficient_scope``) to the app's own token: an app-only token carries
#: app roles, never delegated scopes, so "grant the scope" cannot help.
APP_TOKEN_SCOPE_FIX = (
    "an app-only token (the app's own identity, served to a request without a user) carries "
    "app roles, never delegated scopes: grant the agent app an app role of the MCP server's "
    "API that the server accepts (API permissions, Application permissions, with admin "
    "consent), or have the request carry a user (its bearer token) if the server serves users "
    f"only ({see('errors')})"
)


def token_refused_fix(scopes_in: str = "the tool's scopes", *, app: bool = False) -> str:
    """The fix of an MCP server's 401 to a user's token (a call's or a connect's), or to the
    app's own token (``app``: an app-only token); ``scopes_in``: where the scopes are set."""
    if app:
        return (
            f"check that {scopes_in} name the MCP server's app (its App ID URI + /.default), "
            "that the server trusts the app's tenant and accepts app-only tokens (an app role "
            "granted to the agent app, with admin consent), or have the request carry a user "
            f"if the server serves users only ({see('errors')})"
        )
    return (
        f"check that {scopes_in} name the MCP server's app (its App ID URI + /.default), "
        f"that the server trusts the user's tenant, and that the user may call it "
        f"({see('errors')})"
    )


def _may_have_run_note(attempt: CallAttempt, recorded: BaseException | None) -> str:
    if attempt.refused_after is not None and attempt.status is not None and attempt.status < 400:
        return _refused_after_note(attempt, attempt.refused_after, recorded)
    if recorded is None:
        status = attempt.status
        if attempt.misrouted:
            what = (
                "the server answered it with the JSON-RPC id of another request, an answer that "
                "was dropped"
            )
        elif attempt.transport_error is not None:
            what = f"then the connection was lost ({attempt.transport_error})"
        elif status is not None and status >= 400:
            what = f"the server answered HTTP {status}, which does not say it did not run"
            if attempt.retry_after is not None:
                what += f" (Retry-After: {attempt.retry_after:.3g} s)"
        elif attempt.not_sent is not None:
            what = f"a later request of the call was not sent ({attempt.not_sent})"
        else:
            what = "its error came after it was sent"
    elif attempt.held_back == "no_token":
        what = (
            "the request that resumes its answer (GET with Last-Event-ID) was not sent: no "
            f"token could be applied to it ({type(recorded).__name__})"
        )
    else:
        what = f"a later request of the call got no token ({type(recorded).__name__})"
    return (
        f"entra_passthrough: this tools/call reached the MCP server and may have run; {what}. "
        "It is not sent again: check whether it took effect before calling it again."
    )


def _refused_after_note(
    attempt: CallAttempt, refused: tuple[str, int, bool], recorded: BaseException | None
) -> str:
    """The call was answered, then a later request of it (the SDK's ``tools/list``) was
    refused for its token: the call ran, its result is lost, and the refusal's reason stands."""
    method, status, at_expiry = refused
    if isinstance(recorded, AssertionExpired):
        why = (
            "and no new token could be acquired to send it again: the user's token has "
            "expired (AssertionExpired; the user signs in again)"
        )
    elif recorded is not None:
        why = f"and no new token could be acquired to send it again ({type(recorded).__name__})"
    elif at_expiry:
        why = (
            "its token had expired, or was about to, when the server read it (a queue or proxy "
            "in front of the server, or the server's clock ahead of this host's)"
        )
    else:
        why = "the server does not accept the token"
    fix = (
        " (the mcp SDK sends tools/list after a tool's first call on a session: list the tools "
        "once after connecting, and it sends none)"
        if method == "tools/list"
        else ""
    )
    return (
        f"entra_passthrough: this tools/call reached the MCP server and ran (HTTP "
        f"{attempt.status}); then the {method} sent after it was refused (HTTP {status}): "
        f"{why}. The call's result is lost{fix}. It is not sent again: check whether it took "
        "effect before calling it again."
    )


def _https_link(link: object) -> str | None:
    if not isinstance(link, str) or len(link) > 4096:
        return None
    parts = urlsplit(link)
    if parts.scheme != "https" or not parts.netloc:
        return None
    return link


def exception_chain(
    exc: BaseException, *, decided: tuple[type[BaseException], ...] = ()
) -> Iterable[BaseException]:
    """``exc`` and what it carries (groups, wrapped args, causes and contexts), bounded.
    ``decided``: exception types whose own causes and contexts are not walked (an error the
    token chain chose over others it met, which its context still holds)."""
    seen: set[int] = set()
    stack = [exc]
    while stack and len(seen) < 32:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if decided and isinstance(current, decided):
            continue
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        stack.extend(arg for arg in current.args if isinstance(arg, BaseException))
        inner = getattr(current, "inner_exception", None)
        if isinstance(inner, BaseException):
            stack.append(inner)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                stack.append(linked)


def _links_from_mcp_error(code: int, message: str, data: Any) -> list[str]:
    links: list[str] = []
    if code == URL_ELICITATION_REQUIRED and isinstance(data, dict):
        for item in data.get("elicitations") or []:
            if isinstance(item, dict) and (link := _https_link(item.get("url"))):
                links.append(link)
    elif code == FOUNDRY_CONSENT_REQUIRED:
        # Foundry's gateway: "<text> {"errors":[{"name":..,"type":"mcp","error":
        # {"code":"CONSENT_REQUIRED","message":"<consent url>"}}]}"
        start = message.find("{")
        try:
            details = json.loads(message[start:]) if start >= 0 else data
        except (ValueError, RecursionError):  # the server's text: not JSON, or nested too deep
            details = data
        if isinstance(details, dict):
            for item in details.get("errors") or []:
                error = item.get("error") if isinstance(item, dict) else None
                if (
                    isinstance(error, dict)
                    and error.get("code") == "CONSENT_REQUIRED"
                    and (link := _https_link(error.get("message")))
                ):
                    links.append(link)
        if not links and isinstance(data, dict):
            for key in ("consent_link", "consentUrl", "url", "link"):
                if link := _https_link(data.get(key)):
                    links.append(link)
    return links


def consent_from_exception(
    exc: BaseException, *, server_label: str | None = None
) -> ConsentRequired | None:
    """The ``ConsentRequired`` hidden in ``exc`` (its cause chain, groups, wrapped args): ours
    from a token source (AADSTS65001 on OBO), an MCP URL elicitation (-32042) or Foundry's
    gateway consent error (-32006). ``None`` if there is none. Links must be HTTPS."""
    from mcp import MCPError

    # A token error the chain raised is its decision: one it met first and outranked (say
    # DelegatedConsent's ConsentRequired under OnBehalfOf's InteractionRequired, MFA) is still
    # its context, and is not what the user must do.
    for current in exception_chain(exc, decided=(TokenAcquisitionError,)):
        if isinstance(current, ConsentRequired):
            if server_label and not current.server_label:
                current.server_label = server_label
            return current
        if isinstance(current, MCPError):
            links = _links_from_mcp_error(
                current.error.code, current.error.message, current.error.data
            )
            if links:
                kind = (
                    "URL elicitation"
                    if current.error.code == URL_ELICITATION_REQUIRED
                    else ("the Foundry MCP gateway")
                )
                return ConsentRequired(
                    f"The MCP server asked the user to visit a link ({kind}) before it can "
                    "proceed.",
                    link=links[0],
                    server_label=server_label,
                )
    return None


async def url_elicitation_as_error(context: Any, params: Any) -> Any:
    """Elicitation callback for the MCP session: a URL elicitation (protocol 2026-07-28 sends it
    inside an ``InputRequiredResult``) ends the call with a -32042 error carrying the link, which
    ``consent_from_exception`` maps to ``ConsentRequired`` for *this* call (the callback runs in
    the calling task). The SDK's default callback declines without a trace of the link, and
    agent-framework gives its client none. Plain mcp: ``Client(..., elicitation_callback=
    url_elicitation_as_error)``."""
    from mcp_types import INVALID_REQUEST, ErrorData

    url = getattr(params, "url", None)
    if getattr(params, "mode", None) == "url" and isinstance(url, str):
        item = {"mode": "url", "url": url, "message": str(getattr(params, "message", ""))[:500]}
        return ErrorData(
            code=URL_ELICITATION_REQUIRED,
            message="URL elicitation required",
            data={"elicitations": [item]},
        )
    return ErrorData(code=INVALID_REQUEST, message="Elicitation not supported")
