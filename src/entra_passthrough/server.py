"""The MCP server side: protect an mcp SDK server (``MCPServer``) with Entra ID.

>>> from mcp.server.mcpserver import MCPServer
>>> from entra_passthrough import JwtVerifier
>>> from entra_passthrough.server import (EntraChallengeMiddleware, EntraTokenVerifier,
...                                       auth_settings, current_user)
>>> verifier = EntraTokenVerifier(JwtVerifier(audiences=[client_id, f"api://{client_id}"],
...                                           tenants=[tenant_id]))
>>> auth = auth_settings(resource_server_url="https://mcp.contoso.com/mcp", tenant_id=tenant_id,
...                      scopes=["access_as_user"], app_id_uri=f"api://{client_id}")
>>> server = MCPServer("notes", token_verifier=verifier, auth=auth)
>>> @server.tool()
... async def whoami() -> str:
...     return current_user().upn or current_user().oid
>>> app = EntraChallengeMiddleware(server.streamable_http_app(), settings=auth)

Why each piece (mcp 2.3, read in its source): the SDK has no JWT verifier; a verifier that
returns ``None`` makes the SDK answer 401 ``error="invalid_token", error_description="Authentication
required"`` whatever the reason, even for a token that is valid but lacks a scope, and with an
error code even when no token was sent (RFC 6750 §3.1 says none); its 403 carries no ``scope``.
``EntraChallengeMiddleware`` rewrites those answers from what the verifier found. The SDK's
protected-resource metadata needs an http(s) ``resource`` (an ``api://`` App ID URI is refused);
docs/server.md explains the RFC 8707 ``resource`` pitfall (AADSTS9010010).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ._asgi import ASGIApp, Message, Receive, Scope, Send
from ._errors import (
    GUID,
    ConfigurationError,
    InsufficientScope,
    NoCallerError,
    TokenVerificationError,
    require_extra,
)
from ._jwt import fingerprint
from ._origins import is_loopback, shown_url
from ._user_key import UserKey
from ._verify import (
    PUBLIC_AUTHORITY,
    TENANT_GUID_FIX,
    JwtVerifier,
    VerifiedToken,
    default_app_id_uri,
    names,
)
from ._www_auth import (
    authorization_values,
    bearer_token,
    challenge,
    malformed_authorization,
    send_challenge,
)

try:
    from mcp.server.auth.middleware.auth_context import get_access_token
    from mcp.server.auth.provider import AccessToken
    from mcp.server.auth.routes import build_resource_metadata_url
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.streamable_http import (
        EventCallback,
        EventId,
        EventMessage,
        EventStore,
        StreamId,
    )
    from mcp.types import JSONRPCMessage
    from pydantic import AnyHttpUrl, PrivateAttr, ValidationError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise require_extra("server", "mcp", exc) from exc

__all__ = [
    "EntraChallengeMiddleware",
    "EntraEventStore",
    "EntraTokenVerifier",
    "EntraUser",
    "auth_settings",
    "challenge",
    "current_user",
    "require_entra_auth",
]

_log = logging.getLogger("entra_passthrough.server")


@dataclass(frozen=True, slots=True)
class EntraUser:
    """The verified caller, for tool code: ``current_user()`` returns one.

    >>> user = current_user()
    >>> user.oid, user.tid, user.upn, user.scopes
    """

    oid: str
    tid: str
    upn: str | None
    name: str | None
    scopes: tuple[str, ...]
    roles: tuple[str, ...]
    client_id: str
    app_only: bool
    claims: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_verified(cls, vt: VerifiedToken) -> EntraUser:
        return cls(
            oid=vt.oid,
            tid=vt.tid,
            upn=vt.upn,
            name=vt.name,
            scopes=vt.scopes,
            roles=vt.roles,
            client_id=vt.client_id,
            app_only=vt.app_only,
            claims=vt.claims,
        )

    @property
    def user_key(self) -> UserKey:
        """The user's ``UserKey`` (tenant + object id, verified): the key for per-user data
        (``user_key.value`` is ``"<tid>:<oid>"``, ``user_key.hashed`` its stored form)."""
        return UserKey.for_entra_user(self.tid, self.oid)


class EntraAccessToken(AccessToken):
    """The SDK's ``AccessToken`` carrying the ``VerifiedToken`` it came from (not serialised)."""

    _verified: VerifiedToken | None = PrivateAttr(default=None)

    @property
    def verified(self) -> VerifiedToken | None:
        return self._verified

    def __repr_args__(self) -> Any:
        # The SDK's model would show the raw token in every repr and log line.
        for name, value in super().__repr_args__():
            yield (
                name,
                (fingerprint(value) if name == "token" and isinstance(value, str) else value),
            )


