"""From a request's ``scope`` to a resource, its permitted scopes/roles, and a token response.

Scope rules: https://learn.microsoft.com/entra/identity-platform/scopes-oidc (a scope is
``<resource>/<permission>``; ``/.default`` means every permission already granted; OIDC scopes name
no resource; one resource per request, else AADSTS28000). Response fields:
https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow#successful-response.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import _errors as e
from ._state import OIDC_SCOPES, RefreshRecord, Runtime
from ._tokens import Subject, access_token_claims, client_info, id_token_claims, sign
from ._world import ACCOUNT_STATES, GRAPH_APP_ID, App, User


@dataclass(frozen=True)
class ScopeRequest:
    resource: App | None
    names: tuple[str, ...]  # permissions on the resource, e.g. ("access_as_user",) or (".default",)
    oidc: frozenset[str]
    requested: str | None = None  # the resource as the scope named it (client id or App ID URI)

    def v1_audience(self) -> str | None:
        """A v1 token's ``aud`` is "the client ID or the resource URI used in the request"
        (access-token-claims-reference, "aud"); v2 tokens always carry the client id."""
        if self.resource is None or self.requested is None:
            return None
        if self.resource.access_token_version == 2:
            return None
        return requested_audience(self.resource, self.requested)

    @property
    def is_default(self) -> bool:
        return ".default" in self.names

    def prefix(self) -> str:
        if self.resource is None:
            return ""
        if self.resource.client_id == GRAPH_APP_ID:
            return ""  # Graph's scopes are returned bare ("User.Read")
        return (self.resource.app_id_uri or self.resource.client_id).rstrip("/") + "/"


def requested_audience(resource: App, requested: str) -> str:
    """A v1 ``aud``: the identifier the request named (client id, or the App ID URI with the
    trailing slash as requested: ``resource=https://ai.azure.com/`` gives that ``aud``), as the
    token endpoint, the managed identity endpoints and ``az`` all answer
    (access-token-claims-reference, "aud": "the client ID or the resource URI used in the
    request")."""
    if requested.rstrip("/").lower() == resource.client_id or not resource.app_id_uri:
        return resource.client_id
    uri = resource.app_id_uri.rstrip("/")
    return uri + "/" if requested.endswith("/") else uri


def v1_audience(resource: App, requested: str) -> str | None:
    """``mint_access``'s ``audience`` for a request that named ``resource`` as ``requested``:
    the identifier requested for a v1 resource, ``None`` (the client id) for a v2 one."""
    return ScopeRequest(resource, (".default",), frozenset(), requested).v1_audience()


def split_scope(scope: str) -> tuple[str, str]:
    """``(resource identifier, permission)`` of one scope: ``<resource>/<permission>``
    (scopes-oidc), split at the last slash **after** a URI's authority, so that ``api://<guid>``
    is the resource ``api://<guid>`` with no permission (``""``), not a permission ``<guid>`` of
    a resource ``api:/``. A bare permission (``User.Read``) is Microsoft Graph's (scopes-oidc)."""
    _, sep, rest = scope.partition("://")
    if sep and "/" not in rest:
        return scope, ""
    if "/" in scope:
        ident, _, name = scope.rpartition("/")
        return ident, name
    return GRAPH_APP_ID, scope


def parse_scopes(
    rt: Runtime,
    raw: str | None,
    tenant_id: str,
    *,
    interactive_client: App | None = None,
    app_only: bool = False,
) -> ScopeRequest:
    """The scopes of a request. A named scope the resource does not expose is AADSTS70011 at
    the token endpoint and, at /authorize (``interactive_client``), AADSTS650053 naming the
    client, as Entra answers a sign-in (quoted in MicrosoftDocs/azure-docs#37280, #67211;
    https://learn.microsoft.com/entra/identity-platform/reference-error-codes). A scope that
    names a resource but no permission (``api://<guid>``) is the format error AADSTS70011 in
    every delegated flow. For client credentials (``app_only``) every scope but an OIDC one must
    be ``<resource>/.default``, else AADSTS1002012, checked before the resource or the
    permission is looked up."""
    if not raw or not raw.split():
        raise e.missing_param("scope")
    if app_only and any(
        split_scope(s)[1].lower() != ".default" for s in raw.split() if s.lower() not in OIDC_SCOPES
    ):
        # Refused on its shape, whatever the scope names: an app role
        # (`https://graph.microsoft.com/User.Read.All`, `api://<mcp>/Tools.Call`), a bare name
        # (`User.Read.All`, `all-apis`), a delegated scope, or no permission at all
        # (`api://<guid>`, the commonest mistake) all get Entra's "/.default suffixed" answer,
        # never AADSTS70011 or an unknown resource. Entra's answer quoted for `User.Read.All`
        # (microsoftgraph/microsoft-graph-docs#14323), `all-apis` (databricks/databricks-sql-
        # nodejs#226), `<guid>/full_access` (MicrosoftDocs/azure-docs#99862); the client
        # credentials page: the scope is the resource identifier "suffixed with .default"
        # (v2-oauth2-client-creds-grant-flow).
        raise e.client_credentials_scope(raw)
    resources: dict[str, App] = {}
    requested: str | None = None
    names: list[str] = []
    oidc: set[str] = set()
    for s in raw.split():
        if s.lower() in OIDC_SCOPES:
            oidc.add(s.lower())
            continue
        ident, name = split_scope(s)
        if not name:
            # Refused on its shape, before the resource is looked up (e.scope_format cites
            # the quotes); client credentials were answered above.
            raise e.scope_format(raw)
        app = rt.world.resource(ident)
        if app is None or not (app.multi_tenant or app.tenant_id == tenant_id):
            raise e.resource_not_found(ident, tenant_id)
        resources[app.client_id] = app
        requested = ident
        names.append(name)
    if len(resources) > 1:
        # AADSTS28000: one resource per token request (scopes-oidc, "The .default scope").
        raise e.StsError(
            28000,
            "invalid_scope",
            "Provided value for the input parameter scope is not valid because it contains more "
            "than one resource.",
        )
    resource = next(iter(resources.values()), None)
    # Scope names are compared case-insensitively and carried on as registered (App.
    # registered_scope), so that `scope` and `scp` answer in the registered case.
    names = [".default" if n.lower() == ".default" else n for n in names]
    if ".default" in names and len(names) > 1:
        # ".default" asks for every configured permission; it cannot be combined with named
        # scopes of the resource (https://learn.microsoft.com/entra/identity-platform/
        # scopes-oidc#the-default-scope): AADSTS70011.
        raise e.StsError(
            70011,
            "invalid_scope",
            f"The provided value for the input parameter 'scope' is not valid. The scope "
            f"'{raw[:200]}' is not valid. .default scope can't be combined with resource-"
            "specific scopes.",
        )
    for i, n in enumerate(names):
        if n == ".default" or resource is None:
            continue
        registered = resource.registered_scope(n)
        if registered is not None:
            names[i] = registered
            continue
        if interactive_client is not None:
            raise e.StsError(
                650053,
                "invalid_client",
                f"The application '{interactive_client.name}' asked for scope '{n[:120]}' "
                f"that doesn't exist on the resource '{resource.client_id}'. Contact the "
                "app vendor.",
            )
        raise e.invalid_scope(f"{resource.app_id_uri or resource.client_id}/{n}")
    return ScopeRequest(
        resource=resource, names=tuple(names), oidc=frozenset(oidc), requested=requested
    )


def check_assignment(client: App, user: User) -> None:
    """AADSTS50105: the app requires user assignment and this user is not assigned."""
    if client.assignment_required and user.name not in client.assigned:
        raise e.StsError(
            50105,
            "invalid_grant",
            f"Your administrator has configured the application {client.name} "
            f"('{client.client_id}') to block users unless they are specifically granted "
            "('assigned') access to the application. The signed in user "
            f"'{user.upn}' is blocked because they are not a direct member of a group with "
            "access, nor had access directly assigned by an administrator.",
        )


def check_account(rt: Runtime, user: User, *, error: str = "invalid_grant") -> None:
    """Entra's refusal of every token for a user whose account is not usable (``account_state``,
    https://learn.microsoft.com/entra/identity-platform/reference-error-codes): disabled
    AADSTS50057, locked AADSTS50053, password expired AADSTS50055, session revoked by a password
    change AADSTS50133. ``error``: ``invalid_grant`` at the token endpoint, ``access_denied`` at
    sign-in."""
    code = ACCOUNT_STATES[rt.account_state(user)]
    if code is not None:
        raise e.account_state(code, error=error)


def check_member(
    rt: Runtime, user: User, tenant_id: str, client: App, *, client_name: str | None = None
) -> None:
    """AADSTS50020: ``user`` is neither a member of ``tenant_id`` nor a guest there (a sign-in,
    a refresh token redeemed at that tenant's endpoint, ``az --tenant``)
    (https://learn.microsoft.com/entra/identity-platform/reference-error-codes)."""
    if tenant_id == user.tenant_id or user.guest:
        return
    tenant = rt.world.tenant(tenant_id)
    raise e.StsError(
        50020,
        "invalid_request",
        f"User account '{user.upn}' from identity provider '{rt.issuer(user.tenant_id)}' does "
        f"not exist in tenant '{tenant.name if tenant else tenant_id}' and cannot access the "
        f"application '{client.client_id}'({client_name or client.name}) in that tenant. The "
        "account needs to be added as an external user in the tenant first.",
    )


def check_user_policies(user: User, resource: App | None, amr: Sequence[str]) -> None:
    """The resource's per-user policies, for every delegated token of ``user`` for it, whatever
    the grant or client (OBO, refresh, ROPC, the Azure CLI's token requests): a Conditional
    Access block is AADSTS53003; MFA required is AADSTS50076 with a claims challenge unless the
    sign-in behind the request performed MFA (``amr`` has ``mfa``)."""
    if resource is None:
        return
    ids = set(resource.identifiers)
    if ids & set(user.blocked_for):
        raise e.blocked_by_ca()
    if ids & set(user.mfa_required_for) and "mfa" not in amr:
        # Claims challenge for MFA (v2-oauth2-on-behalf-of-flow#error-response-example:
        # interaction_required + claims). The page's example names the policies "polids"; current
        # answers (as quoted by client code that handles them) use "capolids", which we send. The
        # client must redo an interactive sign-in with these claims. Stable per user and resource.
        polid = hashlib.sha256(f"{user.oid}|{resource.client_id}".encode()).hexdigest()[:32]
        claims = json.dumps(
            {"access_token": {"capolids": {"essential": True, "values": [polid]}}},
            separators=(",", ":"),
        )
        raise e.mfa_required(resource.client_id, claims)


def check_app_assignment(
    client_id: str, client_name: str, resource: App, roles: Sequence[str]
) -> None:
    """AADSTS501051: an app-only token (client credentials, managed identity) for a resource
    whose service principal requires assignment (``assignment_required``,
    appRoleAssignmentRequired) when the caller holds no app role on it
    (https://learn.microsoft.com/entra/identity-platform/reference-error-codes,
    https://learn.microsoft.com/entra/identity-platform/howto-restrict-your-app-to-a-set-of-users)."""
    if resource.assignment_required and not roles:
        raise e.invalid_grant(
            501051,
            f"Application '{client_id}'({client_name}) is not assigned to a role for the "
            f"application '{resource.app_id_uri or resource.client_id}'({resource.name}).",
        )


def check_self_token(req: ScopeRequest, client: App) -> None:
    """AADSTS90009: an app asking a token for itself must name itself by its client id GUID,
    not by an App ID URI (https://learn.microsoft.com/entra/identity-platform/
    reference-error-codes, TokenForItselfMissingIdenticalAppIdentifier)."""
    if req.resource is None or req.resource.client_id != client.client_id:
        return
    if (req.requested or "").rstrip("/").lower() == client.client_id:
        return
    raise e.StsError(
        90009,
        "invalid_request",
        f"Application '{client.client_id}'({client.name}) is requesting a token for itself. "
        "This scenario is supported only if resource is specified using the GUID based App "
        "Identifier.",
    )


def emitted_capabilities(form: Mapping[str, str], resource: App) -> list[str]:
    """The ``xms_cc`` claim Entra puts in a token for ``resource``: only ``cp1`` (the one
    capability defined, CAE), and only when the resource asks for the optional claim ``xms_cc``
    (https://learn.microsoft.com/entra/identity-platform/claims-challenge,
    https://learn.microsoft.com/entra/identity-platform/optional-claims-reference)."""
    if "xms_cc" not in resource.optional_claims:
        return []
    return ["cp1"] if any(v.lower() == "cp1" for v in client_capabilities(form)) else []


def client_capabilities(form: Mapping[str, str]) -> list[str]:
    """``claims={"access_token":{"xms_cc":{"values":["CP1"]}}}``: the client declares it can handle
    claims challenges (CAE); Entra copies the values into the token's ``xms_cc`` claim
    (https://learn.microsoft.com/entra/identity-platform/claims-challenge). Junk is ignored."""
    try:
        claims = json.loads(form.get("claims") or "{}")
        values = claims["access_token"]["xms_cc"]["values"]
    except (ValueError, KeyError, TypeError):
        return []
    return [str(v) for v in values] if isinstance(values, list) else []


def delegated_scopes(
    rt: Runtime, req: ScopeRequest, client: App, user: User, tenant_id: str
) -> tuple[str, ...]:
    """The ``scp`` the user may delegate in ``tenant_id`` (the tenant the token is issued in),
    or AADSTS65001 when consent is missing there."""
    assert req.resource is not None
    granted = rt.granted_scopes(user, client, req.resource, tenant_id=tenant_id)
    if req.is_default:
        if not granted:
            raise e.consent_required(client.client_id, client.name)
        return tuple(sorted(granted & set(req.resource.exposed_scopes) or granted))
    missing = [n for n in req.names if n not in granted]
    if missing:
        raise e.consent_required(client.client_id, client.name)
    return tuple(sorted(set(req.names)))


def app_roles(rt: Runtime, client_id: str, resource: App, tenant_id: str) -> tuple[str, ...]:
    """The app roles ``client_id`` holds on ``resource`` in ``tenant_id`` (the tenant the
    app-only token is issued in)."""
    return tuple(
        sorted(
            {
                r.role
                for r in rt.world.role_assignments
                if r.client_id == client_id
                and r.resource_id == resource.client_id
                and rt.world.grant_tenant(r) == tenant_id
            }
        )
    )


def user_subject(rt: Runtime, user: User, tenant_id: str, amr: Sequence[str] = ("pwd",)) -> Subject:
    return Subject(
        oid=user.oid,
        tid=tenant_id,
        upn=user.upn,
        name=user.display_name,
        home_tid=user.tenant_id,
        amr=tuple(amr),
    )


def mint_access(
    rt: Runtime,
    *,
    resource: App,
    client_id: str,
    client_acr: str,
    subject: Subject,
    scopes: Sequence[str] = (),
    roles: Sequence[str] = (),
    app_only: bool,
    lifetime: int | None = None,
    version: int | None = None,
    audience: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Sign an access token for ``resource``: v1 or v2 per its accessTokenAcceptedVersion.

    v2 ``aud`` is the resource's client id; v1 ``aud`` is its App ID URI as requested
    (access-token-claims-reference, "aud").
    """
    ver = version or resource.access_token_version
    if audience is None:
        audience = resource.client_id if ver == 2 else (resource.app_id_uri or resource.client_id)
    claims = access_token_claims(
        issuer=rt.issuer(subject.tid, ver),
        version=ver,
        audience=audience,
        client_id=client_id,
        client_acr=client_acr,
        subject=subject,
        scopes=scopes,
        roles=roles,
        app_only=app_only,
        lifetime=lifetime if lifetime is not None else rt.world.lifetimes.access_token,
        optional_claims=resource.optional_claims,
        home_issuer=rt.issuer(subject.home_tid, 2) if subject.home_tid else None,
        extra=extra,
    )
    token = sign(rt.keys, claims)
    rt.remember(token)
    return token


def user_token_response(
    rt: Runtime,
    *,
    req: ScopeRequest,
    client: App,
    client_acr: str,
    user: User,
    tenant_id: str,
    form: Mapping[str, str],
    nonce: str | None = None,
    amr: Sequence[str] = ("pwd",),
) -> dict[str, Any]:
    """A delegated token response as Entra's v2 endpoint returns it (65001 if not consented)."""
    scp: tuple[str, ...] = (
        delegated_scopes(rt, req, client, user, tenant_id) if req.resource else ()
    )
    subject = user_subject(rt, user, tenant_id, amr)
    lifetime = rt.world.lifetimes.access_token
    out: dict[str, Any] = {"token_type": "Bearer"}
    graph = rt.world.app(GRAPH_APP_ID)
    if req.resource is None and graph is not None:
        # Only OIDC scopes: Entra returns a Graph token carrying them (scopes-oidc, "openid").
        # `offline_access` alone is answered the same way, with the Graph token carrying it
        # (it is a Graph delegated permission): a success always carries an access_token
        # (RFC 6749 section 5.1), and a delegated token always a non-empty `scp`.
        req = ScopeRequest(resource=graph, names=(), oidc=req.oidc)
        scp = tuple(sorted(req.oidc - {"offline_access"})) or ("offline_access",)
    elif req.resource is not None and req.resource.client_id == GRAPH_APP_ID:
        # openid, profile and email are Microsoft Graph's delegated permissions: a Graph token
        # of a sign-in that asked for them carries them in scp (scopes-oidc), which is what
        # the userinfo endpoint reads (https://learn.microsoft.com/entra/identity-platform/userinfo).
        scp = tuple(dict.fromkeys((*scp, *sorted(req.oidc - {"offline_access"}))))
    if req.resource is not None:
        prefix = req.prefix()
        out["scope"] = " ".join(dict.fromkeys([prefix + s for s in scp] + sorted(req.oidc)))
        caps = emitted_capabilities(form, req.resource)
        out["access_token"] = mint_access(
            rt,
            resource=req.resource,
            client_id=client.client_id,
            client_acr=client_acr,
            subject=subject,
            scopes=scp,
            app_only=False,
            lifetime=lifetime,
            audience=req.v1_audience(),
            extra={"xms_cc": caps} if caps else None,
        )
    else:
        out["scope"] = " ".join(sorted(req.oidc))
    out["expires_in"] = lifetime
    out["ext_expires_in"] = lifetime
    if "offline_access" in req.oidc:
        # Refresh tokens are returned only with offline_access
        # (https://learn.microsoft.com/entra/identity-platform/refresh-tokens).
        # Remember what was asked; a redemption without `scope` falls back to what was granted.
        scopes = tuple(form.get("scope", "").split()) or (
            *(req.prefix() + n for n in (scp or req.names)),
            *sorted(req.oidc),
        )
        out["refresh_token"] = rt.new_refresh_token(
            RefreshRecord(
                user=user.name,
                client_id=client.client_id,
                scopes=scopes,
                tenant_id=tenant_id,
                expires=time.time() + rt.world.lifetimes.refresh_token,
                amr=tuple(amr),
            )
        )
    if "openid" in req.oidc:
        idt = sign(
            rt.keys,
            id_token_claims(
                issuer=rt.issuer(tenant_id, 2),
                client_id=client.client_id,
                subject=subject,
                nonce=nonce,
            ),
        )
        rt.remember(idt)
        out["id_token"] = idt
    if form.get("client_info") == "1":
        out["client_info"] = client_info(user.oid, user.tenant_id)
    return out
