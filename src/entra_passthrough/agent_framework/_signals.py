"""What failures mean: a dead MCP connection, a session the server refused, a call whose outcome
is unknown (never retried), a consent to show (``oauth_consent_request``), or an explanation the
hosted agent's client must see."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
from agent_framework import Content, MiddlewareFailure
from agent_framework.exceptions import ToolException, UserInputRequiredException

from .._docs import see
from .._errors import ConsentRequired, EntraPassthroughError
from ..mcp import FOUNDRY_CONSENT_REQUIRED, exception_chain
from ._af_seams import public_failure_type
from ._hosting import unstored_request

__all__ = [
    "CallOutcomeUnknown",
    "MCPServerUnreachable",
    "ToolNotListed",
    "connect_lost",
    "consent_exception",
    "gateway_shaped",
    "is_dead_connection",
    "is_lost_response",
    "public_failure",
]


class CallOutcomeUnknown(ToolException):
    """A ``tools/call`` whose request may have reached the MCP server when the connection was
    lost, or that the server answered with an HTTP error that does not say it did not run (a
    5xx, a 429, another 4xx without a JSON-RPC error): it may have run. Also a call that ran
    but whose result the mcp client refused because it breaks the tool's declared output
    schema (the message says it ran). It is never resent automatically (that could run it
    twice); the message tells the model to check before calling again. ``status`` is that HTTP
    status (``None`` when the connection was lost, and for a refused result) and
    ``retry_after`` the seconds its ``Retry-After`` asked to wait (``None`` without one)."""

    status: int | None = None
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        inner_exception: Exception | None = None,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, inner_exception)
        self.status = status
        self.retry_after = retry_after


class ToolNotListed(ToolException):
    """A call names a tool that the MCP server's loaded tool list does not have. Not sent:
    agent-framework keeps only the arguments the loaded schema declares, so the call would go
    out with its arguments stripped and the tool would run with its defaults."""

    def __init__(self, tool_name: str, server_label: str, listed: list[str]) -> None:
        shown = ", ".join(repr(name) for name in listed[:20]) or "none"
        super().__init__(
            f"The call to tool {tool_name!r} was not sent (it did not run): MCP server "
            f"{server_label!r} does not list it (its tools: {shown}). Fix: call one of the "
            "listed tools; if the server added it since, reconnect the tool (close and enter "
            "it again) so that its tool list is loaded again."
        )
        self.tool_name = tool_name


class MCPServerUnreachable(EntraPassthroughError):
    """An MCP tool could not connect: its server could not be reached (the TCP or TLS connection
    could not be opened), or it (or a gateway in front of it) kept answering the connect's
    requests 429/502/503/504, however long the tool tried again within its bound. No tool ran,
    and it is not about anyone's token. ``server_label`` names the tool's server and ``origin``
    its URL's scheme, host and port (no path, query or user information); ``status`` and
    ``retry_after`` (seconds) are the last such answer's (``None`` when none came)."""

    def __init__(
        self,
        message: str,
        *,
        server_label: str,
        origin: str,
        fix: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.server_label = server_label
        self.origin = origin
        self.status = status
        self.retry_after = retry_after
        super().__init__(message, fix=fix)


_DEAD_TRANSPORT = (
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    httpx2.ConnectError,
    httpx2.RemoteProtocolError,
)


def is_dead_connection(exc: BaseException) -> bool:
    """True when ``exc`` says the MCP connection is gone: the SDK's "Connection closed"
    (-32000), a closed/broken stream, a transport error, or a tool that is no longer connected.
    A call that was in flight when the connection dropped may still have run on the server.

    Not from the text of an error a server answered: a tool may fail with "Session not found"
    (its own notion of a session) after it ran. Whether the server refused a legacy session is
    the HTTP status of the call's answer (``CallAttempt.session_refused``)."""
    from mcp import MCPError
    from mcp_types import CONNECTION_CLOSED

    for current in exception_chain(exc):
        if isinstance(current, MCPError):
            message = current.error.message.lower()
            # The SDK's own CONNECTION_CLOSED: code *and* message, since a server may answer
            # a call it ran with -32000 ("Server error" range) and a retry would run it twice.
            if current.error.code == CONNECTION_CLOSED and "connection closed" in message:
                return True
        elif isinstance(current, _DEAD_TRANSPORT) or (
            isinstance(current, RuntimeError) and "not connected" in str(current).lower()
        ):
            return True
    return False


def connect_lost(exc: BaseException) -> bool:
    """For a failed *connect* (discovery, initialize, tools/list) only: a dead connection, or
    the server refusing the session the connect just opened (a restart between initialize
    and tools/list: "Session not found"/"Session terminated"). Read from the error's text,
    which is safe here and nowhere else: a connect runs no tool, so connecting again cannot
    run one twice."""
    from mcp import MCPError

    if is_dead_connection(exc):
        return True
    for current in exception_chain(exc):
        if isinstance(current, MCPError):
            message = current.error.message.lower()
            if "session not found" in message or "session terminated" in message:
                return True
    return False


def is_lost_response(exc: BaseException) -> bool:
    """True for the mcp SDK's stand-ins for the answer of a request whose response stream was
    lost after its headers arrived (CONNECTION_CLOSED, "SSE stream ended without a response",
    "SSE stream failed: ...", "SSE stream ended and reconnection attempts were exhausted"):
    the request was received, so it may have run. Only ever read as "may have run", never as
    a reason to send again."""
    from mcp import MCPError
    from mcp_types import CONNECTION_CLOSED

    return any(
        isinstance(current, MCPError)
        and current.error.code == CONNECTION_CLOSED
        and current.error.message.lower().startswith("sse stream")
        for current in exception_chain(exc)
    )


#: The mcp SDK's (httpx2's) refusal of one server-sent event over its size limit, inside the
#: SDK's "SSE stream failed: ..." stand-in.
_OVERSIZED_EVENT = re.compile(r"server-sent event exceeded the (\d{1,12}) byte limit")


def oversized_event_limit(exc: BaseException) -> int | None:
    """The limit in bytes when the mcp SDK dropped an SSE answer because one of its events was
    larger than the client's limit for one server-sent event (1 MiB by default): a lost answer
    (``is_lost_response``) whose cause is its size, not the connection. ``None`` otherwise."""
    from mcp import MCPError
    from mcp_types import CONNECTION_CLOSED

    for current in exception_chain(exc):
        if isinstance(current, MCPError) and current.error.code == CONNECTION_CLOSED:
            found = _OVERSIZED_EVENT.search(current.error.message.lower())
            if found is not None:
                return int(found.group(1))
    return None


def is_status_stand_in(exc: BaseException) -> bool:
    """True for the mcp SDK's stand-ins for an HTTP error answer that held no JSON-RPC error
    (INTERNAL_ERROR, "Server returned an error response"; for a 404 before any session,
    METHOD_NOT_FOUND, "Not Found"): they carry neither the status nor anything the server said
    (the transport recorded the status: ``CallAttempt.status``)."""
    from mcp import MCPError
    from mcp_types import INTERNAL_ERROR, METHOD_NOT_FOUND

    stand_ins = {
        (INTERNAL_ERROR, "Server returned an error response"),
        (METHOD_NOT_FOUND, "Not Found"),
    }
    return any(
        isinstance(current, MCPError) and (current.error.code, current.error.message) in stand_ins
        for current in exception_chain(exc)
    )


def is_request_timeout(exc: BaseException) -> bool:
    """True when the mcp SDK gave up waiting for the answer (``request_timeout``: REQUEST_TIMEOUT,
    -32001, "... timed out"): the request was sent and may be running on the server still."""
    from mcp import MCPError
    from mcp_types import REQUEST_TIMEOUT

    return any(
        isinstance(current, MCPError)
        and current.error.code == REQUEST_TIMEOUT
        and "timed out" in current.error.message.lower()
        for current in exception_chain(exc)
    )


def public_failure(exc: Exception) -> Exception:
    """``exc`` in the shape ``ResponsesHostServer`` shows to its client (its message instead of
    a bare "server_error"), for failures raised while the agent connects its tools: a caller
    whose token cannot work (e.g. a token for https://ai.azure.com, refused by the policy).
    Without the hosting package, ``exc`` itself. The message of our typed errors never holds a
    token."""
    kind = public_failure_type()
    if kind is None or isinstance(exc, kind):
        return exc
    return kind(exc, str(exc))


def is_public_failure(exc: BaseException) -> bool:
    kind = public_failure_type()
    return kind is not None and isinstance(exc, kind)


def consent_exception(
    consent: ConsentRequired, *, server_label: str
) -> UserInputRequiredException | ConsentRequired | MiddlewareFailure:
    """``UserInputRequiredException([oauth_consent_request])`` for a consent with an HTTPS link
    (what ``ResponsesHostServer`` turns into an ``oauth_consent_request`` item); the
    ``ConsentRequired`` itself when there is no usable link (the run sees the explained
    error). In a request sent with ``"store": false`` (noted by ``install(app)``), where the
    host cannot continue a consent, a ``MiddlewareFailure`` that fails the response with the
    explanation (``unstored_consent``)."""
    link = consent.link
    if not link or not link.startswith("https://"):
        return consent
    label = consent.server_label or server_label
    if unstored_request():
        return unstored_consent(consent, server_label=label)
    content = Content.from_oauth_consent_request(
        link, additional_properties={"server_label": label}
    )
    return UserInputRequiredException([content], message=str(consent))


def gateway_shaped(consent: ConsentRequired, *, server_label: str) -> Exception:
    """A consent met while *connecting* (discovery), shaped like Foundry's gateway error so that
    ``ResponsesHostServer``'s agent-initialisation path emits an ``oauth_consent_request``."""
    from mcp import MCPError

    if not consent.link or not consent.link.startswith("https://"):
        return consent
    if unstored_request():
        return unstored_consent(consent, server_label=consent.server_label or server_label)
    details = {
        "errors": [
            {
                "name": server_label,
                "type": "mcp",
                "error": {"code": "CONSENT_REQUIRED", "message": consent.link},
            }
        ]
    }
    inner = MCPError(
        FOUNDRY_CONSENT_REQUIRED,
        f"tools/list failed: consent required {json.dumps(details)}",
    )
    return ToolException(
        f"MCP server {server_label!r}: the user must consent before the tool can connect.", inner
    )


def unstored_consent(consent: ConsentRequired, *, server_label: str) -> MiddlewareFailure:
    """The failure of a response whose request was sent with ``"store": false`` when its user
    must consent: ``ResponsesHostServer`` continues a consent (``oauth_consent_request``) only
    in a stored response, and otherwise fails it with "An internal server error occurred." (a
    tool call) or a bare "requires store=true" (agent initialisation). Raised instead, the
    same on every path: a ``MiddlewareFailure`` (agent-framework ends the run with it rather
    than handing it to the model as a tool result), in the host's public failure shape (its
    client sees the message). ``.error`` is a ``ConsentRequired`` that says what happened, why
    and what to send. The link is left out of the message: the host shows consent links only as
    an ``oauth_consent_request``, after checking them against its
    ``allowed_oauth_consent_origins``."""
    error = ConsentRequired(
        f"The user must consent before {server_label!r} can be used for them, and this "
        "response cannot ask for it: the request was sent with store=false, and the consent "
        "request (an oauth_consent_request item that the client answers in a follow-up "
        "request) needs a stored response.",
        link=consent.link,
        source=consent.source,
        scopes=consent.scopes,
        server_label=server_label,
        correlation_id=consent.correlation_id,
        trace_id=consent.trace_id,
        fix="send the request again with store=true (the Responses API default); the response "
        "then ends incomplete with an oauth_consent_request holding the link to show the user "
        f"({see('agent-framework')})",
    )
    failure = middleware_failure_type("ConsentNeedsStoredResponse")(error)
    failure.__cause__ = consent
    return failure


@functools.cache
def middleware_failure_type(name: str) -> Callable[[Exception], MiddlewareFailure]:
    """A ``MiddlewareFailure`` type named ``name`` that is also the host's public failure type
    (``ResponsesHostServer`` shows its message as the response's error): built from a typed
    error, whose text is its message and which is its ``.error``. One type per name."""
    public = public_failure_type()

    def init(self: Any, error: Exception) -> None:
        MiddlewareFailure.__init__(self, str(error))
        self.error = error
        self.public_message = str(error)

    bases = (MiddlewareFailure,) if public is None else (MiddlewareFailure, public)
    # Built here: the host's public failure type is private to it (``_af_seams``).
    kind: Callable[[Exception], MiddlewareFailure] = type(name, bases, {"__init__": init})
    return kind