@dataclass(eq=False, slots=True)
class _Verification:
    """What the verifier found for this request, for the challenge middleware; and the scopes
    the SDK requires of every token (``AuthSettings.required_scopes``), for the verifier."""

    error: TokenVerificationError | None = None
    required: tuple[str, ...] = ()


_outcome: ContextVar[_Verification | None] = ContextVar(
    "entra_passthrough.server.outcome", default=None
)
_verified: ContextVar[VerifiedToken | None] = ContextVar(
    "entra_passthrough.server.verified", default=None
)


class EntraTokenVerifier:
    """mcp's ``TokenVerifier`` for Entra access tokens, on top of ``JwtVerifier``.

    >>> verifier = EntraTokenVerifier(JwtVerifier(audiences=[cid, f"api://{cid}"], tenants=[tid]))
    >>> server = MCPServer("notes", token_verifier=verifier, auth=auth_settings(...))

    ``AccessToken.scopes`` holds each ``scp`` value twice: as Entra sends it
    (``access_as_user``) and qualified with ``app_id_uri`` (``api://<id>/access_as_user``), so
    ``AuthSettings.required_scopes`` can name the scopes clients must request from Entra (what the
    protected-resource metadata advertises). ``app_id_uri`` defaults to the first audience that is
    a URI, else ``api://<first audience>``. App roles are never put in ``scopes``. An app-only
    token the verifier accepted (``allow_app_only``, ``required_roles``) has no ``scp``; under
    ``EntraChallengeMiddleware`` its ``AccessToken.scopes`` are the server's required scopes,
    which the SDK requires of every token (``current_user().scopes`` stays empty).
    """

    def __init__(self, verifier: JwtVerifier, *, app_id_uri: str | None = None) -> None:
        # A JwtVerifier, or an object with its interface (a wrapper adding a policy of its own).
        audiences = getattr(verifier, "audiences", None)
        if not callable(getattr(verifier, "verify_async", None)) or (
            app_id_uri is None and not isinstance(audiences, tuple | list)
        ):
            raise ConfigurationError(
                f"EntraTokenVerifier needs a JwtVerifier, not {type(verifier).__name__}",
                fix="EntraTokenVerifier(JwtVerifier(audiences=[...], tenants=[...])); a verifier "
                "of your own needs verify_async(token), and audiences or app_id_uri=",
            )
        if app_id_uri is not None and (not isinstance(app_id_uri, str) or not app_id_uri.strip()):
            raise ConfigurationError(
                "app_id_uri must be the API's Application ID URI (a non-empty string)",
                fix="leave it out (the first audience that is a URI), or pass e.g. 'api://<id>'",
            )
        self.verifier = verifier
        self.app_id_uri = (app_id_uri or default_app_id_uri(verifier.audiences)).rstrip("/")

    def __repr__(self) -> str:
        return f"EntraTokenVerifier({self.verifier!r}, app_id_uri={self.app_id_uri!r})"

    async def verify_token(self, token: str) -> AccessToken | None:
        # None is the protocol's only "no" (an exception here becomes a 500); the reason goes
        # to the challenge middleware through the request's context.
        outcome = _outcome.get()
        # The SDK hands over ``Authorization[7:]``: "Bearer  <token>" (RFC 6750 allows one or
        # more spaces after the scheme) arrives with the extra spaces still in front.
        token = token.strip()
        try:
            vt = await self.verifier.verify_async(token)
        except TokenVerificationError as err:
            if outcome is not None:
                outcome.error = err
            return None
        scopes = [*vt.scopes, *(f"{self.app_id_uri}/{s}" for s in vt.scopes)]
        if vt.app_only and outcome is not None:
            # The SDK requires AuthSettings.required_scopes of every token, and an app-only
            # token has no scp: it was judged by the verifier's rules instead (allow_app_only
            # and required_roles; JwtVerifier returns no app-only token otherwise), so it
            # carries the scopes this server requires (never more).
            scopes += [s for s in outcome.required if s not in scopes]
        access = EntraAccessToken(
            token=token,
            client_id=vt.client_id,
            scopes=scopes,
            expires_at=int(vt.expires_at),
            resource=vt.audience,
            subject=vt.subject or vt.oid,
            claims=dict(vt.claims),
        )
        access._verified = vt
        return access


