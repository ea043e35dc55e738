"""``OnBehalfOf``: exchange the caller's token for a token to the target, as the same user."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .. import _env
from .._aadsts import describe
from .._checks import TENANTLESS, caller_tenant, redirect_uri, registration, whole_number
from .._credential import AppCredential, app_credential
from .._errors import (
    GUID,
    AppOnlyAssertion,
    AssertionAudienceMismatch,
    AssertionExpired,
    AssertionMalformed,
    AssertionNotUsable,
    ConfigurationError,
    EntraError,
    IdTokenAssertion,
    TenantNotAllowed,
    TokenAcquisitionError,
    is_consent_required,
)
from .._http import (
    SHARED_THROTTLE,
    Timeouts,
    TransportFailure,
    check_timeouts,
    deadline,
    trust_error,
)
from .._jwt import fingerprint
from .._msal import (
    DEFAULT_MAX_WORKERS,
    PUBLIC_AUTHORITY_HOST,
    AppPool,
    WorkerPool,
    client_credential,
    confidential_app,
    http_session,
)
from .._types import IdentityKind, TokenRequest, TokenResult
from .._verify import names
from ._base import result_from_msal, unreachable

if TYPE_CHECKING:
    from .._caller import Caller
    from .managed_identity import ManagedIdentity

logger = logging.getLogger("entra_passthrough.obo")

ConsentLink = Callable[[TokenRequest], "str | None"]

#: Entra's refusals of the caller's token itself: its signature, issuer or tenant (50013), its
#: form (50027), its audience (500131), its expiry (500133), an app-only token (7000114). The
#: same token is refused every time, whatever the scope; only a new token from the user helps.
ASSERTION_REFUSALS = frozenset({50013, 50027, 500131, 500133, 7000114, 240002})

#: The clock skew Entra allows on an assertion's ``nbf`` (five minutes).
NBF_SKEW = 300.0


class RefusedAssertions:
    """The caller tokens Entra refused for what they are (``ASSERTION_REFUSALS``), by tenant
    and sha256, until the token expires and for at most ``hold`` seconds.

    Without it every request carrying such a token (an altered or foreign one, which an agent
    that does not verify its callers accepts) is one POST to Entra: a caller that repeats it
    gets the app throttled for every user. A consent or interaction answer is never held (the
    user can fix those with the same token). Bounded: the oldest entries go first.
    """

    def __init__(
        self,
        *,
        hold: float = 300.0,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hold = hold
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._refused: OrderedDict[tuple[str, str], _Refusal] = OrderedDict()

    def __len__(self) -> int:
        return len(self._refused)

    def remember(self, tenant: str, digest: str, exp: float, error: TokenAcquisitionError) -> None:
        if error.code is None or error.code.code not in ASSERTION_REFUSALS:
            return
        if type(error) not in (AssertionNotUsable, EntraError):
            return  # a consent or an interaction (a gateway's odd body): the user can fix it
        now = self._clock()
        until = min(exp, now + self.hold)
        if until <= now:
            return
        # What the refusal said, not the exception: its traceback would keep the frames (the
        # MSAL app, the answer) alive for as long as the entry.
        held = _Refusal(now, until, type(error), error.error, error.suberror)
        held.correlation_id, held.trace_id = error.correlation_id, error.trace_id
        held.code = error.code.code
        with self._lock:
            self._refused[(tenant, digest)] = held
            self._refused.move_to_end((tenant, digest))
            while len(self._refused) > self.max_entries:
                self._refused.popitem(last=False)

    def check(self, tenant: str, digest: str, request: TokenRequest, source: str) -> None:
        """Raise the remembered refusal again (nothing is sent), if there is one."""
        key = (tenant, digest)
        held = self._refused.get(key)
        if held is None:
            return
        now = self._clock()
        if now >= held.until:
            with self._lock:
                if self._refused.get(key) is held:
                    del self._refused[key]
            return
        code = describe(held.code)
        raise held.kind(
            f"Entra refused this same token {max(0.0, now - held.at):.0f} s ago: {code}: "
            f"{code.meaning}. It was not sent again: Entra refuses it every time, and each "
            "POST counts against the app's throttling limits. The caller needs a new token",
            source=source,
            scopes=request.scopes,
            aadsts=held.code,
            error=held.error,
            suberror=held.suberror,
            correlation_id=held.correlation_id,
            trace_id=held.trace_id,
        )


class _Refusal:
    """One held refusal: when, until when, and what Entra said (never the exception)."""

    __slots__ = ("at", "code", "correlation_id", "error", "kind", "suberror", "trace_id", "until")

    def __init__(
        self,
        at: float,
        until: float,
        kind: type[TokenAcquisitionError],
        error: str | None,
        suberror: str | None,
    ) -> None:
        self.at = at
        self.until = until
        self.kind = kind
        self.error = error
        self.suberror = suberror
        self.code = 0
        self.correlation_id: str | None = None
        self.trace_id: str | None = None


class OnBehalfOf:
    """Entra on-behalf-of: the caller's token (issued for *this* app) -> a token for the target.

    The result is the user's (``kind=user``). The assertion is checked before anything is sent
    (audience, expiry, app-only, tenant allow-list); MSAL runs in a bounded worker pool with its
    token and HTTP caches neutralised. The app and its client credential: ``credential=
    AppCredential(...)`` (any credential), or the simple path ``client_id=``, ``tenant_id=``
    and ``client_secret=`` or ``managed_identity=`` (``authority_host=`` for another cloud).

    >>> obo = OnBehalfOf(client_id=APP_ID, tenant_id=TENANT, client_secret=SECRET)
    >>> chain = TokenChain([obo])
    >>> with bind_caller(token=user_token_for_app):
    ...     result = chain.get_token(["api://mcp-app/.default"])
    """

    kind = IdentityKind.USER

    def __init__(
        self,
        *,
        credential: AppCredential | None = None,
        client_id: str | None = None,
        tenant_id: str | None = None,
        client_secret: str | None = None,
        managed_identity: ManagedIdentity | None = None,
        authority_host: str | None = None,
        allowed_tenants: Sequence[str] | None = None,
        accepted_audiences: Sequence[str] = (),
        http_client: Any = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_tenants: int = 64,
        timeouts: Timeouts | None = None,
        consent_link: ConsentLink | None = None,
        consent_redirect_uri: str | None = None,
        name: str = "obo",
    ) -> None:
        # Both were used only by the first request, where a wrong type became an "outage"
        # (SourceUnavailable) for every user; refused at build, before any thread starts.
        timeouts = check_timeouts(timeouts)
        whole_number(
            max_tenants,
            what="max_tenants",
            low=1,
            fix="pass max_tenants= how many tenants' MSAL applications to keep, at least 1 "
            "(default 64).",
        )
        app = app_credential(
            "OnBehalfOf",
            credential,
            client_id=client_id,
            tenant_id=tenant_id,
            client_secret=client_secret,
            managed_identity=managed_identity,
            authority_host=authority_host,
        )
        # A tenant no caller's tid can equal (common, braces, a path), a client id of another
        # type or with a space around it, an empty secret: each was taken here and refused
        # every caller at the first request (or went to Entra for AADSTS7000218).
        registration(
            "OnBehalfOf",
            app,
            tenant_variable="AZURE_TENANT_ID",
            client_variable="ENTRA_PASSTHROUGH_CLIENT_ID",
            secret_variable="ENTRA_PASSTHROUGH_CLIENT_SECRET",
            tenantless=bool(allowed_tenants),  # multi-tenant: each caller's own tenant
        )
        self.name = name
        self.credential = app
        self.client_id = client_id = app.client_id
        self.tenant_id = tenant_id = app.tenant_id
        self.authority_host = app.authority_host
        # Compared without regard to case (GUIDs and identifier URIs are case-insensitive in
        # Entra, which writes them in lower case): an id configured in upper case must not
        # refuse every caller.
        tenants, audiences = name_lists(allowed_tenants, accepted_audiences)
        # Each is compared with the callers' tid claims (GUIDs): a domain, a GUID in braces, a
        # URL was taken here and refused every caller (TenantNotAllowed).
        check_caller_tenants("OnBehalfOf", tenant_id, tenants)
        if consent_redirect_uri is not None:
            # Any text was put in every consent link: the user met Entra's refusal.
            redirect_uri(
                consent_redirect_uri,
                what="consent_redirect_uri",
                variable="ENTRA_PASSTHROUGH_CONSENT_REDIRECT_URI",
                owner="OnBehalfOf",
            )
        self.allowed_tenants = frozenset(t.lower() for t in tenants or (tenant_id,))
        self.accepted_audiences = audiences_for(client_id, audiences)
        self.consent_redirect_uri = consent_redirect_uri
        self._consent_link = consent_link
        self._credential = client_credential(app)
        self._http_client = http_client
        self.timeouts = Timeouts() if timeouts is None else timeouts
        # Retry-After per authority: shared by every source of the process (_http.SHARED_THROTTLE)
        self._throttle = SHARED_THROTTLE
        # MSAL builds its own session when none is given; close() closes sessions we own.
        self._owns_http = http_client is None
        self._created_http = False  # from_env built http_client itself (CA file)
        self._pool = WorkerPool(
            max_workers=max_workers, name=f"entra-{name}", default=DEFAULT_MAX_WORKERS
        )
        self._pool.start()  # at construction (start-up), not inside the first burst
        self._apps = AppPool(self._build_app, max_apps=max_tenants, after_wait=self._pool.respace)
        self.refused = RefusedAssertions()

    def __repr__(self) -> str:
        return (
            f"OnBehalfOf(name={self.name!r}, client_id={self.client_id!r}, "
            f"tenant_id={self.tenant_id!r}, credential={self.credential.kind}, "
            f"allowed_tenants={sorted(self.allowed_tenants)!r})"
        )

    def _build_app(self, tenant: str, capabilities: tuple[str, ...]) -> Any:
        # Runs in a worker thread: MSAL fetches the tenant's discovery document here.
        return confidential_app(
            self.client_id,
            credential=self._credential,
            authority=f"{self.authority_host}/{tenant}",
            http_client=self._http_client,
            client_capabilities=capabilities,
            timeouts=self.timeouts,
            throttle=self._throttle,
        )

    def msal_apps(self) -> list[Any]:
        """The pooled MSAL applications (diagnostics and tests)."""
        return self._apps.apps()

    def check_client_credential(self, scopes: Sequence[str]) -> dict[str, Any]:
        """Diagnostics (``entra-passthrough doctor``): MSAL's answer to a client-credentials
        request for ``scopes`` with this app's credential in its home tenant, on an MSAL
        application of its own (nothing pooled or cached here; the caller discards any token).
        Entra must authenticate the app to answer with a token, so it proves the credential."""
        app = self._build_app(self.tenant_id, ())
        try:
            response: dict[str, Any] = app.acquire_token_for_client(list(scopes))
        finally:
            if self._owns_http:
                app.http_client.close()
        return response

    def close(self) -> None:
        """Stop the worker threads and close the HTTP sessions this source owns (idempotent)."""
        self._pool.close()
        if self._owns_http:
            for app in self._apps.apps():
                app.http_client.close()
        elif self._http_client is not None and self._created_http:
            self._http_client.close()

    # -- TokenSource ----------------------------------------

    def explain(self, request: TokenRequest) -> str:
        if request.caller is None:
            return "no active caller"
        return "the caller presented no assertion"

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        return self.caller_partition(request.caller)

    def caller_partition(self, caller: Caller | None) -> tuple[str, ...] | None:
        """``cache_partition`` from the caller alone (the chain's hit path builds no request)."""
        if caller is None or not caller.presented:
            return None
        # The assertion's hash alone says whose token this is (its tenant is part of the
        # assertion), so a cache hit never decodes the caller's claims: a new Caller per
        # request costs a hash, not a JSON parse. The claims are read (and checked by
        # preflight) only when a token has to be acquired.
        return (self.client_id, caller.assertion_sha256 or "-")

    def preflight(self, request: TokenRequest) -> tuple[str, str, float]:
        """(tenant, assertion, assertion exp), or the typed error; no I/O."""
        caller = request.caller
        scopes = request.scopes
        refused = scope_refusal(scopes, own_client_id=self.client_id)
        if refused is not None:
            code, why = refused
            raise EntraError(
                f"{why}: Entra would answer AADSTS{code}. Nothing was sent.",
                aadsts=code,
                source=self.name,
                scopes=scopes,
            )
        check_no_reserved_scopes(scopes, source=self.name)
        assert caller is not None
        claims = caller.claims
        assertion = caller.assertion
        if not assertion or claims is None:
            raise AssertionMalformed(
                reason=caller.decode_error or "empty bearer", source=self.name, scopes=scopes
            )
        if claims.aud is None or claims.aud.lower() not in self.accepted_audiences:
            raise AssertionAudienceMismatch(
                audience=claims.aud,
                expected=sorted(self.accepted_audiences),
                source=self.name,
                scopes=scopes,
            )
        if claims.exp is None:
            raise AssertionMalformed(reason="no exp claim", source=self.name, scopes=scopes)
        now = time.time()
        if claims.exp <= now:
            raise AssertionExpired(expired_at=claims.exp, source=self.name, scopes=scopes)
        if claims.nbf is not None and claims.nbf > now + NBF_SKEW:
            # Not valid yet beyond the skew Entra allows: it answers AADSTS500133, which the
            # table would explain as "expired"; a clock is wrong, not the token's age.
            raise AssertionNotUsable(
                f"The caller's token is not valid yet: its nbf is {claims.nbf - now:.0f} s "
                "ahead of this machine's clock, more than the 5 minutes of skew Entra allows; "
                "Entra would answer AADSTS500133. Nothing was sent.",
                aadsts=500133,
                source=self.name,
                scopes=scopes,
                fix="check the clocks: this machine's (NTP) and the one that issued or "
                "forwarded the token; the token is usable once its nbf has passed",
            )
        if claims.is_id_token:
            raise IdTokenAssertion(source=self.name, scopes=scopes)
        if claims.is_app_only:
            raise AppOnlyAssertion(source=self.name, scopes=scopes)
        if claims.tid is None or claims.tid.lower() not in self.allowed_tenants:
            raise TenantNotAllowed(
                tenant=claims.tid,
                allowed=sorted(self.allowed_tenants),
                source=self.name,
                scopes=scopes,
            )
        return claims.tid, assertion, claims.exp

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        if self.cache_partition(request) is None:
            return None
        tenant, assertion, exp = self.preflight(request)
        self._check_refused(request, tenant)
        with self._pool.exchanges():  # in the caller's thread: close() cuts it too
            return self._exchange(request, tenant, assertion, exp)

    def _check_refused(self, request: TokenRequest, tenant: str) -> None:
        caller = request.caller
        digest = caller.assertion_sha256 if caller is not None else None
        if digest is not None:
            self.refused.check(tenant, digest, request, self.name)

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        if self.cache_partition(request) is None:
            return None
        # The slot first, then the checks: a burst of new users decodes each caller's claims
        # when its request starts, not all of them in the loop iteration that made the calls.
        await self._pool.pace()
        tenant, assertion, exp = self.preflight(request)
        self._check_refused(request, tenant)
        try:
            # The worker enforces the deadline on every request; this bounds the wait even for
            # an answer that trickles in under the read timeout.
            return await self._pool.run(
                self._exchange,
                request,
                tenant,
                assertion,
                exp,
                wait_at_most=self.timeouts.deadline + 1.0,
                paced=True,
            )
        except TimeoutError:
            raise unreachable(
                TransportFailure("deadline"),
                what="on-behalf-of request to Entra",
                source=self.name,
                scopes=request.scopes,
            ) from None
        except TransportFailure as exc:  # "closed": close() dropped the call before it ran
            raise unreachable(
                exc, what="on-behalf-of request to Entra", source=self.name, scopes=request.scopes
            ) from None

    def _exchange(
        self, request: TokenRequest, tenant: str, assertion: str, exp: float
    ) -> TokenResult:
        scopes = request.scopes
        started = time.time()  # expires_in counts from issuance: _base.result_from_msal
        try:
            with deadline(self.timeouts.deadline):  # discovery, client assertion, POST, retries
                app = self._apps.get(tenant, request.client_capabilities)
                response = app.acquire_token_on_behalf_of(
                    assertion, list(scopes), claims_challenge=request.claims
                )
        except Exception as exc:
            what = "on-behalf-of request to Entra"
            raise trust_error(exc, what=what, source=self.name, scopes=scopes) or unreachable(
                exc, what=what, source=self.name, scopes=scopes
            ) from None
        link = None
        if is_consent_required(response):
            link = self.consent_link(request, tenant)
        try:
            result = result_from_msal(
                response,
                kind=IdentityKind.USER,
                source=self.name,
                scopes=scopes,
                cap=exp,
                consent_link=link,
                started=started,
            )
        except TokenAcquisitionError as refusal:
            caller = request.caller
            digest = caller.assertion_sha256 if caller is not None else None
            if digest is not None:
                self.refused.remember(tenant, digest, exp, refusal)
            raise
        logger.debug(
            "obo %s: assertion %s -> token %s (tenant %s)",
            self.name,
            fingerprint(assertion),
            result.fingerprint,
            tenant,
        )
        return result

    def consent_link(self, request: TokenRequest, tenant: str | None = None) -> str | None:
        """The authorize URL that lets this user consent to this app for ``request.scopes``."""
        if self._consent_link is not None:
            return self._consent_link(request)
        caller = request.caller
        claims = caller.claims if caller is not None else None
        params = {
            "client_id": self.client_id,
            "response_type": "code",
            "scope": " ".join(request.scopes),
            "prompt": "consent",
        }
        if self.consent_redirect_uri:
            params["redirect_uri"] = self.consent_redirect_uri
        if claims is not None and claims.upn:
            params["login_hint"] = claims.upn
        if (
            tenant is None
            and claims is not None
            and (claims.tid or "").lower() in self.allowed_tenants
        ):
            tenant = claims.tid  # unverified: it may pick the authority only once allowed
        tid = tenant or self.tenant_id
        return f"{self.authority_host}/{tid}/oauth2/v2.0/authorize?{urlencode(params)}"

    # -- configuration ----------------------------------------

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        http_client: Any = None,
        name: str = "obo",
    ) -> OnBehalfOf:
        """Build from ``ENTRA_PASSTHROUGH_*`` and azure-identity's variables
        (docs/configuration.md)."""
        env = _env.environ_or(environ)
        client_id = _env.require(env, "ENTRA_PASSTHROUGH_CLIENT_ID", what="the OBO app")
        tenant_id = _env.require(env, "AZURE_TENANT_ID", what="the OBO app's tenant")
        options, created = options_from_env(env, http_client=http_client)
        source = cls(
            credential=credential_from_env(
                env, client_id=client_id, tenant_id=tenant_id, http_client=options["http_client"]
            ),
            consent_redirect_uri=_env.get(env, "ENTRA_PASSTHROUGH_CONSENT_REDIRECT_URI"),
            name=name,
            **options,
        )
        if created:
            close_session_with(source)
        return source


