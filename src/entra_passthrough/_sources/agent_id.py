"""``AgentIdentityOnBehalfOf``: Entra Agent ID - blueprint credential + fmi_path -> T1, then OBO
as the agent identity with T1 as its client assertion (kind ``user``)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import _env
from .._checks import caller_tenant, client_id, registration, wrapping
from .._credential import AppCredential, app_credential
from .._errors import (
    GUID,
    AssertionAudienceMismatch,
    ConfigurationError,
    ConsentRequired,
    EntraError,
    EntraPassthroughError,
    TenantNotAllowed,
    TokenAcquisitionError,
    is_foundry_audience,
    own_uri_fix,
    without_fix,
)
from .._http import SHARED_THROTTLE, Timeouts, following, trust_error
from .._msal import (
    DEFAULT_MAX_WORKERS,
    PUBLIC_AUTHORITY_HOST,
    client_credential,
    confidential_app,
    federation_audience,
)
from .._types import IdentityKind, TokenRequest, TokenResult
from ._base import result_from_msal, unreachable
from .managed_identity import ManagedIdentity
from .obo import (
    OnBehalfOf,
    audiences_for,
    check_caller_tenants,
    close_session_with,
    credential_from_env,
    name_lists,
    options_from_env,
)

logger = logging.getLogger("entra_passthrough.agent_id")

if TYPE_CHECKING:
    from .._caller import Caller

#: Renew T1 this long before it expires, at most: a T1 is renewed ``min(_T1_MARGIN, lifetime / 2)``
#: before its end (a short-lived T1 is not renewed for every exchange).
_T1_MARGIN = 300.0
#: A held T1 is still sent while it has this long left (an exchange on the wire, clock skew):
#: a renewal that fails before then leaves it in use; after, the failure is raised.
_T1_SAFETY = 60.0
#: After a failed renewal, the held T1 is used without another request for this long (an
#: Entra outage costs one request per back-off, not one per user).
_T1_RETRY = 15.0

#: The way out of AADSTS65001 for an agent identity. No user can consent for it (AADSTS82014),
#: so the generic fix (a consent link, knownClientApplications) leads nowhere: an administrator
#: grants the blueprint's delegated permission and makes it inheritable by its agent identities.
AGENT_CONSENT_FIX = (
    "agent identities cannot be consented interactively (AADSTS82014): an administrator grants "
    "the blueprint's delegated permission to the resource (admin consent: an "
    "oauth2PermissionGrant for the blueprint's service principal and the resource's scope) and "
    "configures it as an inheritable permission of the blueprint (inheritablePermissions), so "
    "that its agent identities inherit it; then retry"
)


class _T1:
    """The blueprint's token for the agent identity (``fmi_path``), cached until near expiry.

    Called by MSAL (in a worker thread) whenever the agent identity's OBO request goes out.
    One request at a time (a cold burst waits for the first caller's T1). A T1 due for renewal
    is renewed by one caller while the others keep sending it; a renewal that fails leaves it
    in use (logged) until ``_T1_SAFETY`` before it expires, retried after ``_T1_RETRY``.
    """

    def __init__(
        self, app_factory: Callable[[], Any], *, scope: str, agent_identity_id: str, source: str
    ):
        self._factory = app_factory
        self._source = source
        self._app: Any = None
        self._scope = scope
        self._fmi_path = agent_identity_id
        self._token: TokenResult | None = None
        # The held T1 with the time it is due for renewal, one attribute: a reader never pairs
        # an old T1 with a new renewal time.
        self._fresh: tuple[TokenResult, float] | None = None
        self._retry_at = 0.0  # after a failed renewal: no request before this
        self._lock = threading.Lock()  # the single flight (and ``_app``)

    def __repr__(self) -> str:
        return f"AgentIdentityT1(fmi_path={self._fmi_path!r})"

    def close_http(self) -> None:
        """Close the HTTP session MSAL built for the blueprint app (none was given)."""
        with self._lock:
            app, self._app = self._app, None
        if app is not None:
            app.http_client.close()

    def _held(self, now: float) -> TokenResult | None:
        """The held T1 while it may still be sent (more than ``_T1_SAFETY`` left)."""
        token = self._token
        if token is not None and token.expires_on - _T1_SAFETY > now:
            return token
        return None

    def __call__(self) -> str:
        now = time.time()
        fresh = self._fresh  # the T1 and its renewal time, read together (one attribute)
        if fresh is not None and now < fresh[1]:
            return fresh[0].token
        held = self._held(now)
        if held is not None:
            # Due for renewal but still valid: one caller renews, the others keep sending it;
            # after a failed renewal, nobody asks again before the back-off ends.
            if now < self._retry_at or not self._lock.acquire(blocking=False):
                return held.token
            waited = False
        else:
            # No T1 to send: wait for the request in flight, if any.
            waited = not self._lock.acquire(blocking=False)
            if waited:
                self._lock.acquire()
        try:
            renewed = self._fresh
            if renewed is not None and time.time() < renewed[1]:
                return renewed[0].token  # renewed by the caller this one waited for
            try:
                # A caller that waited for another's request takes its answer: a throttled
                # endpoint is its answer too, not another short Retry-After to sit out.
                with following() if waited else contextlib.nullcontext():
                    fetched = self._fetch()
            except EntraPassthroughError as exc:
                held = self._held(time.time())
                if held is None:
                    raise
                self._retry_at = time.time() + _T1_RETRY
                code = getattr(exc, "code", None)
                detail = getattr(exc, "failure", None) or (
                    f"AADSTS{code.code}" if code is not None else None
                )
                logger.warning(
                    "renewing the blueprint's T1 for agent identity %s failed (%s%s); the held "
                    "T1 stays in use (%.0f s left), next attempt in %.0f s",
                    self._fmi_path,
                    type(exc).__name__,
                    f": {detail}" if detail else "",
                    held.expires_on - time.time(),
                    _T1_RETRY,
                )
                return held.token
            return fetched.token
        finally:
            self._lock.release()

    def _fetch(self) -> TokenResult:
        """Request T1 and hold it (called with the flight lock held)."""
        started = time.time()  # expires_in counts from issuance: _base.result_from_msal
        try:
            if self._app is None:
                self._app = self._factory()
            response = self._app.acquire_token_for_client([self._scope], fmi_path=self._fmi_path)
        except Exception as exc:
            what = "the blueprint's T1 request"
            raise trust_error(exc, what=what, source=self._source, scopes=()) or unreachable(
                exc, what=what, source=self._source, scopes=()
            ) from None
        token = result_from_msal(
            response,
            kind=IdentityKind.APP,
            source=self._source,
            scopes=(self._scope,),
            started=started,
        )
        margin = min(_T1_MARGIN, max(token.expires_on - started, 0.0) / 2)
        self._token = token
        self._fresh = (token, token.expires_on - margin)
        self._retry_at = 0.0
        return token


class AgentIdentityOnBehalfOf:
    """On-behalf-of as an Entra *agent identity* (Agent ID), ``kind=user``.

    The blueprint authenticates with its own credential (``credential=AppCredential(client_id=
    <blueprint>, ...)``: secret, certificate, managed identity as federated credential, token
    file or callable; or the simple path ``blueprint_client_id=``, ``tenant_id=`` and
    ``client_secret=`` or ``managed_identity=``) and gets T1 for
    ``api://AzureADTokenExchange/.default`` with ``fmi_path=<agent identity>``; the agent identity
    then does OBO with ``client_assertion=T1``. The caller's token must be issued for the
    *blueprint* (its client id or App ID URI). Agent identities cannot be consented
    interactively (AADSTS82014): grant consent for them administratively.

    >>> source = AgentIdentityOnBehalfOf(
    ...     blueprint_client_id=BP, agent_identity_id=AGENT, tenant_id=TENANT,
    ...     managed_identity=ManagedIdentity.from_env())
    """

    kind = IdentityKind.USER

    def __init__(
        self,
        *,
        agent_identity_id: str,
        credential: AppCredential | None = None,
        blueprint_client_id: str | None = None,
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
        name: str = "agent_id",
    ) -> None:
        # An empty blueprint id would make "" and "api://" accepted assertion audiences: the
        # credential refuses it.
        blueprint = app_credential(
            "AgentIdentityOnBehalfOf (the blueprint)",
            credential,
            client_id=blueprint_client_id,
            tenant_id=tenant_id,
            client_secret=client_secret,
            managed_identity=managed_identity,
            authority_host=authority_host,
        )
        if not agent_identity_id:
            raise ConfigurationError("AgentIdentityOnBehalfOf needs agent_identity_id.")
        registration(
            "AgentIdentityOnBehalfOf (the blueprint)",
            blueprint,
            tenant_variable="AZURE_TENANT_ID",
            client_variable="ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID",
            secret_variable="ENTRA_PASSTHROUGH_CLIENT_SECRET",
        )
        _check_agent_identity_id(
            agent_identity_id, variable="ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID", keyword=True
        )
        allowed_tenants, accepted_audiences = name_lists(allowed_tenants, accepted_audiences)
        _check_single_tenant(blueprint.tenant_id, allowed_tenants)
        # Compared with each caller's tid claim (a GUID): a domain refused every caller.
        check_caller_tenants(
            "AgentIdentityOnBehalfOf (the blueprint)", blueprint.tenant_id, allowed_tenants
        )
        self.name = name
        self.credential = blueprint
        self.blueprint_client_id = blueprint_client_id = blueprint.client_id
        self.agent_identity_id = agent_identity_id
        tenant_id = blueprint.tenant_id
        host = blueprint.authority_host
        msal_credential = client_credential(blueprint)

        timeouts = timeouts or Timeouts()
        # Retry-After per authority, for every source of the process: the blueprint's T1
        # requests and the agent identity's OBO (OnBehalfOf uses the same SHARED_THROTTLE).
        throttle = SHARED_THROTTLE

        def blueprint_app() -> Any:
            return confidential_app(
                blueprint_client_id,
                credential=msal_credential,
                authority=f"{host}/{tenant_id}",
                http_client=http_client,
                timeouts=timeouts,
                throttle=throttle,
            )

        self._owns_http = http_client is None  # else the caller's (or from_env's) session
        self._t1 = _T1(
            blueprint_app,
            scope=f"{federation_audience(host)}/.default",
            agent_identity_id=agent_identity_id,
            source=f"{name}.blueprint",
        )
        self._obo = OnBehalfOf(
            credential=AppCredential(
                client_id=agent_identity_id,
                tenant_id=tenant_id,
                client_assertion=self._t1,
                authority_host=host,
            ),
            allowed_tenants=allowed_tenants,
            http_client=http_client,
            max_workers=max_workers,
            max_tenants=max_tenants,
            timeouts=timeouts,
            consent_link=_no_interactive_consent,
            name=name,
        )
        # The user's token is for the blueprint, not for the agent identity.
        self._obo.accepted_audiences = audiences_for(blueprint_client_id, accepted_audiences)

    def __repr__(self) -> str:
        return (
            f"AgentIdentityOnBehalfOf(name={self.name!r}, blueprint={self.blueprint_client_id!r}, "
            f"agent_identity={self.agent_identity_id!r})"
        )

    def close(self) -> None:
        self._obo.close()
        if self._owns_http:
            self._t1.close_http()

    def msal_apps(self) -> list[Any]:
        return self._obo.msal_apps()

    # Diagnostics (``entra-passthrough doctor``): where the exchange goes, and its first step.
    @property
    def tenant_id(self) -> str:
        return self._obo.tenant_id

    @property
    def authority_host(self) -> str:
        return self._obo.authority_host

    @property
    def accepted_audiences(self) -> frozenset[str]:
        """The audiences a user's token may have: the blueprint's."""
        return self._obo.accepted_audiences

    def check_blueprint(self) -> None:
        """The blueprint's exchange token for the agent identity (``fmi_path``), the first step
        of every exchange: raises the typed error Entra's refusal maps to."""
        self._t1()

    def explain(self, request: TokenRequest) -> str:
        return self._obo.explain(request)

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        return self._obo.cache_partition(request)

    def caller_partition(self, caller: Caller | None) -> tuple[str, ...] | None:
        return self._obo.caller_partition(caller)

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        try:
            return self._obo.get_token(request)
        except AssertionAudienceMismatch as exc:
            raise _for_the_blueprint(exc, self.blueprint_client_id) from None
        except ConsentRequired as exc:
            raise _admin_consent(exc) from None
        except TenantNotAllowed as exc:
            raise _single_tenant(exc) from None

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        try:
            return await self._obo.get_token_async(request)
        except AssertionAudienceMismatch as exc:
            raise _for_the_blueprint(exc, self.blueprint_client_id) from None
        except ConsentRequired as exc:
            raise _admin_consent(exc) from None
        except TenantNotAllowed as exc:
            raise _single_tenant(exc) from None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        http_client: Any = None,
        name: str = "agent_id",
    ) -> AgentIdentityOnBehalfOf:
        """``ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID``, ``ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID``,
        ``AZURE_TENANT_ID`` and the blueprint's credential as for ``OnBehalfOf.from_env``.

        In a Foundry hosted agent the platform sets ``FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID``,
        ``FOUNDRY_AGENT_INSTANCE_CLIENT_ID`` and ``FOUNDRY_AGENT_TENANT_ID``; they are used when
        the library's own variables are not set."""
        env = _env.environ_or(environ)
        # The errors name the variable each value was read from (Foundry's or the library's),
        # and no azure-identity hint: its fix (ENTRA_PASSTHROUGH_CLIENT_ID) builds OnBehalfOf.
        blueprint_client_id, blueprint_variable = _env.require_from(
            env,
            "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID",
            what="the agent identity blueprint",
            fallback="FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID",
            app_hint=False,
        )
        agent_identity_id, agent_variable = _env.require_from(
            env,
            "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID",
            what="the agent identity",
            fallback="FOUNDRY_AGENT_INSTANCE_CLIENT_ID",
            app_hint=False,
        )
        tenant_id, tenant_variable = _env.require_from(
            env,
            "AZURE_TENANT_ID",
            what="the blueprint's tenant",
            fallback="FOUNDRY_AGENT_TENANT_ID",
            app_hint=False,
        )
        # Every caller's tid claim is compared with it: named by the variable it came from.
        caller_tenant(
            tenant_id,
            what=tenant_variable,
            owner="AgentIdentityOnBehalfOf.from_env() (the blueprint)",
        )
        client_id(
            blueprint_client_id,
            what=blueprint_variable,
            owner="AgentIdentityOnBehalfOf.from_env() (the blueprint)",
        )
        _check_agent_identity_id(agent_identity_id, variable=agent_variable, keyword=False)
        options, created = options_from_env(env, http_client=http_client)
        if _foundry_platform_credential(env, blueprint_variable):
            # Inside a Foundry hosted agent: the blueprint's credential is the hosted-agent
            # token service's token for it (api://AzureADTokenExchange, the blueprint's client
            # id as the managed identity), which the blueprint trusts as its platform-managed
            # federated credential (docs/hosted-agent.md).
            credential = AppCredential(
                client_id=blueprint_client_id,
                tenant_id=tenant_id,
                authority_host=_env.get(env, "AZURE_AUTHORITY_HOST") or PUBLIC_AUTHORITY_HOST,
                managed_identity=_FoundryTokenService.from_env(
                    {**env, "AZURE_CLIENT_ID": blueprint_client_id},
                    http_client=options["http_client"],
                    name=f"{name}.foundry_token_service",
                ),
            )
        else:
            try:
                credential = credential_from_env(
                    env,
                    client_id=blueprint_client_id,
                    tenant_id=tenant_id,
                    http_client=options["http_client"],
                    owner="AgentIdentityOnBehalfOf.from_env() (the blueprint)",
                    app="blueprint",
                )
            except ConfigurationError as exc:
                if not _foundry_platform_credential(env, "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID") or (
                    _env.get(env, "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID") is None
                ):
                    raise
                # Inside Foundry, but the library's own blueprint variable is set: that turns
                # Foundry's platform credential off, and the refusal alone does not say so.
                raise ConfigurationError(
                    without_fix(exc),
                    fix=(exc.fix or "configure the blueprint's credential")
                    + f" Inside a Foundry hosted agent, leave {blueprint_variable} unset instead: "
                    "the blueprint (FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID) then uses Foundry's "
                    "platform credential (docs/hosted-agent.md).",
                ) from None
        source = cls(
            credential=credential,
            agent_identity_id=agent_identity_id,
            name=name,
            **options,
        )
        if created:
            close_session_with(source._obo)  # closed with the source
        return source