def current_user() -> EntraUser:
    """The caller of the current MCP tool call (or request under ``require_entra_auth``).

    Raises ``NoCallerError`` outside an authenticated request, or when the token was not
    verified by ``EntraTokenVerifier`` (another verifier's claims are not trusted here).
    """
    vt = _verified.get()
    if vt is None:
        access = get_access_token()
        if isinstance(access, EntraAccessToken):
            vt = access.verified
    if vt is None:
        raise NoCallerError(
            "No verified Entra caller in this context: the request was not authenticated by "
            "EntraTokenVerifier (or require_entra_auth), or this code runs outside a request.",
            fix="pass token_verifier=EntraTokenVerifier(...) and auth=auth_settings(...) to "
            "MCPServer; call current_user() only from tool code.",
        )
    return EntraUser.from_verified(vt)


#: The scope of events stored or replayed without a verified caller (no ``EntraTokenVerifier``,
#: or another verifier's token): never a user key's hash (those are hex), so such events are
#: never replayed to a verified user, nor a verified user's events to a request without one.
_ANONYMOUS = "anonymous"


def _event_scope() -> str:
    """The scope of the stream being stored or replayed: the hash of the verified caller's
    user key, else ``"anonymous"``. Never the key itself (an event store may be shared or
    inspected; the key names a person)."""
    try:
        user = current_user()
    except NoCallerError:
        return _ANONYMOUS
    return user.user_key.hashed


class EntraEventStore(EventStore):
    """An mcp ``EventStore`` that replays a stream only to the user who stored it.

    >>> store = EntraEventStore(MyEventStore())   # any mcp EventStore: Redis, a database...
    >>> app = EntraChallengeMiddleware(server.streamable_http_app(event_store=store), settings=auth)

    The SDK names a call's SSE stream after its JSON-RPC request id, which is the same number in
    every session, and gives one store to every session: a store keyed by stream id alone
    replays one user's events, their tool results, to another user who resumes a stream with
    ``GET`` + ``Last-Event-ID``. This wrapper stores every event under
    ``"<user key hash>|<stream id>"`` (the verified caller, ``current_user()``; the SDK stores
    a session's events in the context of the request that opened it, and mcp 2.2-2.3 binds a
    session to the credential that opened it), and replays only a stream whose owner is the
    user of the resuming request: another user's stream (or one stored without this wrapper)
    replays nothing, as an unknown ``Last-Event-ID`` does. Without a verified caller events are
    scoped ``"anonymous"``: never replayed to a verified user, and vice versa.

    The replayed events are held until the inner store says whose stream they belong to, so
    one replay holds one stream's missed events in memory. Streams are scoped per user, not per
    session: two sessions of the same user whose calls have the same request id still share a
    stream in the inner store (no other user sees either).
    """

    def __init__(self, inner: EventStore) -> None:
        if not all(
            callable(getattr(inner, name, None)) for name in ("store_event", "replay_events_after")
        ):
            raise ConfigurationError(
                f"EntraEventStore wraps an mcp EventStore, not {type(inner).__name__}.",
                fix="pass the store you would give streamable_http_app(event_store=...): "
                "EntraEventStore(MyEventStore()), a subclass of "
                "mcp.server.streamable_http.EventStore.",
            )
        self.inner = inner

    def __repr__(self) -> str:
        return f"EntraEventStore({self.inner!r})"

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        return await self.inner.store_event(f"{_event_scope()}|{stream_id}", message)

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        scope = _event_scope()
        held: list[EventMessage] = []

        async def hold(event: EventMessage) -> None:
            held.append(event)

        scoped = await self.inner.replay_events_after(last_event_id, hold)
        if scoped is None:
            return None
        owner, separator, stream_id = scoped.partition("|")
        if not separator or owner != scope:
            # Neither the user nor the event id is logged: an id is a cursor into the store.
            _log.warning(
                "EntraEventStore replayed nothing: the resuming request's Last-Event-ID "
                "belongs to a stream of another user (or one stored without EntraEventStore), "
                "so its events were not sent; the client sees an unknown Last-Event-ID."
            )
            return None
        for event in held:
            await send_callback(event)
        return stream_id