#: Scopes that name no resource (OpenID Connect); Entra adds them to any request.
_OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})


#: The scopes MSAL adds to every user token request itself and refuses to be given
#: (``ValueError``, before anything is sent).
MSAL_RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access"})


def check_no_reserved_scopes(scopes: Sequence[str], *, source: str) -> None:
    """Refuse ``openid``/``profile``/``offline_access`` among a token request's scopes with a
    typed error and a fix (MSAL refused them with a bare ``ValueError``, which read as an
    outage: "on-behalf-of request to Entra failed: ValueError")."""
    reserved = sorted({s for s in scopes if s.lower() in MSAL_RESERVED_SCOPES})
    if reserved:
        raise TokenAcquisitionError(
            f"The scopes include {', '.join(reserved)}, which MSAL adds to every user token "
            "request itself and refuses to be given; nothing was sent.",
            source=source,
            scopes=scopes,
            fix="ask only for the resource's scopes (e.g. 'api://<app>/.default'): the "
            "resource's access token never carries the OpenID Connect scopes",
        )


#: Microsoft Graph (global cloud): its App ID URI and app id are one resource, and a scope with
#: no resource (``User.Read``) is Graph's (https://learn.microsoft.com/entra/identity-platform/scopes-oidc).
_GRAPH_URI = "https://graph.microsoft.com"
_GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"