#: The variables that configure the blueprint's credential (``credential_from_env``): with none
#: of them set inside a Foundry hosted agent, Foundry's own credential is used.
_BLUEPRINT_CREDENTIAL_VARIABLES = (
    "ENTRA_PASSTHROUGH_CLIENT_SECRET",
    "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH",
    "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL",
    "AZURE_CLIENT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
)


class _FoundryTokenService(ManagedIdentity):
    """Foundry's hosted-agent token service as the blueprint's credential. Its refusal says
    which path the library took and why: taken outside a Foundry hosted agent (a host whose
    identity endpoint knows no identity with the blueprint's client id), the managed identity's
    own fix ("assign the user-assigned identity to this host") would point at the wrong thing:
    a blueprint is not a managed identity."""

    def token_for_resource(self, resource: str) -> str:
        try:
            return super().token_for_resource(resource)
        except EntraError as exc:
            raise EntraError(
                "The identity endpoint (IDENTITY_ENDPOINT, Foundry's hosted-agent token service "
                "in a hosted agent) gave no token for the agent identity blueprint "
                "(FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID), which is the blueprint's credential when "
                f"no other is configured. {without_fix(exc)}",
                aadsts=exc.code.code if exc.code is not None else None,
                error=exc.error,
                suberror=exc.suberror,
                correlation_id=exc.correlation_id,
                trace_id=exc.trace_id,
                fix="outside a Foundry hosted agent (these variables copied to another host), "
                "configure the blueprint's credential: ENTRA_PASSTHROUGH_CLIENT_SECRET, "
                "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH, or AZURE_CLIENT_ID naming a "
                "user-assigned identity that is a federated credential of the blueprint; in a "
                "hosted agent, check that the agent was deployed with its agent identity "
                "(docs/hosted-agent.md).",
            ) from None


