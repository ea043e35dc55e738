"""The consent broker: a small Starlette app that runs the user's sign-in and stores the grant.

    GET  /start?t=<link ticket>[&redirect_uri=]  -> 302 to Entra's authorize (PKCE S256, nonce,
                                                    signed state, login/domain hint)
    GET  /callback?code=&state=                   -> verify, redeem, check the user, store
    GET  /signout?t=<revoke ticket>               -> a confirmation page (no side effect)
    POST /revoke  (form t=<revoke ticket>)        -> delete the grant, 303 to Entra's logout

Every failure answers 400 (503 when the store or Entra is unavailable) with a clear page (or
JSON for ``Accept: application/json``) and stores nothing; except a store write after the code
was redeemed that does not answer (it may run all the same): unless a re-read finds the grant
(then the sign-in succeeded), 503 ``store_outcome_unknown`` says it may have been saved.

The link ticket is sealed by ``DelegatedConsent`` with the shared keyring, so only the agent
can mint a link for a user; the callback accepts only the user the link was minted for (verified
tid+oid), or - for a platform user id - the identity that id was first bound to.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from .._aadsts import describe
from .._checks import seconds
from .._consent_client import ConsentClient, IdTokenError, check_https_url
from .._credential import AppCredential, app_credential
from .._errors import (
    ConfigurationError,
    EntraPassthroughError,
    SourceUnavailable,
    first_code,
    safe_request_id,
    safe_word,
    without_fix,
)
from .._grants import (
    GrantStore,
    LinkTicket,
    StoredGrant,
    check_scopes,
    open_revoke_ticket,
    seal_revoke_ticket,
)
from .._origins import is_loopback, shown_url
from .._sources.delegated import DelegatedConsent
from .._store import STORE_REFUSED, Keyring, KeyringError, TokenStore
from .._user_key import UserKey
from ._pages import (
    confirm_revoke_response,
    error_response,
    outcome_unknown_response,
    security_headers,
    signed_out_since_response,
    signout_error_response,
    success_response,
    wants_json,
)
from ._params import CALLBACK_PARAMS, BadRequest, parse_params, read_form
from ._state import State, StateError

if TYPE_CHECKING:
    from .._sources.managed_identity import ManagedIdentity

logger = logging.getLogger("entra_passthrough.consent")

#: "AADSTS<code>:" at the start of an authorize error's description.
_AADSTS_AT_START = re.compile(r"AADSTS(\d{4,7})\b")


def _prompt(ticket: LinkTicket) -> str | None:
    """``select_account`` unless the link names the account (``login_hint``).

    Without ``prompt`` Entra completes the sign-in silently from the browser's session (SSO):
    one navigation to someone else's link (a platform id not yet bound, no hint) would bind it
    to whoever is signed in in that browser, with no click. ``select_account`` "interrupts
    single sign-on" (learn.microsoft.com/entra/identity-platform/msal-js-prompt-behavior): the
    user sees the account picker and chooses. With a ``login_hint`` it is left out: Entra's SSO
    then completes only for a session of the hinted account, and Entra refuses
    ``select_account`` together with an account hint (MSAL.js leaves hints out with it for that
    reason: AzureAD/microsoft-authentication-library-for-js#3315)."""
    return None if ticket.login_hint else "select_account"


#: A state whose flow is gone (used, expired, unknown), to a browser that did not show that it
#: completed it: the sign-in may have completed all the same (a reload after the cookie's end).
_STATE_USED = "This sign-in is unknown, expired or already used."
_STATE_USED_NEXT = (
    "If you completed this sign-in earlier, that sign-in stands: return to the chat. "
    "Otherwise go back to the chat and use the sign-in link again."
)


def _done_id(flow_id: str) -> str:
    """The record of a completed sign-in (flow ids are URL-safe base64: no dot)."""
    return f"{flow_id}.done"


def _cookie_name(flow_id: str, secure: bool) -> str:
    return f"__Host-epc-{flow_id}" if secure else f"epc-{flow_id}"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class _TokenAnswerNotJson(Exception):
    """The token endpoint's answer to a code redemption was not JSON (``_unavailable``)."""


#: Sign-in refusals only an administrator can lift: admin consent required (90094), the user
#: not assigned to the app (50105), blocked by Conditional Access (53003), the account disabled
#: (50057).
_ADMIN_ONLY_CODES = frozenset({90094, 50105, 53003, 50057})
_ADMIN_NEXT = (
    "Ask an administrator of your organisation to grant consent for this app (the fix above); "
    "until then the sign-in link fails the same way. Once they have, use it again."
)


#: A key id as a keyring names it: what may be quoted from a value a browser sent.
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
#: The unknown key ids already warned about (``_warn_unknown_key``), at most this many.
_WARNED_KEY_IDS: set[str] = set()
_MAX_WARNED_KEY_IDS = 4


def _warn_unknown_key(keyring: Keyring, value: str, what: str) -> None:
    """A link or state that did not open: when it names a key id this keyring does not hold,
    the likely cause is a rotation done on some replicas only, and the operator is told (the
    user's page cannot say it: a damaged link looks the same). Names the key id only."""
    kid = value.split(".", 1)[0]
    if "." not in value or not _KEY_ID.fullmatch(kid) or kid in keyring.keys:
        return
    # Once per key id (bounded): anyone can send a link naming a key id, and each WARNING
    # asks the operator to look at the keys; after the first, or past the bound, INFO.
    first = kid not in _WARNED_KEY_IDS and len(_WARNED_KEY_IDS) < _MAX_WARNED_KEY_IDS
    if first:
        _WARNED_KEY_IDS.add(kid)
    logger.log(
        logging.WARNING if first else logging.INFO,
        "a consent %s is sealed with key id %r, which this keyring does not hold: give every "
        "replica and the broker the same ENTRA_PASSTHROUGH_CONSENT_KEYS; when rotating, list a "
        "new key second everywhere before making it first.",
        what,
        kid,
    )


def _why(exc: BaseException | None) -> str:
    """What failed, for the operator's log: the library's own error's words (a store's
    "Redis is full (maxmemory) and refused the write": they never hold a secret), else the
    exception's type only (a third party's text may echo what it was sent)."""
    if isinstance(exc, EntraPassthroughError):
        return f"{type(exc).__name__}: {without_fix(exc)[:300]}"
    return type(exc).__name__


class _WriteFailed(Exception):
    """A store write of the callback (the binding, the grant) failed after the code was
    redeemed: it may have run all the same (a Redis timeout: Redis runs the command when it
    wakes), so the page must not say "nothing was stored". ``__cause__`` is the failure."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


#: Where the broker answers Entra's sign-in, under the path its app is served at: every
#: redirect URI ends in it.
CALLBACK_PATH = "/callback"

#: How long the callback re-reads the grant after its write failed (``_after_failed_write``),
#: and the pause between two tries of it.
_REREAD_SECONDS = 2.0
_REREAD_PAUSE = 0.1


def _unavailable(
    request: Request, what: str, exc: Exception, message: str, *, signout: bool = False
) -> Response:
    """A failure of the broker's own (the store down, Entra unreachable): logged by its type,
    answered with a typed 503 (``temporarily_unavailable``), never a crash page."""
    logger.warning("%s failed: %s", what, _why(exc))
    page = signout_error_response if signout else error_response
    return page(request, "temporarily_unavailable", message, status=503)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (404 for a path the broker does not serve, 405 for a method),
    with the headers of every broker page: not cached, not framed."""
    assert isinstance(exc, HTTPException)
    headers = {**security_headers(), **(exc.headers or {})}
    return PlainTextResponse(str(exc.detail), status_code=exc.status_code, headers=headers)


class ConsentBroker:
    """The consent broker. Mount ``broker.app`` in the agent app or serve it alone.

    It must share the ``TokenStore`` and the ``Keyring`` with the ``DelegatedConsent`` source
    that builds its links; ``ConsentBroker.for_source`` does that.

    >>> broker = ConsentBroker.for_source(
    ...     source, redirect_uris=["https://agent.contoso.com/consent/callback"])
    >>> app.mount("/consent", broker.app)
    """

    def __init__(
        self,
        *,
        store: TokenStore,
        keyring: Keyring,
        redirect_uris: Sequence[str],
        credential: AppCredential | None = None,
        client_id: str | None = None,
        tenant_id: str | None = None,
        client_secret: str | None = None,
        managed_identity: ManagedIdentity | None = None,
        authority_host: str | None = None,
        allowed_tenants: Sequence[str] | None = None,
        http_client: Any = None,
        max_workers: int = 4,
        state_lifetime: float = 600.0,
        post_logout_redirect_uri: str | None = None,
        _client: ConsentClient | None = None,
    ) -> None:
        if isinstance(redirect_uris, str):
            # One string would be checked character by character: "h" is no URL.
            raise ConfigurationError(
                "redirect_uris must be a list of URLs, not one string.",
                fix='pass redirect_uris=["https://agent.contoso.com/consent/callback"].',
            )
        if not redirect_uris:
            raise ConfigurationError("ConsentBroker needs at least one redirect URI.")
        for uri in redirect_uris:
            check_https_url(uri, what="redirect URI")
            if not urlsplit(uri).path.endswith(CALLBACK_PATH):
                # The broker answers the sign-in at <where it is served>/callback only: Entra
                # would post the code to a 404 and the user's sign-in would be lost, unexplained.
                raise ConfigurationError(
                    f"the redirect URI {uri!r} does not end in {CALLBACK_PATH}: the broker "
                    f"answers Entra's sign-in at {CALLBACK_PATH} under the path it is served "
                    "at, so Entra would post the user's code to a page that does not exist "
                    "(404).",
                    fix=f"register (and configure) a redirect URI ending in {CALLBACK_PATH}: "
                    f"https://<broker host>{CALLBACK_PATH} for the standalone broker, "
                    f"https://<host>/<mount path>{CALLBACK_PATH} when its app is mounted under "
                    "a path.",
                )
        state_lifetime = seconds(state_lifetime, what="state_lifetime", low=30, high=3600)
        self._owns_client = _client is None
        self.client = _client or ConsentClient(
            app_credential(
                "ConsentBroker",
                credential,
                client_id=client_id,
                tenant_id=tenant_id,
                client_secret=client_secret,
                managed_identity=managed_identity,
                authority_host=authority_host,
            ),
            http_client=http_client,
            max_workers=max_workers,
            allowed_tenants=allowed_tenants,
        )
        self.grants = GrantStore(store, keyring, client_id=self.client.client_id)
        self.keyring = keyring
        self.redirect_uris = tuple(redirect_uris)
        # The broker's public origins: its pages are served where its callbacks are, whatever
        # Host a front end passes on (Application Gateway, Front Door may rewrite it).
        self._own_origins = frozenset(_origin(uri) for uri in self.redirect_uris)
        self.state_lifetime = state_lifetime
        self.post_logout_redirect_uri = post_logout_redirect_uri
        authority = urlsplit(self.client.authority_host)
        # As browsers write an Origin: no default port (an authority host written with ":443"
        # must still match Entra's form post).
        self._authority_origin = _origin(self.client.authority_host)
        self._form_action = f"'self' {authority.scheme}://{authority.netloc}"
        if post_logout_redirect_uri is not None:
            # The sign-out form posts here, is redirected to Entra's logout, then to this URI:
            # browsers check ``form-action`` against every hop, so its origin is allowed too.
            self._form_action += " " + _logout_origin(post_logout_redirect_uri)
        self.app = Starlette(
            routes=[
                Route("/start", self._start, methods=["GET"]),
                Route(CALLBACK_PATH, self._callback, methods=["GET", "POST"]),
                Route("/signout", self._signout, methods=["GET"]),
                Route("/revoke", self._revoke, methods=["POST"]),
            ],
            exception_handlers={HTTPException: _http_error},
        )
        # Starlette answers "/start/" with a redirect to "/start" built from the request's Host
        # (a link's ticket sent to whatever host a front end passed on, in a cacheable 307):
        # the broker builds no URL from the request, so that path is a 404 like any other.
        self.app.router.redirect_slashes = False

    @classmethod
    def for_source(
        cls,
        source: DelegatedConsent,
        *,
        redirect_uris: Sequence[str],
        state_lifetime: float = 600.0,
        post_logout_redirect_uri: str | None = None,
    ) -> ConsentBroker:
        """A broker sharing ``source``'s app registration, credential, store and keyring."""
        return cls(
            credential=source.client.credential,
            store=source.grants.store,
            keyring=source.keyring,
            redirect_uris=redirect_uris,
            state_lifetime=state_lifetime,
            post_logout_redirect_uri=post_logout_redirect_uri,
            _client=source.client,
        )

    def close(self) -> None:
        """Stop the worker pool the broker created. A broker built by ``for_source`` shares the
        source's pool and leaves it running (closing it would cancel the source's refreshes)."""
        if self._owns_client:
            self.client.pool.close()

    # --- endpoints ---------------------------------------------------------------------------
    async def _start(self, request: Request) -> Response:
        try:
            params = parse_params(request.scope.get("query_string", b""))
            return await self._do_start(request, params)
        except BadRequest as exc:
            return error_response(request, exc.code, str(exc), next_step=exc.next_step)
        except Exception as exc:  # never a crash page; nothing was stored
            return _unavailable(
                request, "consent start", exc, "The sign-in could not be started; try again."
            )

    async def _do_start(self, request: Request, params: dict[str, str]) -> Response:
        unknown = set(params) - {"t", "redirect_uri"}
        if unknown:
            raise BadRequest("bad_request", "Unexpected parameters on the sign-in link.")
        redirect_uri = params.get("redirect_uri", self.redirect_uris[0])
        if redirect_uri not in self.redirect_uris:
            raise BadRequest(
                "redirect_uri_not_allowed", "The redirect URI is not on the broker's list."
            )
        try:
            ticket = LinkTicket.open(self.keyring, params.get("t", ""))
            scopes = check_scopes(ticket.scopes)
        except (KeyringError, ValueError, TypeError) as exc:
            # Its own next step: the page's default ("use the sign-in link again") would send
            # the user back to this same dead link.
            if isinstance(exc, ValueError) and str(exc) == "expired":  # ``LinkTicket.open``
                raise BadRequest(
                    "expired_link",
                    "This sign-in link has expired.",
                    next_step=_NEW_LINK_NEXT,
                ) from None
            _warn_unknown_key(self.keyring, params.get("t", ""), "sign-in link")
            raise BadRequest(
                "invalid_link",
                "This sign-in link is not valid (cut short or changed when it was copied, or "
                "not made by this agent).",
                next_step=_NEW_LINK_NEXT + " If you copied it, copy the whole link.",
            ) from None
        state = State.new(ticket.key_hash, lifetime=self.state_lifetime)
        signed_state = state.sign(self.keyring)
        # A verified user of an allow-listed tenant signs in at that tenant's authority (a
        # member of another tenant is unknown to the configured one: AADSTS50020); the code is
        # redeemed there too, and the grant refreshed there (``DelegatedConsent``).
        tenant = self.client.user_tenant(ticket.key_kind, ticket.tid)
        flow = await self.client.pool.run(
            lambda: self.client.initiate(
                scopes=scopes,
                redirect_uri=redirect_uri,
                state=signed_state,
                login_hint=ticket.login_hint,
                domain_hint=ticket.domain_hint,
                claims=ticket.claims,
                prompt=_prompt(ticket),
                tenant=tenant,
            )
        )
        secure = urlsplit(redirect_uri).scheme == "https"
        browser = secrets.token_urlsafe(24)
        await self.grants.put_flow(
            state.flow_id,
            {
                "msal": flow,
                "key_hash": ticket.key_hash,
                "key_kind": ticket.key_kind,
                "tid": ticket.tid,
                "oid": ticket.oid,
                "expected_tid": ticket.expected_tid,
                "expected_oid": ticket.expected_oid,
                "tenant": tenant,
                "scopes": list(scopes),
                "browser": _digest(browser),
            },
            ttl=self.state_lifetime,
        )
        response = RedirectResponse(
            str(flow["auth_uri"]), status_code=302, headers=security_headers()
        )
        # Binds the sign-in to this browser: a state lured into another browser (login CSRF)
        # arrives without the cookie. SameSite=None because the identity provider's form_post
        # is a cross-site POST; the cookie only proves "this browser started this flow" (the
        # callback also refuses a post whose Origin is another site: ``_do_callback``).
        # Over plain HTTP (loopback only, for development) the cookie is still ``Secure;
        # SameSite=None``: browsers treat loopback as a secure context and keep it, whereas a
        # ``Lax`` cookie never came back with the form post, so the flow could not complete.
        response.set_cookie(
            _cookie_name(state.flow_id, secure),
            browser,
            max_age=int(self.state_lifetime),
            path="/",
            secure=True,
            httponly=True,
            samesite="none",
        )
        return response

    async def _callback(self, request: Request) -> Response:
        if request.method == "HEAD":
            # Starlette serves HEAD on a GET route; a callback is never a HEAD (a no-cors
            # fetch from another page could send one with the user's cookie): no side effect.
            return Response(status_code=405, headers={"Allow": "GET, POST", **security_headers()})
        try:
            # response_mode=form_post: the identity provider's page POSTs code and state; a GET
            # with a query is accepted too (providers that ignore form_post), same checks.
            raw = (
                await read_form(request)
                if request.method == "POST"
                else request.scope.get("query_string", b"")
            )
            params = parse_params(raw, CALLBACK_PARAMS)
            return await self._do_callback(request, params)
        except (BadRequest, StateError) as exc:
            logger.info("consent callback rejected: %s", exc.code)
            if isinstance(exc, BadRequest):
                next_step = exc.next_step
            else:  # an expired state: a reload of a success page long after, too
                next_step = _STATE_USED_NEXT if exc.code == "state_expired" else None
            return error_response(request, exc.code, str(exc), next_step=next_step)
        except Exception as exc:
            return _unavailable(
                request,
                "consent callback",
                exc,
                "The sign-in could not be completed; start again.",
            )

    async def _do_callback(self, request: Request, params: dict[str, str]) -> Response:
        try:
            state = State.verify(self.keyring, params.get("state", ""))
        except StateError as exc:
            if exc.code == "invalid_state":
                _warn_unknown_key(self.keyring, params.get("state", ""), "sign-in state")
            raise
        # Every check that a third party can fail comes before the state is consumed: whoever
        # saw the state (it is in the sign-in URL) must not be able to cancel the user's
        # sign-in by sending it first from another browser.
        pending = await self.grants.peek_flow(state.flow_id)
        if pending is None:
            # A reload of the success page (or Back to the identity provider's page) sends the
            # completed sign-in's answer again: said so to the browser that completed it.
            reloaded = await self._completed(request, state)
            if reloaded is not None:
                return reloaded
        if pending is None or pending.get("key_hash") != state.key_hash:
            raise BadRequest("state_used", _STATE_USED, next_step=_STATE_USED_NEXT)
        secure = urlsplit(str(pending["msal"].get("redirect_uri", ""))).scheme == "https"
        if request.method != "POST" and request.headers.get(
            "sec-fetch-site", "same-origin"
        ) not in ("same-origin", "none"):
            # The broker asks for response_mode=form_post, so Entra never answers it with a GET
            # (nor a HEAD, which Starlette serves on a GET route); a browser sends no Origin on
            # a navigation or a no-cors fetch, but says where it came from here: a page
            # elsewhere leading the user's browser to a callback with a state it saw, and a code
            # of its own (login CSRF) or an error (spending the user's sign-in), is refused like
            # its POST.
            raise BadRequest(
                "cross_site_callback",
                "This sign-in answer was not sent by the identity provider; open the link from "
                "the chat again.",
            )
        origin = request.headers.get("origin")
        if origin and origin != "null" and _origin(origin) != self._authority_origin:
            # The binding cookie is SameSite=None (the identity provider's form post is
            # cross-site), so a page elsewhere could post a state it saw, with a code of its
            # own, from the user's browser (login CSRF): a browser that names the page a POST
            # came from must name the identity provider.
            raise BadRequest(
                "cross_site_callback",
                "This sign-in answer was not sent by the identity provider; open the link from "
                "the chat again.",
            )
        cookie = request.cookies.get(_cookie_name(state.flow_id, secure), "")
        if not cookie or not hmac.compare_digest(_digest(cookie), str(pending["browser"])):
            raise BadRequest(
                "browser_mismatch",
                "This sign-in was started in another browser; open the link from the chat "
                "in this browser.",
            )
        ttl = max(state.exp - time.time(), 1.0) + 60.0
        if not await self.grants.mark_used(state.flow_id, ttl=ttl):
            raise BadRequest("state_used", _STATE_USED, next_step=_STATE_USED_NEXT)
        flow = await self.grants.take_flow(state.flow_id)  # atomic: one callback wins
        if flow is None or flow != pending:
            raise BadRequest("state_used", _STATE_USED, next_step=_STATE_USED_NEXT)
        if "error" in params:
            code = "".join(c for c in params["error"][:64] if c.isalnum() or c == "_")
            # Entra's description starts with the AADSTS code (90094 admin consent needed,
            # 650057 permission not configured, 65004 declined...): shown decoded, from the
            # library's own table; nothing else of the description reaches the page.
            found = _AADSTS_AT_START.match(params.get("error_description", "")[:16])
            if found is not None:
                entry = describe(int(found.group(1)))
                raise BadRequest(
                    "sign_in_refused",
                    f"The identity provider answered {code!r}: {entry} - {entry.meaning}. "
                    f"Fix: {self._filled_in(entry.fix, flow.get('tenant'))}.",
                    # Only an administrator can change it: the same link fails the same way
                    # until then (the default next step says to use it again).
                    next_step=_ADMIN_NEXT if entry.code in _ADMIN_ONLY_CODES else None,
                )
            raise BadRequest("sign_in_refused", f"The identity provider answered {code!r}.")
        if not params.get("code"):
            raise BadRequest("bad_request", "The callback has no authorization code.")
        answer = await self._redeem(flow, params)
        claims = await self._verified_identity(answer, flow)
        refresh_token = answer.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            raise BadRequest(
                "no_refresh_token",
                "The identity provider issued no refresh token (offline_access missing).",
            )
        now = time.time()
        upn = claims.get("preferred_username") or claims.get("upn")
        grant = StoredGrant(
            refresh_token=refresh_token,
            scopes=tuple(flow["scopes"]),
            tid=str(claims["tid"]),
            oid=str(claims["oid"]),
            upn=upn if isinstance(upn, str) else None,
            key_kind=flow["key_kind"],
            created=now,
            updated=now,
        )
        # A write below that fails may have run all the same (a Redis timeout): its page never
        # says "nothing was stored" (``_after_failed_write``).
        try:
            await self._bind(flow, claims)
            try:
                await self.grants.put_grant(state.key_hash, grant)
            except Exception as exc:
                raise _WriteFailed("grant") from exc
        except _WriteFailed as failed:
            return await self._after_failed_write(request, state, grant, failed, secure, ttl)
        logger.info("consent stored for a user of tenant %s", grant.tid)
        return await self._signed_in(request, state, grant, secure, ttl)

    def _filled_in(self, fix: str, tenant: str | None) -> str:
        """A fix from the AADSTS table with this broker's own values in place of its
        placeholders: the consent app's client id, and the admin consent URL at its authority
        host for the tenant signed in to (the user's own, when verified: ``user_tenant``)."""
        tenant = tenant or self.client.tenant_id
        return fix.replace(
            "https://login.microsoftonline.com/<tenant>/adminconsent",
            f"{self.client.authority_host}/{tenant}/adminconsent",
        ).replace("<client app id>", self.client.client_id)

    async def _after_failed_write(
        self,
        request: Request,
        state: State,
        grant: StoredGrant,
        failed: _WriteFailed,
        secure: bool,
        ttl: float,
    ) -> Response:
        """The answer after a write of the callback failed: the success page if a re-read
        (bounded) finds the grant this sign-in wrote, else 503 ``store_outcome_unknown`` (it may
        have been saved), with a sign-out form for the key."""
        cause = _why(failed.__cause__)
        error = failed.__cause__
        refused = isinstance(error, SourceUnavailable) and error.failure == STORE_REFUSED
        found: tuple[StoredGrant, str] | None = None
        reread = False
        if failed.what == "grant":  # a binding's failure never reached the grant's write
            # Read again until it answers, for up to _REREAD_SECONDS in all: a store that
            # stalled may wake during it (and has run the write), and one try of the store's
            # own command timeout can end before it does.
            last: BaseException | None = None
            try:
                async with asyncio.timeout(_REREAD_SECONDS):
                    while not reread:
                        try:
                            found = await self.grants.get_grant(state.key_hash)
                            reread = True
                        except Exception as exc:
                            last = exc
                            await asyncio.sleep(_REREAD_PAUSE)
            except TimeoutError:
                why = _why(last) if last is not None else "no answer in time"
                logger.warning("consent grant re-read failed: %s", why)
        if found is not None and _same_write(found[0], grant):
            logger.warning(
                "consent grant write failed (%s), but a re-read found it: consent stored for a "
                "user of tenant %s",
                cause,
                grant.tid,
            )
            return await self._signed_in(request, state, grant, secure, ttl)
        if refused and (reread or failed.what == "binding"):
            # The store answered that it refused the write (full, credentials refused), and a
            # re-read does not find it: this sign-in was not saved. (A refusal can answer a
            # client's resend of a write whose first reply was lost: only the re-read tells;
            # a binding written before only says which account the chat user signed in as.)
            logger.warning(
                "consent %s write refused by the store after the code was redeemed: %s",
                failed.what,
                cause,
            )
            return error_response(
                request,
                "store_refused",
                "You signed in at the identity provider, but the agent's store refused to save "
                "the sign-in, so it was not saved.",
                status=503,
                next_step="Use the sign-in link from the chat again later; the agent's "
                "operator must fix its store (its log says why).",
                stored_note="Your sign-in was not saved.",
            )
        logger.warning(
            "consent %s write failed (%s) after the code was redeemed: it may have been "
            "stored; answered store_outcome_unknown",
            failed.what,
            cause,
        )
        return outcome_unknown_response(
            request,
            revoke_ticket=seal_revoke_ticket(self.keyring, state.key_hash, lifetime=3600),
            revoke_path="revoke",
            form_action=self._form_action,
        )

    async def _signed_in(
        self, request: Request, state: State, grant: StoredGrant, secure: bool, ttl: float
    ) -> Response:
        """The success page of a stored grant, with its completion record and cookie."""
        response = success_response(
            request,
            who=grant.upn,
            revoke_ticket=seal_revoke_ticket(self.keyring, state.key_hash, lifetime=3600),
            revoke_path="revoke",
            form_action=self._form_action,
        )
        # The browser's cookie now proves "this browser completed this sign-in" (a new value:
        # the one that started it is spent), for as long as the state's used-marker lives: a
        # reload is then answered "already signed in" (``_completed``), to this browser only.
        done = secrets.token_urlsafe(24)
        try:
            await self.grants.put_flow(
                _done_id(state.flow_id),
                {"browser": _digest(done), "key_hash": state.key_hash, "upn": grant.upn},
                ttl=ttl,
            )
        except Exception as exc:  # the grant is stored: a reload is merely not recognised
            logger.warning("consent completion record not written: %s", type(exc).__name__)
        response.set_cookie(
            _cookie_name(state.flow_id, secure),
            done,
            max_age=int(ttl),
            path="/",
            secure=True,
            httponly=True,
            samesite="none",
        )
        return response

    async def _completed(self, request: Request, state: State) -> Response | None:
        """The page for a completed sign-in's answer sent again by the browser that completed
        it (its cookie matches the completion record), else ``None``. Nothing is redeemed or
        stored: the answer's code is not even read."""
        done = await self.grants.peek_flow(_done_id(state.flow_id))
        if done is None or done.get("key_hash") != state.key_hash:
            return None
        cookie = request.cookies.get(_cookie_name(state.flow_id, True)) or request.cookies.get(
            _cookie_name(state.flow_id, False), ""
        )
        if not cookie or not hmac.compare_digest(_digest(cookie), str(done.get("browser"))):
            return None
        if await self.grants.get_grant(state.key_hash) is None:
            return signed_out_since_response(request)
        upn = done.get("upn")
        return success_response(
            request,
            who=upn if isinstance(upn, str) else None,
            revoke_ticket=seal_revoke_ticket(self.keyring, state.key_hash, lifetime=3600),
            revoke_path="revoke",
            form_action=self._form_action,
            reloaded=True,
        )

    async def _redeem(self, flow: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        response = {
            k: v
            for k, v in params.items()
            if k in ("code", "state", "session_state", "client_info")
        }
        # At the authority the sign-in went to (``_do_start``: the user's own tenant, when
        # verified and allowed); the configured tenant's needs no argument.
        tenant = flow.get("tenant")
        redeem = self.client.redeem
        if tenant is not None:
            redeem = functools.partial(self.client.redeem, tenant=str(tenant))
        try:
            answer = await self.client.pool.run(redeem, flow["msal"], response)
        except json.JSONDecodeError:
            # The token endpoint answered with no JSON (a proxy's or gateway's page, a body
            # cut short): the identity provider's side, not this sign-in's: 503, start again
            # later; "does not match this sign-in" sent the user looking at the wrong thing.
            raise _TokenAnswerNotJson from None
        except (ValueError, RuntimeError):
            # MSAL: state mismatch (ValueError), nonce or id token claims mismatch
            # (RuntimeError, IdTokenError). Their messages echo values: not shown, not logged.
            raise BadRequest(
                "id_token_invalid", "The sign-in answer does not match this sign-in."
            ) from None
        if "error" in answer or "id_token" not in answer:
            raise _redeem_refused(answer)
        return dict(answer)

    async def _verified_identity(
        self, answer: dict[str, Any], flow: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            claims = await self.client.pool.run(
                lambda: self.client.verify_id_token(
                    str(answer["id_token"]),
                    flow_nonce=str(flow["msal"]["nonce"]),
                    tenant=flow.get("tenant"),
                )
            )
        except IdTokenError as exc:
            raise BadRequest("id_token_invalid", f"The sign-in is not acceptable: {exc}.") from None
        if flow["key_kind"] == "entra":
            # The link was minted for a verified tid+oid: only that user may complete it.
            same = claims["tid"] == flow.get("tid") and claims["oid"] == flow.get("oid")
            key = UserKey.from_verified_claims(claims)
            if not same or key is None or key.hashed != flow["key_hash"]:
                # A guest's account in another tenant (its home) is another user to Entra.
                elsewhere = (
                    " (in another organisation: sign in to the organisation the agent "
                    "asked for, the one you use the chat with)"
                    if str(claims["tid"]).lower() != str(flow.get("tid")).lower()
                    else ""
                )
                raise BadRequest(
                    "user_mismatch",
                    "You signed in as a different user than the one the agent asked for"
                    f"{elsewhere}.",
                )
        # A platform key whose request carried a token naming the user (e.g. Foundry's token
        # for https://ai.azure.com): only that account may complete the sign-in, so a forwarded
        # or phished link cannot bind this chat user to someone else's account.
        elif flow.get("expected_oid") and (claims["tid"], claims["oid"]) != (
            flow.get("expected_tid"),
            flow["expected_oid"],
        ):
            raise BadRequest(
                "user_mismatch",
                "You signed in as a different account than the one using the chat; sign in "
                "with the account you use in the chat.",
            )
        return claims

    async def _bind(self, flow: dict[str, Any], claims: dict[str, Any]) -> None:
        if flow["key_kind"] != "platform":
            return
        tid, oid = str(claims["tid"]), str(claims["oid"])
        bound = await self.grants.get_binding(flow["key_hash"])
        if bound is None:
            try:
                if await self.grants.bind(flow["key_hash"], tid, oid):
                    return
            except Exception as exc:  # the binding may be written: not "nothing was stored"
                raise _WriteFailed("binding") from exc
        bound = bound or await self.grants.get_binding(flow["key_hash"])
        if bound is None:  # it exists (bind refused) but does not open: fail closed, say why
            raise BadRequest(
                "binding_unreadable",
                "This chat user's earlier sign-in is sealed with a key this service does not "
                "hold, so it cannot check that you are the same account. Ask the "
                "administrator to give every replica and the broker the same "
                "ENTRA_PASSTHROUGH_CONSENT_KEYS (the service's log names the key).",
            )
        if bound != (tid, oid):
            raise BadRequest(
                "user_mismatch",
                "This chat user already consented as a different account; sign in with that "
                "account.",
            )

    async def _signout(self, request: Request) -> Response:
        try:
            params = parse_params(request.scope.get("query_string", b""))
            open_revoke_ticket(self.keyring, params.get("t", ""))
        except (BadRequest, KeyringError, ValueError, KeyError, TypeError) as exc:
            return _signout_refused(request, exc, "link")
        return confirm_revoke_response(
            ticket=params["t"], revoke_path="revoke", form_action=self._form_action
        )

    async def _revoke(self, request: Request) -> Response:
        # CSRF: the form carries a sealed ticket only the user's own pages hold, and a
        # cross-site POST is refused outright when the browser says so.
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return signout_error_response(request, "csrf", _CROSS_SITE_SIGNOUT)
        origin = request.headers.get("origin")
        if (
            origin
            and origin != "null"
            and _origin(origin) not in self._own_origins
            and _netloc(origin) != request.url.netloc
        ):
            return signout_error_response(request, "csrf", _CROSS_SITE_SIGNOUT)
        try:
            params = parse_params(await read_form(request))
            key_hash = open_revoke_ticket(self.keyring, params.get("t", ""))
        except (BadRequest, KeyringError, ValueError, KeyError, TypeError) as exc:
            return _signout_refused(request, exc, "page")
        try:
            deleted = await self.grants.delete_grant(key_hash)
        except Exception as exc:  # the store is down: a typed answer, never a crash page
            return _unavailable(
                request,
                "consent revoke",
                exc,
                "The sign-out could not be completed (the service is unavailable); try again.",
                signout=True,
            )
        logger.info("consent revoked (grant existed: %s)", deleted)
        if wants_json(request):
            return JSONResponse(
                {"status": "ok", "revoked": bool(deleted)}, headers=security_headers()
            )
        return RedirectResponse(
            self.client.logout_url(self.post_logout_redirect_uri),
            status_code=303,
            headers=security_headers(),
        )


#: AADSTS codes of a code redemption that only the operator can fix (the consent app's
#: credential or registration): every sign-in fails the same way, so the user is told to tell
#: the operator, not to sign in again.
_OPERATOR_CODES = frozenset(
    {
        7000215,  # wrong client secret
        7000222,  # expired client secret
        7000218,  # no client credential
        700016,  # app not found in the tenant
        700027,  # client assertion signature / certificate
        700024,  # client assertion expired
        700025,  # registered as a public client
        7000112,  # app disabled
        50011,  # redirect URI not registered
        500113,  # no reply address registered
        90002,  # tenant not found
        900023,  # tenant id malformed
        50148,  # PKCE verifier missing
    }
)
#: The code itself was spent or too old: a new sign-in gets a new one.
_CODE_SPENT = frozenset({54005, 70008})


def _same_write(found: StoredGrant, written: StoredGrant) -> bool:
    """Whether the grant read back is the one this callback wrote: its refresh token (compared
    in constant time), or its creation time and user (a replica's refresh since then rotated
    the refresh token and kept the rest)."""
    if hmac.compare_digest(found.refresh_token.encode(), written.refresh_token.encode()):
        return True
    return found.created == written.created and (found.tid, found.oid) == (
        written.tid,
        written.oid,
    )


def _redeem_refused(answer: dict[str, Any]) -> BadRequest:
    """The refusal of a code redemption, decoded with the AADSTS table (as an authorize error
    is): the page says what it means and what to do; the WARNING log line gives the operator
    the code, the correlation id and the fix. The error body is the endpoint's text (a gateway
    may echo the request form, client_secret included): only a short identifier, the AADSTS
    code and a request id are read from it."""
    code = first_code(answer)
    error = "no id_token" if "error" not in answer else safe_word(answer["error"])
    error = error or "an error the page does not show"
    suberror = safe_word(answer.get("suberror"))
    correlation_id = safe_request_id(answer.get("correlation_id"))
    entry = describe(code) if code is not None else None
    named = f"{entry}: {entry.meaning}" if entry is not None else error
    if suberror:
        named += f" (suberror {suberror})"
    fix = (
        entry.fix
        if entry is not None
        else "look the correlation id up in the tenant's sign-in logs; check the consent "
        "app's client id, tenant and credential"
    )
    logger.warning(
        "consent code redemption refused: %s (error %s, correlation_id %s). Fix: %s",
        named,
        error,
        correlation_id or "none",
        fix,
    )
    ids = f" (correlation id {correlation_id})" if correlation_id else ""
    if code in _OPERATOR_CODES or (
        code is None and error in ("invalid_client", "unauthorized_client")
    ):
        return BadRequest(
            "broker_misconfigured",
            "This agent's sign-in is misconfigured: the identity provider refused the agent's "
            f"own registration or credentials. {named}. No sign-in can complete until its "
            "operator fixes it.",
            next_step=f"Signing in again will not help: tell the agent's operator{ids}.",
        )
    if code in _CODE_SPENT:
        return BadRequest(
            "redeem_failed",
            f"This sign-in's authorization code was already used or has expired ({named}).",
        )
    shown = f"{named}. Fix: {fix}" if entry is not None else named
    return BadRequest(
        "redeem_failed",
        f"The authorization code could not be redeemed: {shown}.",
        next_step="Go back to the chat and use the sign-in link again; if this page comes "
        f"back, tell the agent's operator{ids}.",
    )


_CROSS_SITE_SIGNOUT = "Cross-site sign-out requests are refused."
_NEW_LINK_NEXT = "Go back to the chat and ask the agent again: it gives you a new sign-in link."


def _signout_refused(request: Request, exc: Exception, what: str) -> Response:
    """A sign-out ticket that does not open: expired (``open_revoke_ticket``'s ``ValueError``
    "expired") or not valid (damaged, sealed with a key this broker does not hold, malformed)."""
    if isinstance(exc, ValueError) and str(exc) == "expired":
        return signout_error_response(request, "expired_link", f"This sign-out {what} has expired.")
    return signout_error_response(
        request,
        "invalid_link",
        f"This sign-out {what} is not valid (damaged, or not made by this agent).",
    )


def _origin(uri: str) -> str:
    """``scheme://host[:port]`` of a URL or an ``Origin`` header, as browsers serialise an
    origin: lower case, no userinfo, no trailing dot, the scheme's default port left out
    (``https://x:443/callback`` is the origin ``https://x``). ``""`` for what is not a URL."""
    try:
        parts = urlsplit(uri.strip())
        host = (parts.hostname or "").rstrip(".")
        port = parts.port
    except ValueError:
        return ""
    scheme = parts.scheme.lower()
    if not scheme or not host:
        return ""
    if ":" in host:
        host = f"[{host}]"
    if port is None or (scheme, port) in (("https", 443), ("http", 80)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _netloc(origin: str) -> str | None:
    """The ``host[:port]`` of an ``Origin`` header, ``None`` for one urllib cannot split (an
    unclosed IPv6 bracket such as ``http://[::1`` raised ``ValueError`` here: a 500, not the
    400 csrf page every other bad sign-out request gets)."""
    try:
        return urlsplit(origin).netloc
    except ValueError:
        return None


def _logout_origin(uri: str) -> str:
    """The origin of ``post_logout_redirect_uri``, for the pages' ``form-action``; HTTPS (HTTP
    only on loopback), a plain host[:port], else ``ConfigurationError``."""
    # Shown as its origin at most: user info, a query or a fragment may hold a secret, and
    # another scheme's "host" may be anything pasted there.
    shown = shown_url(uri, path=False)
    if shown is not None and not shown.startswith(("https://", "http://")):
        shown = None
    parts = urlsplit(uri) if shown else None
    if (
        parts is None
        or not (
            parts.scheme == "https"
            or (parts.scheme == "http" and is_loopback(parts.hostname or ""))
        )
        or not re.fullmatch(
            r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?", parts.netloc
        )
    ):
        raise ConfigurationError(
            f"post_logout_redirect_uri{f' ({shown})' if shown else ''} must be an HTTPS URL "
            "(HTTP only on loopback) with a plain host name and no user name or password.",
            fix="set it to the page users land on after signing out, e.g. "
            "'https://agent.contoso.com/signed-out'",
        )
    return f"{parts.scheme}://{parts.netloc}"