def _resource_key(resource: str) -> tuple[str, bool]:
    """(key, known) of a scope's resource: an app's client id GUID and its ``api://<GUID>``
    App ID URI are one resource (Entra resolves both to the app; the emulator does too), so
    both key to the GUID (``known``); so do Microsoft Graph's App ID URI and a scope with no
    resource. Any other App ID URI may be some app's, of whatever GUID: only the tenant knows,
    so it keys to its own text (``known`` False). (A national cloud's Graph URI keys to its
    text: beside a bare scope, nothing is refused here, and Entra decides.)"""
    key = resource.rstrip("/").lower()
    if key == _GRAPH_URI:
        return _GRAPH_APP_ID, True
    guid = key.removeprefix("api://")
    if GUID.fullmatch(guid):
        return guid, True
    return key, False


def scope_refusal(scopes: Sequence[str], *, own_client_id: str) -> tuple[int, str] | None:
    """(AADSTS code, why) when Entra refuses these delegated scopes whatever the token, so that
    the request is never sent (https://learn.microsoft.com/entra/identity-platform/scopes-oidc):
    ``.default`` combined with the same resource's named scopes (AADSTS70011), scopes of more
    than one resource (AADSTS28000), or the app asking for itself by its App ID URI
    ``api://<own client id>`` (AADSTS90009; the client id GUID form is what Entra accepts, and
    on-behalf-of is for a *downstream* API).

    A resource is one whichever way it is spelled: ``<GUID>`` and ``api://<GUID>`` are the
    same app. An App ID URI of another form (``https://contoso.com/api``) may be the App ID
    URI of one of the GUIDs asked for: with one such URI beside one GUID nothing is refused
    as AADSTS28000 here, and Entra decides."""
    own_uri = f"api://{own_client_id}".lower()
    #: key -> [(the resource as this scope spells it, the permission)]
    resources: dict[str, list[tuple[str, str]]] = {}
    guids = 0
    for scope in scopes:
        if scope.lower() in _OIDC_SCOPES:
            continue
        resource, _, permission = scope.rpartition("/")
        if not resource:
            resource = _GRAPH_URI  # a bare scope (User.Read): Microsoft Graph's
        key, known = _resource_key(resource)
        if key not in resources:
            resources[key] = []
            guids += known
        resources[key].append((resource.rstrip("/").lower(), permission))
    for asked in resources.values():
        permissions = [permission for _, permission in asked]
        if ".default" in permissions and len(set(permissions)) > 1:
            spelled = next(r for r, permission in asked if permission == ".default")
            return 70011, (
                f"'{spelled}/.default' is combined with named scopes of the same resource "
                f"({', '.join(p for p in permissions if p != '.default')[:120]}); .default "
                "stands for every configured permission and cannot be mixed with them"
            )
        if any(r == own_uri for r, _ in asked):
            return 90009, (
                f"The scopes ask for the OBO app itself by its App ID URI ({own_uri}); "
                "on-behalf-of is for the downstream API"
            )
    uris = len(resources) - guids
    # Two GUIDs are two apps, and two other App ID URIs are taken as two. One GUID beside one
    # other URI may be one app (the URI its App ID URI): Entra's to answer.
    if guids > 1 or uris > 1:
        named = ", ".join(asked[0][0] for asked in resources.values())
        return 28000, (
            f"The scopes name more than one resource ({named[:200]}); one token is for one resource"
        )
    return None


