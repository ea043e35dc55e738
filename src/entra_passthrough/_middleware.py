"""Capture: ``CallerMiddleware``, a pure ASGI middleware that binds a ``Caller`` per request.

Pure ASGI on purpose (never ``BaseHTTPMiddleware``): the app runs in this task, so the
ContextVar set here is what the app and its streaming body see. The Caller stays active until
its response is complete (the last body chunk, for a streaming response after every earlier
chunk), or until the app returns if that comes first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, cast

from ._asgi import ASGIApp, Scope, Send
from ._caller import STATE_KEY, Caller, CaptureASGI, wanted_headers
from ._challenge import bearer_challenge
from ._errors import ConfigurationError, TokenVerificationError
from ._jwt import MAX_TOKEN_BYTES
from ._verify import default_app_id_uri
from ._www_auth import send_challenge

_log = logging.getLogger("entra_passthrough.capture")


__all__ = ["STATE_KEY", "CallerMiddleware", "Verified", "Verifier"]

_LEEWAY = 60.0
#: An HTTP header name (RFC 9110 ``token``), lower case.
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


class Verified(Protocol):
    @property
    def claims(self) -> Mapping[str, Any]: ...


class Verifier(Protocol):
    """What the middleware needs from ``JwtVerifier``."""

    async def verify_async(self, token: str) -> Verified: ...


class _Reject(Exception):
    def __init__(
        self,
        status: int,
        *,
        error: str | None,
        description: str | None,
        scope: str | None = None,
    ) -> None:
        super().__init__(description or error or str(status))
        self.status = status
        self.error = error
        self.description = description
        self.scope = scope


class CallerMiddleware(CaptureASGI):
    """Bind a ``Caller`` (who is calling) to every HTTP and WebSocket request.

    The caller's token(s) come from ``assertion_headers`` (default ``Authorization: Bearer``;
    add e.g. ``"x-ms-token-aad-access-token"`` for App Service authentication), with the
    Foundry platform headers. Junk headers never raise. ``require_caller=True`` answers 401
    (``WWW-Authenticate: Bearer ...``, RFC 6750 and RFC 9728's ``resource_metadata``) when no
    usable bearer was sent; ``verifier=JwtVerifier(...)`` verifies it (401/403 on failure)
    and sets ``caller.verified``. The Caller is also at ``scope["state"]["entra_caller"]``.
    ``open_paths``: exact paths (a health probe's, ``/readiness``; after the app's
    ``root_path``) whose ``GET``/``HEAD`` ``require_caller`` and ``verifier`` neither refuse nor
    verify, and which then run with no caller: a probe sends no token. (Without either check
    it changes nothing.)

    >>> app = CallerMiddleware(app, require_caller=True, verifier=JwtVerifier(audiences=[...]))
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        assertion_headers: Sequence[str] = ("authorization",),
        require_caller: bool = False,
        verifier: Verifier | None = None,
        resource_metadata_url: str | None = None,
        realm: str | None = None,
        open_paths: Sequence[str] = (),
    ) -> None:
        self.open_paths = _open_paths(open_paths)
        if isinstance(assertion_headers, str):
            assertion_headers = (assertion_headers,)
        given_headers: object = assertion_headers
        listed = _items(given_headers)
        odd = [type(h).__name__ for h in listed or () if not isinstance(h, str)]
        if listed is None or odd:
            # None, a number or bytes was a bare TypeError or AttributeError.
            given = type(given_headers).__name__ if listed is None else odd[0]
            what = "must be a list of header names" if listed is None else "has an entry"
            raise ConfigurationError(
                f"assertion_headers {what} ({given} given); a header name is a string.",
                fix="pass header names as strings, e.g. assertion_headers=['authorization'], "
                "or leave it out (Authorization only).",
            )
        names = tuple(cast(str, h).strip().lower() for h in listed)
        if not names or not all(names):
            raise ConfigurationError("assertion_headers needs at least one header name")
        bad = [i for i, n in enumerate(names) if not _HEADER_NAME.fullmatch(n)]
        if bad:
            # A name no request can carry (non-ASCII, a space, a colon) would match nothing, and
            # every request would quietly have no caller from it. Positions, not values: no
            # configuration error echoes what was configured.
            raise ConfigurationError(
                f"assertion_headers: the name at position {', '.join(map(str, bad))} cannot be "
                "an HTTP header name",
                fix="name headers as they are sent, e.g. 'authorization' or "
                "'x-ms-token-aad-access-token' (letters, digits and !#$%&'*+-.^_`|~ only)",
            )
        if verifier is not None and not callable(getattr(verifier, "verify_async", None)):
            # A string (or any non-verifier) was taken, and every request with a bearer then
            # answered 503 with an AttributeError in the log.
            raise ConfigurationError(
                f"CallerMiddleware(verifier=) needs a JwtVerifier, not {type(verifier).__name__}.",
                fix="pass verifier=JwtVerifier(audiences=[...], tenants=[...]), or leave it out.",
            )
        self.app = app
        self.assertion_headers = names
        self._wanted = wanted_headers(names)
        self.require_caller = require_caller
        self.verifier = verifier
        self.resource_metadata_url = resource_metadata_url
        self.realm = realm

    def __repr__(self) -> str:
        verifier = type(self.verifier).__name__ if self.verifier is not None else None
        return (
            f"CallerMiddleware(assertion_headers={list(self.assertion_headers)!r}, "
            f"require_caller={self.require_caller}, verifier={verifier})"
        )

    # ``__call__``, the per-request path, is ``CaptureASGI``'s.

    async def _admit(self, caller: Caller, scope: Scope, send: Send) -> bool:
        if (
            self.open_paths
            and scope.get("method") in ("GET", "HEAD")
            and _route_path(scope) in self.open_paths
        ):
            # A health probe: not checked, and it runs with no caller (ended: every reader
            # takes it for none), so nothing on that path can act for the token it may carry.
            caller.end()
            return True
        try:
            await self._check(caller, scope)
        except _Reject as reject:
            caller.end()
            await self._refuse(scope, send, reject)
            return False
        return True

    async def _check(self, caller: Caller, scope: Scope) -> None:
        if (self.require_caller or self.verifier) and caller.decode_error is not None:
            # Undecodable, duplicated or oversized bearer: never passed on when asked to check.
            raise _Reject(401, error="invalid_token", description=self._unusable(caller, scope))
        if not caller.presented or caller.assertion is None:
            if self.require_caller:
                raise _Reject(401, error=None, description=None)
            return
        if self.verifier is None:
            if self.require_caller:
                exp = caller.claims.exp if caller.claims is not None else None
                if exp is not None and exp + _LEEWAY < time.time():
                    raise _Reject(
                        401, error="invalid_token", description="the bearer token has expired"
                    )
            return
        try:
            verified = await self.verifier.verify_async(caller.assertion)
        except TokenVerificationError as exc:
            if exc.status_code not in (401, 403):
                # Not a judgement of the token (the signing keys could not be fetched: 503):
                # refused, with no Bearer error, so that clients keep their token and retry.
                raise _Reject(503, error=None, description=None) from None
            status = exc.status_code
            required = self._qualified(getattr(exc, "required", ()))
            raise _Reject(
                status,
                error=exc.error or "invalid_token",
                description=getattr(exc, "reason", None) or "the token was not accepted",
                scope=" ".join(required) if required else None,
            ) from None
        except ConfigurationError:
            raise  # the server's, not the caller's (an async API under trio): never a 503
        except Exception as exc:
            # The verifier itself failed (JWKS unreachable...): not the caller's fault, and not
            # a reason to let the request through unverified.
            _log.warning("token verification failed unexpectedly: %s", type(exc).__name__)
            raise _Reject(503, error=None, description="temporarily_unavailable") from None
        caller.verified = dict(verified.claims)

    def _qualified(self, required: Sequence[str]) -> tuple[str, ...]:
        """The challenge's scopes, a short name (``access_as_user``) qualified with the
        verifier's Application ID URI as ``EntraChallengeMiddleware`` does: a client asking
        Entra for a bare scope gets a Microsoft Graph token."""
        audiences = getattr(self.verifier, "audiences", None)
        if (
            not isinstance(audiences, list | tuple)
            or not audiences
            or not all(isinstance(a, str) and a for a in audiences)
        ):
            return tuple(required)  # a verifier of your own: its scopes as it gives them
        # App roles are no scopes: a client cannot ask for one (an app asks for
        # <resource>/.default, which carries the roles granted to it): left out of scope=.
        roles = getattr(self.verifier, "required_roles", ())
        roles = set(roles) if isinstance(roles, list | tuple) else set()
        base = default_app_id_uri(audiences).rstrip("/")
        return tuple(s if "/" in s else f"{base}/{s}" for s in required if s not in roles)

    def _unusable(self, caller: Caller, scope: Scope) -> str:
        """What is wrong with a bearer the Caller could not use, for the 401 (a refusal only:
        no request that passes pays for it). The Caller's own record (never a header value),
        except for a header too large to be read as a token, which it records as no token."""
        reason = caller.decode_error or "it cannot be read"
        if caller.assertion:  # one token was found and does not decode
            return f"the bearer token is not a valid JWT: {reason}"
        with contextlib.suppress(Exception):  # headers no server produces: the record stands
            for raw_name, raw_value in scope.get("headers") or ():
                name = self._wanted.get(bytes.lower(raw_name))
                if name is not None and len(raw_value) > MAX_TOKEN_BYTES + 16:
                    return f"header {name!r} is larger than {MAX_TOKEN_BYTES // 1024} KiB"
        return reason  # "header 'authorization' sent 2 times", "no token in the form ..."

    async def _refuse(self, scope: Scope, send: Send, reject: _Reject) -> None:
        websocket = scope.get("type") == "websocket"
        if websocket and not _http_response_offered(scope):
            # Before accept, closing the handshake makes the server answer 403 (no
            # WWW-Authenticate: a server without the extension cannot send one).
            await send({"type": "websocket.close", "code": 1008})
            return
        header = ""  # not 401/403: the token was not judged (send_challenge adds Retry-After)
        body: dict[str, str] = {"error": "temporarily_unavailable"}
        if reject.status in (401, 403):
            header = bearer_challenge(
                realm=self.realm,
                resource_metadata=self.resource_metadata_url,
                error=reject.error,
                error_description=reject.description if reject.error else None,
                scope=reject.scope,
            )
            body = {"error": reject.error or "unauthorized"}
            if reject.error and reject.description:
                body["error_description"] = reject.description
        await send_challenge(
            send,
            reject.status,
            header,
            json.dumps(body).encode(),
            head=scope.get("method") == "HEAD",
            websocket=websocket,
        )