def auth_settings(
    *,
    resource_server_url: str,
    tenant_id: str,
    scopes: Sequence[str] = (),
    app_id_uri: str | None = None,
    authority_host: str = PUBLIC_AUTHORITY,
    service_documentation_url: str | None = None,
) -> AuthSettings:
    """``AuthSettings`` for an MCP server protected by Entra (resource server only).

    ``resource_server_url`` is the MCP endpoint's own https URL (RFC 9728 ``resource``; the SDK
    and clients require http(s), and clients check it against the URL they connect to), never
    the ``api://`` App ID URI. ``scopes`` are required of every delegated token (all of them);
    an app-only token is judged by the verifier's ``allow_app_only`` and ``required_roles``
    instead (under ``EntraChallengeMiddleware``). Short names are qualified with ``app_id_uri``
    so the metadata advertises scopes a client can request from Entra. ``tenant_id`` is the
    tenant's GUID (a domain, ``common`` or ``organizations`` is refused: MCP clients would refuse
    the authorization server advertised there). The issuer is
    ``{authority_host}/{tenant_id}/v2.0``. Audience checks stay
    in the verifier (``validate_token_resource=False``): Entra's ``aud`` is the client id or App
    ID URI, not the server URL.
    """
    resource = _http_url(
        resource_server_url,
        what="resource_server_url",
        fix="use the MCP endpoint's URL (https://mcp.contoso.com/mcp); the App ID URI "
        "(api://...) belongs in JwtVerifier(audiences=...) and app_id_uri=.",
    )
    authority = _http_url(
        authority_host,
        what="authority_host",
        fix="use the authority host's https URL (https://login.microsoftonline.com, or "
        "AZURE_AUTHORITY_HOST); plain http only on loopback (the emulator).",
        authority=True,
    )
    documentation = (
        _http_url(
            service_documentation_url,
            what="service_documentation_url",
            fix="pass the documentation page's full http(s) URL, or leave it out.",
        )
        if service_documentation_url  # "" (an unset variable) is no page, as before
        else None
    )
    tenant = _tenant_id(tenant_id)
    if app_id_uri is not None and (not isinstance(app_id_uri, str) or not app_id_uri.strip()):
        raise ConfigurationError(
            "app_id_uri must be the API's Application ID URI (a non-empty string).",
            fix="pass app_id_uri='api://<client-id>', or qualify every scope yourself.",
        )
    qualified: list[str] = []
    for scope in names(scopes, what="scopes", example="access_as_user"):
        if "/" in scope:
            qualified.append(scope)
        elif app_id_uri:
            qualified.append(f"{app_id_uri.rstrip('/')}/{scope}")
        else:
            raise ConfigurationError(
                f"scope {scope!r} is a short name; Entra needs it qualified.",
                fix="pass app_id_uri='api://<client-id>' or the full scope "
                "'api://<client-id>/<scope>'.",
            )
    return AuthSettings(
        issuer_url=AnyHttpUrl(f"{authority.rstrip('/')}/{tenant}/v2.0"),
        resource_server_url=AnyHttpUrl(resource),
        required_scopes=qualified or None,
        validate_token_resource=False,
        service_documentation_url=AnyHttpUrl(documentation) if documentation else None,
    )