def close_session_with(source: OnBehalfOf) -> None:
    """``source.close()`` closes the HTTP session it was given: ``from_env`` built that session
    itself (from ``ENTRA_PASSTHROUGH_CA_FILE``), so nobody else holds or closes it. Used by
    ``OnBehalfOf.from_env`` and ``AgentIdentityOnBehalfOf.from_env`` (its inner OBO)."""
    source._created_http = True


def options_from_env(env: Mapping[str, str], *, http_client: Any) -> tuple[dict[str, Any], bool]:
    """The constructor keywords both OBO sources read the same way (tenants, audiences, HTTP
    session, workers; the credential is ``credential_from_env``'s), and whether the HTTP session
    was created here (from ``ENTRA_PASSTHROUGH_CA_FILE``: the source closes it)."""
    ca_file = _env.get_ca_file(env, "ENTRA_PASSTHROUGH_CA_FILE")
    created = http_client is None and ca_file is not None
    if http_client is None:
        http_client = http_session(ca_file)
    options = {
        "allowed_tenants": allowed_tenants_from_env(env),
        "accepted_audiences": _env.get_list(env, "ENTRA_PASSTHROUGH_ACCEPTED_AUDIENCES"),
        "http_client": http_client,
        "max_workers": _env.get_int(env, "ENTRA_PASSTHROUGH_MAX_WORKERS", DEFAULT_MAX_WORKERS),
        "timeouts": Timeouts.from_env(env),
    }
    return options, created


