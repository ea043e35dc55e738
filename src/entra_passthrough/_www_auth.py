"""The 401/403 answers of a protected resource (RFC 6750 section 3, RFC 9728 section 5.1).

No mcp or Starlette import: used by ``entra_passthrough.server``; the header itself is built by
``_challenge.bearer_challenge`` (shared with the capture middleware).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from ._asgi import Scope, Send
from ._challenge import bearer_challenge, encode_claims
from ._errors import InsufficientScope, InteractionRequired, TokenVerificationError

_MAX_DESCRIPTION = 200
#: The description of an answer that did not judge the token (``SigningKeysUnavailable``,
#: 503). Fixed text: the error's own message names the key endpoint (which may carry a secret
#: in its query) for the operator, and whoever sends a token is not the operator.
_NOT_JUDGED = "the signing keys could not be fetched; no token can be verified until they are."


def _clean(text: str) -> str:
    """Printable ASCII only, bounded: reasons may quote claims of an unverified token."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:_MAX_DESCRIPTION]


def challenge(
    *,
    error: TokenVerificationError | None,
    resource_metadata: str | None,
    scopes: Sequence[str] = (),
) -> tuple[int, str, bytes]:
    """(status, WWW-Authenticate value, JSON body) for a refused request.

    No token: 401 with no error code (RFC 6750 3.1). The header is empty for a non-401/403
    error (``SigningKeysUnavailable``, 503): the token was not judged, the client keeps it, and
    the description is a fixed text (never the error's, which names the key endpoint).
    """
    if error is not None and error.status_code not in (401, 403):
        payload = {"error": error.error, "error_description": _NOT_JUDGED}
        return error.status_code, "", json.dumps(payload).encode()
    scope = " ".join(scopes) if scopes else None
    if error is None:
        header = bearer_challenge(resource_metadata=resource_metadata, scope=scope)
        body = {"error": "unauthorized", "error_description": "a bearer token is required"}
        return 401, header, json.dumps(body).encode()
    description = _clean(error.reason)
    header = bearer_challenge(
        resource_metadata=resource_metadata,
        error=error.error,
        error_description=description,
        scope=scope if isinstance(error, InsufficientScope) else None,
    )
    body = {"error": error.error, "error_description": description}
    return error.status_code, header, json.dumps(body).encode()


#: The descriptions of a step-up answer: fixed texts (the error's own message is the
#: operator's, and names the source and the scopes).
_STEP_UP = (
    "additional sign-in is required (multi-factor authentication or a conditional access policy)"
)
_BLOCKED = (
    "a conditional access policy requires something a sign-in here cannot give (a compliant "
    "device, a location, enrolment in multi-factor authentication)"
)


def step_up_challenge(
    error: InteractionRequired, *, resource_metadata: str | None = None
) -> tuple[int, str, bytes]:
    """(status, ``WWW-Authenticate`` value, JSON body) that hands an ``InteractionRequired``
    back to the client that called this service, so that the user can meet it.

    Entra refused the on-behalf-of exchange for conditional access (AADSTS50076: MFA; a policy
    with a claims challenge): the challenge (``error.claims``) must reach the client app that
    signed the user in, which signs in again with it (MSAL: ``claims_challenge=``, MSAL.js:
    ``claims``), then calls again with the new token
    (https://learn.microsoft.com/entra/identity-platform/claims-challenge). So: HTTP 401 with
    ``WWW-Authenticate: Bearer error="insufficient_claims", claims="<base64>"``. Without a usable
    challenge (AADSTS53003, a block; 50079, MFA enrolment), a new sign-in with the same client
    cannot help: 403 and no challenge, the body saying why. The body never carries the error's
    message (it names sources and scopes, for the operator's log).
    """
    encoded = encode_claims(error.claims) if error.claims else None
    if encoded is None:
        body = {"error": "interaction_required", "error_description": _BLOCKED}
        return 403, "", json.dumps(body).encode()
    header = bearer_challenge(
        resource_metadata=resource_metadata,
        error="insufficient_claims",
        error_description=_STEP_UP,
        claims=encoded,
    )
    body = {"error": "insufficient_claims", "error_description": _STEP_UP}
    return 401, header, json.dumps(body).encode()