def _tenant_id(value: object) -> str:
    """The tenant's GUID, in lower case (as Entra's issuers write it). A domain name, ``common``
    or ``organizations`` is refused: the OpenID configuration there names the tenant by GUID
    (or a ``{tenantid}`` template) in its ``issuer``, so MCP clients refuse the advertised
    authorization server (issuer mismatch). The value is not shown (it may be a secret pasted
    into the wrong place)."""
    if not isinstance(value, str) or not GUID.fullmatch(value):
        raise ConfigurationError(
            "tenant_id is not a tenant GUID (a domain name, common or organizations, or not "
            "an id at all?): the authorization server advertised at it would name the tenant "
            "by GUID in its issuer, and MCP clients would refuse it.",
            fix=TENANT_GUID_FIX,
        )
    return value.lower()


def _http_url(value: object, *, what: str, fix: str, authority: bool = False) -> str:
    """``value`` if it is an http(s) URL with a host that pydantic's ``AnyHttpUrl`` (which the
    SDK's settings use) takes, else a ``ConfigurationError`` naming ``what`` and at most the
    URL's origin (its path and query may carry a secret; pydantic's own error quotes the whole
    value). An ``authority`` is https (plain http only on loopback, as ``JwtVerifier`` has it)
    with no path, query or fragment."""
    shown = shown_url(value, path=False)
    problem = ""
    if not isinstance(value, str) or shown is None:
        problem = "is not an http(s) URL with a host"
    elif any(c.isspace() or not c.isprintable() for c in value):
        problem = "holds whitespace or control characters"
    else:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http"):
            problem = "is not an http(s) URL"
        elif parts.username is not None or parts.password is not None:
            problem = "carries a user name or password"
        elif authority and parts.scheme == "http" and not is_loopback(parts.hostname or ""):
            problem = "must be an https:// URL (http:// only on loopback)"
        elif authority and (parts.query or parts.fragment):
            problem = "must have no query or fragment"
        elif authority and parts.path not in ("", "/"):
            # The issuer is {authority_host}/{tenant_id}/v2.0: a path would be advertised in
            # authorization_servers and refused by JwtVerifier and OnBehalfOf.
            problem = "has a path; it must be the host only (the tenant goes in tenant_id=)"
    if not problem and isinstance(value, str):
        try:
            AnyHttpUrl(value)
        except ValidationError:
            problem = "is not a valid URL"
        else:
            return value
    # ``from None``: pydantic's error quotes the value.
    raise ConfigurationError(
        f"{what}{f' ({shown})' if shown else ''} {problem}.", fix=fix
    ) from None