_CHOICES = frozenset({"secret", "certificate", "federated_token_file", "managed_identity"})


def _shown_choice(choice: str) -> str:
    """The credential choice as it may be shown: one of the names, else not its value (a
    secret pasted into the variable by mistake must not reach an error message or doctor)."""
    return choice if choice in _CHOICES else "<not one of " + "|".join(sorted(_CHOICES)) + ">"


def name_lists(
    allowed_tenants: Sequence[str] | None, accepted_audiences: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Both OBO sources' ``allowed_tenants`` and ``accepted_audiences`` as tuples, or a
    ``ConfigurationError``: one string given for either was split into characters (every caller
    refused as of a tenant '-', '0', ...; one-letter audiences accepted), as ``JwtVerifier``'s
    lists were."""
    tenants = names(allowed_tenants, what="allowed_tenants", example="<tenant id>", spaces=True)
    audiences = names(accepted_audiences, what="accepted_audiences", example="api://<alias>")
    return tenants, audiences


def check_caller_tenants(
    owner: str,
    tenant_id: str,
    tenants: Sequence[str],
    *,
    tenant_variable: str = "AZURE_TENANT_ID",
) -> None:
    """The tenants an on-behalf-of source compares with each caller's ``tid`` claim: the
    ``allowed_tenants`` entries, else the home tenant ``tenant_id`` (then a domain name there
    is refused; with an allow-list of GUIDs it is only the authority, where a domain works)."""
    if not tenants:
        caller_tenant(tenant_id, what="tenant_id", variable=tenant_variable, owner=owner)
    for tenant in tenants:
        caller_tenant(
            tenant,
            what="allowed_tenants",
            variable="ENTRA_PASSTHROUGH_ALLOWED_TENANTS",
            owner=owner,
            entry=True,
        )


def audiences_for(client_id: str, extra: Sequence[str] = ()) -> frozenset[str]:
    """The assertion audiences an app accepts, lower-cased: its client id, ``api://`` + it,
    and ``extra``."""
    return frozenset(a.lower() for a in (client_id, f"api://{client_id}", *extra))


def allowed_tenants_from_env(env: Mapping[str, str]) -> tuple[str, ...] | None:
    """``ENTRA_PASSTHROUGH_ALLOWED_TENANTS``, else the home tenant plus azure-identity's
    ``AZURE_ADDITIONALLY_ALLOWED_TENANTS`` (``None``: the home tenant only). ``*`` is refused:
    the allow-list decides which tenant's users the app acts for."""
    own = _env.get_list(env, "ENTRA_PASSTHROUGH_ALLOWED_TENANTS")
    extra = _env.get_list(env, "AZURE_ADDITIONALLY_ALLOWED_TENANTS")
    if "*" in own or "*" in extra:
        raise ConfigurationError(
            "'*' (any tenant) is not accepted as an allowed tenant for on-behalf-of: the "
            "allow-list decides which tenants' users this app acts for.",
            fix="list the tenant ids in ENTRA_PASSTHROUGH_ALLOWED_TENANTS or "
            "AZURE_ADDITIONALLY_ALLOWED_TENANTS.",
        )
    # Each entry is compared with the callers' tid claims: refused here naming its variable
    # (a domain, a GUID in braces, a URL was accepted and refused every caller).
    for variable, entries in (
        ("ENTRA_PASSTHROUGH_ALLOWED_TENANTS", own),
        ("AZURE_ADDITIONALLY_ALLOWED_TENANTS", extra),
    ):
        for entry in entries:
            caller_tenant(entry, what=variable, entry=True)
    if own:
        return (*own, *extra)
    if extra:
        home_variable = next(
            (v for v in ("AZURE_TENANT_ID", "FOUNDRY_AGENT_TENANT_ID") if _env.get(env, v)), None
        )
        home = _env.get(env, home_variable) if home_variable is not None else None
        if home_variable is None or home is None or home.lower() in TENANTLESS:
            return extra  # a multi-tenant app (organizations): its callers' tenants only
        caller_tenant(home, what=home_variable)  # the home tenant is on the list
        return (home, *extra)
    return None


#: The variables naming each app's client credential: the OBO app (and the Agent ID
#: blueprint) and the consent app. One reader for both, so they cannot drift apart.
#: Per app: what to call it, the prefix of its client variables (``..._ID``, ``..._SECRET``,
#: ``..._CERTIFICATE_PATH``, ``..._CREDENTIAL``).
CLIENT_VARIABLES = {
    "obo": ("the OBO app", "ENTRA_PASSTHROUGH_CLIENT_"),
    # Agent ID: the blueprint's credential is read from the OBO app's variables.
    "blueprint": ("the agent identity blueprint", "ENTRA_PASSTHROUGH_CLIENT_"),
    "consent": ("the consent app", "ENTRA_PASSTHROUGH_CONSENT_CLIENT_"),
}


def credential_from_env(
    env: Mapping[str, str],
    *,
    client_id: str,
    tenant_id: str,
    http_client: Any,
    owner: str = "OnBehalfOf.from_env()",
    app: str = "obo",
    authority_host: str | None = None,
) -> AppCredential:
    """The ``AppCredential`` of ``app`` (``"obo"``: ``ENTRA_PASSTHROUGH_CLIENT_*``;
    ``"consent"``: ``ENTRA_PASSTHROUGH_CONSENT_CLIENT_*``) with the one client credential the
    environment configures: ``..._CREDENTIAL`` chooses, else the secret, the certificate
    (``AZURE_CLIENT_CERTIFICATE_PASSWORD``, ``AZURE_CLIENT_SEND_CERTIFICATE_CHAIN``), the
    workload identity token file, the host's user-assigned managed identity: the first
    configured, in that order (``doctor`` says which when several are). ``authority_host``
    (else ``AZURE_AUTHORITY_HOST``)."""
    from .managed_identity import ManagedIdentity

    what, prefix = CLIENT_VARIABLES[app]
    secret_variable = f"{prefix}SECRET"
    cert_variable = f"{prefix}CERTIFICATE_PATH"
    choice_variable = f"{prefix}CREDENTIAL"

    def credential(**one: Any) -> AppCredential:
        return AppCredential(
            client_id=client_id,
            tenant_id=tenant_id,
            authority_host=authority_host
            or _env.get(env, "AZURE_AUTHORITY_HOST")
            or PUBLIC_AUTHORITY_HOST,
            **one,
        )

    choice = (_env.get(env, choice_variable) or "").lower() or None
    secret = _env.get(env, secret_variable)
    cert = _env.get(env, cert_variable)
    token_file = _env.get(env, "AZURE_FEDERATED_TOKEN_FILE")
    has_mi = _env.get(env, "IDENTITY_ENDPOINT") is not None
    if choice is None:
        choice = (
            "secret"
            if secret
            else "certificate"
            if cert
            else "federated_token_file"
            if token_file
            else "managed_identity"
            if has_mi
            else None
        )
    if choice == "secret" and secret:
        return credential(client_secret=secret)
    if choice == "certificate" and cert:
        return credential(
            client_certificate=cert,
            certificate_password=_env.get(env, "AZURE_CLIENT_CERTIFICATE_PASSWORD"),
            send_certificate_chain=_env.get_bool(env, "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN"),
        )
    if choice == "federated_token_file" and token_file:
        return credential(federated_token_file=token_file)
    if choice == "managed_identity":
        # A managed identity as federated credential must be user-assigned: refused here
        # (ConfigurationError naming AZURE_CLIENT_ID) before any request, naming the source
        # being built and why a managed identity was chosen.
        mi = ManagedIdentity.from_env(env, http_client=http_client)
        why = (
            f"{choice_variable}=managed_identity"
            if _env.get(env, choice_variable)
            else "IDENTITY_ENDPOINT is set and no secret, certificate or token file is"
        )
        mi.require_user_assigned(
            f"{owner} ({why})", instead=f"{secret_variable} or {cert_variable}"
        )
        return credential(managed_identity=mi)
    raise ConfigurationError(
        f"{owner}: no client credential for {what} in the environment (it needs exactly one)"
        + (
            f"; {choice_variable}={_shown_choice(choice)} names none that is configured."
            if choice
            else "."
        )
        + (_env.azure_app_hint(env) if app in ("obo", "blueprint") else ""),
        fix=f"set {secret_variable}, {cert_variable} or AZURE_FEDERATED_TOKEN_FILE"
        + _managed_identity_option(env, choice_variable, what)
        + ".",
    )


def _managed_identity_option(env: Mapping[str, str], choice_variable: str, what: str) -> str:
    """The managed identity way to a client credential, as this host gets it: the variables the
    host itself sets (IDENTITY_ENDPOINT/IDENTITY_HEADER, MSI_*) cannot be set by the user, and
    a host that cannot select a user-assigned identity has no such way at all."""
    from .managed_identity import HOST_NAMES, SELECTORS_BY_HOST, detect_host

    host = detect_host(env)
    if not SELECTORS_BY_HOST[host]:
        return (
            f" (a managed identity cannot be {what}'s federated credential on "
            f"{HOST_NAMES[host]}: it cannot select a user-assigned identity)"
        )
    return (
        f", or {choice_variable}=managed_identity with AZURE_CLIENT_ID naming a user-assigned "
        f"managed identity assigned to this host and configured as a federated credential of "
        f"{what} (needed where the host sets no IDENTITY_ENDPOINT: a VM, Azure Machine Learning)"
    )
