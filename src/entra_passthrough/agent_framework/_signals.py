"""What failures mean: a dead MCP connection, a session the server refused, a call whose outcome
is unknown (never retried), a consent to show (``oauth_consent_request``), or an explanation the
hosted agent's client must see."""

from __future__ import annotations

import json

import anyio
import httpx2
from agent_framework import Content
from agent_framework.exceptions import ToolException, UserInputRequiredException

from .._errors import ConsentRequired
from ..mcp import FOUNDRY_CONSENT_REQUIRED, exception_chain
from ._af_seams import public_failure_type

__all__ = [
    "CallOutcomeUnknown",
    "consent_exception",
    "gateway_shaped",
    "is_dead_connection",
    "is_session_refused",
    "public_failure",
]


class CallOutcomeUnknown(ToolException):
    """A ``tools/call`` whose request may have reached the MCP server when the connection was
    lost: it may have run. It is never resent automatically (that could run it twice); the
    message tells the model to check before calling again."""


_DEAD_TRANSPORT = (
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    httpx2.ConnectError,
    httpx2.RemoteProtocolError,
)


def is_dead_connection(exc: BaseException) -> bool:
    """True when ``exc`` says the MCP connection (or its legacy session) is gone: the SDK's
    "Connection closed" (-32000), a closed/broken stream, a transport error, a 404 "Session not
    found"/"Session terminated", or a tool that is no longer connected. A call that was in
    flight when the connection dropped may still have run on the server."""
    from mcp import MCPError
    from mcp_types import CONNECTION_CLOSED

    for current in exception_chain(exc):
        if isinstance(current, MCPError):
            message = current.error.message.lower()
            # The SDK's own CONNECTION_CLOSED: code *and* message, since a server may answer
            # a call it ran with -32000 ("Server error" range) and a retry would run it twice.
            if current.error.code == CONNECTION_CLOSED and "connection closed" in message:
                return True
            if "session not found" in message or "session terminated" in message:
                return True
        elif isinstance(current, _DEAD_TRANSPORT) or (
            isinstance(current, RuntimeError) and "not connected" in str(current).lower()
        ):
            return True
    return False


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


def is_session_refused(exc: BaseException) -> bool:
    """True for a 404 "Session not found"/"Session terminated" on a legacy (mcp 1.x-style)
    session: the server refused the session before running the request."""
    from mcp import MCPError

    for current in exception_chain(exc):
        if isinstance(current, MCPError):
            message = current.error.message.lower()
            if "session not found" in message or "session terminated" in message:
                return True
    return False


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
) -> UserInputRequiredException | ConsentRequired:
    """``UserInputRequiredException([oauth_consent_request])`` for a consent with an HTTPS link
    (what ``ResponsesHostServer`` turns into an ``oauth_consent_request`` item); the
    ``ConsentRequired`` itself when there is no usable link (the run sees the explained
    error)."""
    link = consent.link
    if not link or not link.startswith("https://"):
        return consent
    label = consent.server_label or server_label
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