def _route_path(scope: Scope) -> object:
    """The path the app routes by: ``path`` without the ``root_path`` it starts with (a
    server's ``--root-path``, a mount in a parent app), as Starlette's router reads it."""
    path = scope.get("path")
    root = scope.get("root_path")
    if isinstance(path, str) and isinstance(root, str) and root and path.startswith(root):
        return path[len(root) :]
    return path


def _items(value: object) -> tuple[object, ...] | None:
    """``value``'s items if it is a collection of them, not one string (or bytes), else
    ``None``: an argument that takes a list."""
    if isinstance(value, str | bytes | bytearray):
        return None
    try:
        return tuple(cast("Iterable[object]", value))
    except TypeError:
        return None


def _open_paths(paths: object) -> frozenset[str]:
    """``open_paths`` checked: a list of exact paths, each beginning with ``/``."""
    listed = _items(paths)
    if listed is None or not all(
        isinstance(p, str) and p.startswith("/") and "{" not in p and "?" not in p for p in listed
    ):
        raise ConfigurationError(
            "open_paths must be a list of exact request paths, each beginning with '/' (no "
            "query, no {parameters}).",
            fix="pass e.g. open_paths=['/readiness'] (the paths of health probes, which send "
            "no token), or leave it out.",
        )
    return frozenset(cast("tuple[str, ...]", listed))


def _http_response_offered(scope: Scope) -> bool:
    """Whether the server lets a WebSocket handshake be answered with an HTTP response (the
    ASGI "websocket.http.response" extension: uvicorn, hypercorn), so that a refused handshake
    gets the 401 and its ``WWW-Authenticate`` an HTTP request gets."""
    extensions = scope.get("extensions")
    return isinstance(extensions, Mapping) and "websocket.http.response" in extensions