async def send_challenge(
    send: Send,
    status: int,
    header: str,
    body: bytes,
    *,
    head: bool = False,
    websocket: bool = False,
) -> None:
    """Send the answer; ``websocket``: as the answer to a WebSocket handshake, through the ASGI
    "websocket.http.response" extension (the caller checks the server offers it)."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if header:
        headers.append((b"www-authenticate", header.encode("latin-1")))
    else:
        headers.append((b"retry-after", b"5"))
    kind = "websocket.http.response" if websocket else "http.response"
    await send({"type": kind + ".start", "status": status, "headers": headers})
    await send({"type": kind + ".body", "body": b"" if head else body})


def authorization_values(scope: Scope) -> list[bytes]:
    """Every ``Authorization`` header value of the request (normally zero or one)."""
    values: list[bytes] = []
    for name, value in scope.get("headers") or ():
        if isinstance(name, bytes) and name.lower() == b"authorization":
            values.append(value)
    return values


#: Schemes that carry an OAuth access token by definition, other than ``Bearer`` (RFC 9449's
#: DPoP, the PoP drafts'). Not ``Token`` or ``OAuth``: API keys (``Token <key>``) and OAuth 1.0a
#: signatures use those; a user's token behind them is found by its shape.
TOKEN_SCHEMES = frozenset({"dpop", "pop"})


#: A JWT anywhere in a value (quoted, after ``Token:``, ``access_token=``...): a JSON header
#: segment (base64url of ``{"``), then two dot-separated segments.
_JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.")


def presents_token(scheme: str, value: str) -> bool:
    """Whether an ``Authorization`` value that is not ``Bearer <token>`` still presents a
    user's token: a bearer-like scheme (``Bearer:<token>``, ``Bearer=<token>``,
    ``Bearer<TAB><token>``), a token scheme (``DPoP``), or a JWT-shaped value (the raw
    token, ``Token <jwt>``). Then it is the user's token in a malformed header: presented and
    unusable, never "no token", so that the app's identity does not stand in for it and the
    401 says ``invalid_token``. Any other scheme (Basic, Negotiate, an API key, a signature)
    carries no user token. ``scheme`` is the value's first word, lower-cased."""
    if scheme.startswith("bearer") or scheme in TOKEN_SCHEMES:
        return True
    return _JWT_SHAPED.search(value) is not None


def authorization_token(text: str) -> str | None:
    """The one reading of an ``Authorization`` value, for the capture middleware and the MCP
    server alike. RFC 6750 2.1 is ``"Bearer" 1*SP b64token``: the scheme, then spaces (SP, not
    a tab or other whitespace), then the token, which is returned. ``""`` for a value that
    presents a user's token in any other form (``presents_token``: ``Bearer<TAB><token>``,
    ``Bearer:<token>``, the raw token, DPoP) or ``Bearer`` with no token: presented and
    unusable. ``None`` for a value that carries no user token (empty, Basic, an API key)."""
    if text[:7].lower() != "bearer ":  # (the usual value is read without stripping it first)
        text = text.strip()
        if text[:7].lower() != "bearer ":
            parts = text.split(None, 1)
            if not parts:
                return None
            return "" if presents_token(parts[0].lower(), text) else None
    return text[7:].strip()


def malformed_authorization(scope: Scope) -> bool:
    """Whether the request's one ``Authorization`` header presents a token in a form that is
    not ``Bearer <token>`` (``authorization_token``'s presented and unusable, except a bare
    ``Bearer``, which presents nothing): a 401 for it says ``invalid_token``, not "no token
    was sent"."""
    values = authorization_values(scope)
    if len(values) != 1 or not isinstance(values[0], bytes):
        return False
    text = values[0].decode("latin-1")
    return authorization_token(text) == "" and text.strip().lower() != "bearer"


def bearer_token(scope: Scope) -> str | None:
    """The token of the request's one ``Authorization: Bearer <token>`` header
    (``authorization_token``), or None (none, not that form, or the header sent more than once:
    ambiguous, never resolved by picking one)."""
    values = authorization_values(scope)
    if len(values) != 1 or not isinstance(values[0], bytes):
        return None
    return authorization_token(values[0].decode("latin-1")) or None