class EntraChallengeMiddleware:
    """Pure ASGI: correct 401/403 answers for an ``MCPServer`` app protected by Entra.

    >>> app = EntraChallengeMiddleware(server.streamable_http_app(), settings=auth)

    A request with more than one ``Authorization`` header is refused (401 ``invalid_token``)
    before the SDK sees it: the SDK reads only the first. Use this middleware with
    ``EntraTokenVerifier`` always: the verifier alone never sees the headers.

    When the SDK refuses a request (a 401/403 with ``WWW-Authenticate: Bearer``), the answer is
    replaced by one built from what ``EntraTokenVerifier`` found: no token -> 401 with
    ``resource_metadata`` and ``scope`` and no error code; a bad token -> 401
    ``invalid_token`` with the reason (safe to log, never the token); a valid token without the
    scope or role -> 403 ``insufficient_scope`` with ``scope``. Other responses pass untouched.
    """

    def __init__(self, app: ASGIApp, *, settings: AuthSettings) -> None:
        self.app = app
        self.scopes = tuple(settings.required_scopes or ())
        self.resource_metadata = (
            str(build_resource_metadata_url(settings.resource_server_url))
            if settings.resource_server_url
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(authorization_values(scope)) > 1:
            # The SDK reads the first header only; which one counts must never be ambiguous
            # (require_entra_auth refuses the same way).
            status, header, body = challenge(
                error=TokenVerificationError("the request has more than one Authorization header."),
                resource_metadata=self.resource_metadata,
                scopes=self.scopes,
            )
            await send_challenge(send, status, header, body, head=scope.get("method") == "HEAD")
            return
        outcome = _Verification(required=self.scopes)
        token = _outcome.set(outcome)
        replacing = False

        async def send_wrapper(message: Message) -> None:
            nonlocal replacing
            if message["type"] == "http.response.start" and message["status"] in (401, 403):
                headers = dict(message.get("headers") or [])
                if headers.get(b"www-authenticate", b"").lower().startswith(b"bearer"):
                    replacing = True
                    if message["status"] == 403 and outcome.error is None:
                        outcome.error = InsufficientScope(
                            "the token lacks a scope this server requires.",
                            required=self.scopes,
                        )
                    elif outcome.error is None and bearer_token(scope) is not None:
                        # The verifier accepted it (within its clock leeway) but the SDK checks
                        # expires_at with none.
                        outcome.error = TokenVerificationError("the token has expired.")
                    elif outcome.error is None and malformed_authorization(scope):
                        outcome.error = _malformed()
                    status, header, body = challenge(
                        error=outcome.error,
                        resource_metadata=self.resource_metadata,
                        scopes=self.scopes,
                    )
                    await send_challenge(
                        send, status, header, body, head=scope.get("method") == "HEAD"
                    )
                    return
            if replacing:
                return  # the SDK's own body for the answer we replaced
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            _outcome.reset(token)


def _malformed() -> TokenVerificationError:
    # A token presented in a header that is not "Bearer <token>": invalid_token, not the
    # challenge for a request that sent none.
    return TokenVerificationError("the Authorization header is not 'Bearer <token>'.")


def require_entra_auth(
    app: ASGIApp,
    *,
    verifier: JwtVerifier,
    resource_metadata_url: str | None = None,
    scopes: Sequence[str] = (),
) -> ASGIApp:
    """Pure ASGI: require a verified Entra token on every HTTP request of a (non-MCP) API.

    >>> app = require_entra_auth(api, verifier=JwtVerifier(audiences=[...], tenants=[...]))

    Handlers call ``current_user()``; the verified token is also at
    ``scope["state"]["entra_user"]``. Refusals are RFC 6750 401/403 answers (``scopes`` is what
    the ``scope`` parameter of a challenge names). A WebSocket handshake without a valid token is
    closed (policy violation). Lifespan events pass through.
    """

    scopes = names(scopes, what="scopes", example="api://<client-id>/access_as_user")
    if not callable(getattr(verifier, "verify_async", None)):
        # Without it every request would end in an AttributeError, at the first caller.
        raise ConfigurationError(
            f"require_entra_auth needs a JwtVerifier, not {type(verifier).__name__}.",
            fix="require_entra_auth(app, verifier=JwtVerifier(audiences=[...], tenants=[...])).",
        )

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await app(scope, receive, send)  # lifespan
            return
        bearer = bearer_token(scope)
        error: TokenVerificationError | None = None
        vt: VerifiedToken | None = None
        if len(authorization_values(scope)) > 1:
            error = TokenVerificationError("the request has more than one Authorization header.")
        elif bearer is not None:
            try:
                vt = await verifier.verify_async(bearer)
            except TokenVerificationError as err:
                error = err
        elif malformed_authorization(scope):  # only for a request without a usable bearer
            error = _malformed()
        if vt is None and scope["type"] == "websocket":
            # Closing before accept makes the server answer the handshake with 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        if vt is None:
            status, header, body = challenge(
                error=error, resource_metadata=resource_metadata_url, scopes=scopes
            )
            await send_challenge(send, status, header, body, head=scope.get("method") == "HEAD")
            return
        scope.setdefault("state", {})["entra_user"] = EntraUser.from_verified(vt)
        token = _verified.set(vt)
        try:
            await app(scope, receive, send)
        finally:
            _verified.reset(token)

    return middleware