def _foundry_platform_credential(env: Mapping[str, str], blueprint_variable: str) -> bool:
    """Inside a Foundry hosted agent (the blueprint is Foundry's, the container has a managed
    identity endpoint: Foundry's hosted-agent token service) with no blueprint credential of
    the developer's."""
    return (
        blueprint_variable == "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID"
        and _env.get(env, "IDENTITY_ENDPOINT") is not None
        and not any(_env.get(env, variable) for variable in _BLUEPRINT_CREDENTIAL_VARIABLES)
    )


def _check_agent_identity_id(value: object, *, variable: str, keyword: bool) -> None:
    """The agent identity's client id: a string with no whitespace or control character (as
    ``_checks.client_id``), the error naming the variable it was read from (``keyword``: the
    constructor's ``agent_identity_id=``), with the agent identity's own fix: it is a service
    principal with no app registration."""
    if keyword:
        name = f"AgentIdentityOnBehalfOf: agent_identity_id ({variable})"
        where = f"pass agent_identity_id= (or set {variable})"
    else:
        name = f"AgentIdentityOnBehalfOf.from_env(): {variable}"
        where = f"set {variable} to"
    fix = (
        f"{where} the agent identity's client id, a GUID: the appId of its service principal "
        "(an agent identity has no app registration)"
    )
    fix += (
        "; Foundry sets it in a hosted agent: check what overwrote it."
        if variable == "FOUNDRY_AGENT_INSTANCE_CLIENT_ID"
        else "; in a Foundry hosted agent, Foundry sets FOUNDRY_AGENT_INSTANCE_CLIENT_ID to it."
    )
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, not {type(value).__name__}.", fix=fix)
    if not value:
        raise ConfigurationError(f"{name} is empty.", fix=fix)
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigurationError(
            f"{name} holds whitespace or a control character (copied with more than the id?).",
            fix=fix + " Remove the spaces or line breaks around it.",
        )
    wrapped = wrapping(value)
    if wrapped:
        raise ConfigurationError(f"{name} is {wrapped}.", fix=fix + " Remove them.")


def _no_interactive_consent(request: TokenRequest) -> str | None:
    # Agent identities cannot be consented interactively (AADSTS82014); an admin grants it.
    return None


def _admin_consent(exc: ConsentRequired) -> ConsentRequired:
    """The same refusal with the agent identity's way out (``AGENT_CONSENT_FIX``): the OBO
    error's fix is the one for an app a user can consent to."""
    code = exc.code
    message = (
        f"Entra refused the token request: {code}: {code.meaning}."
        if code is not None
        else "Entra refused the token request: consent is required."
    )
    return ConsentRequired(
        f"{message} The agent identity has no delegated permission for this user and scope.",
        link=None,
        source=exc.source,
        scopes=exc.scopes,
        aadsts=code.code if code is not None else None,
        correlation_id=exc.correlation_id,
        trace_id=exc.trace_id,
        fix=AGENT_CONSENT_FIX,
    )


def _for_the_blueprint(exc: AssertionAudienceMismatch, blueprint: str) -> AssertionAudienceMismatch:
    """The same refusal saying what an agent identity needs: the user's token for the
    *blueprint* (its App ID URI or client id), not "the OBO app"."""
    err = AssertionAudienceMismatch.__new__(AssertionAudienceMismatch)
    err.audience = exc.audience
    err.expected = exc.expected
    foundry = (
        " This is the token Microsoft Foundry sends to hosted agents; it names the user but is "
        "for Foundry, not for the blueprint."
        if is_foundry_audience(exc.audience)
        else ""
    )
    own_uri = own_uri_fix(exc.audience, "the blueprint")
    TokenAcquisitionError.__init__(
        err,
        f"The caller's token is for audience {exc.audience!r}; an agent identity's on-behalf-of "
        f"needs the user's token for its blueprint ({' or '.join(exc.expected)}), so Entra "
        f"would answer AADSTS500131.{foundry} The token was not sent.",
        source=exc.source,
        scopes=exc.scopes,
        aadsts=500131,
        fix=f"{own_uri}have the client request a token for the blueprint's scope "
        f"(api://{blueprint}/<scope>, e.g. access_as_user, or {blueprint}/.default); use "
        "DelegatedConsent or, for Foundry, FoundryToolboxRoute otherwise; do not forward this "
        "token.",
    )
    return err


def _single_tenant(exc: TenantNotAllowed) -> TenantNotAllowed:
    """The same refusal with the agent identity's way out: the generic fix ("add the tenant to
    allowed_tenants") is refused at build here (``_check_single_tenant``). A tenant configured
    by name keeps its own fix (configure the GUID)."""
    if exc.tenant is None or any(not GUID.fullmatch(tenant) for tenant in exc.allowed):
        return exc  # no tenant in the token at all: its own text says so
    # The same class (handlers and logs name TenantNotAllowed), its own message and fix.
    err = TenantNotAllowed.__new__(TenantNotAllowed)
    err.tenant = exc.tenant
    err.allowed = exc.allowed
    TokenAcquisitionError.__init__(
        err,
        f"The caller's tenant {exc.tenant!r} is not the agent identity's tenant "
        f"({', '.join(exc.allowed)}); no request was sent to Entra. An agent identity exists "
        "only in its blueprint's tenant and serves only tokens that tenant issued.",
        source=exc.source,
        scopes=exc.scopes,
        fix="this agent identity cannot serve users of another tenant (allowed_tenants cannot "
        "name one: agent identities are single-tenant). Invite the user as a guest of the "
        "agent's tenant and have them sign in there (their token's tid is then that tenant), "
        "or create a blueprint and agent identity in their tenant and use a second source for "
        "it.",
    )
    return err


def _check_single_tenant(tenant_id: str, allowed_tenants: Sequence[str] | None) -> None:
    """Agent identities are single-tenant: a user of another tenant cost a T1 request and an
    OBO request, and Entra refused it (AADSTS700016). Refused at build instead."""
    others = sorted({t.lower() for t in allowed_tenants or ()} - {tenant_id.lower()})
    if others:
        raise ConfigurationError(
            f"AgentIdentityOnBehalfOf allows tenants other than the agent identity's own "
            f"({len(others)} more); an agent identity exists only in its blueprint's tenant, so "
            "Entra refuses every user of another tenant (AADSTS700016).",
            fix="leave allowed_tenants unset (ENTRA_PASSTHROUGH_ALLOWED_TENANTS and "
            "AZURE_ADDITIONALLY_ALLOWED_TENANTS) or set it to the blueprint's tenant only "
            "(AZURE_TENANT_ID); for users of another tenant, create a blueprint and agent "
            "identity in that tenant and use a second source.",
        )
