"""A user signing in to a client at Entra's sign-in page: the checks and the consent decision
that ``/authorize`` and the device code verification page share.

Both pages are the same sign-in for Entra: the device code flow's user "signs in and consents"
at the verification page exactly as at the authorization endpoint
(https://learn.microsoft.com/entra/identity-platform/v2-oauth2-device-code, "the user ... is
asked to sign in ... and consent"), so whatever Entra checks at one it checks at the other. One
function decides for both (``sign_in``); the two handlers only differ in how they carry the
answer back (a redirect to the client, or the device code poll).

The rules, in the order they are checked:

* tenant membership: a user signs in to the tenant of the authority (or, for ``common`` /
  ``organizations``, their home tenant); a user of another tenant who is not a guest there is
  AADSTS50020 (https://learn.microsoft.com/entra/identity-platform/reference-error-codes);
* app assignment: AADSTS50105 when the client requires assignment and the user is not assigned
  (https://learn.microsoft.com/entra/identity-platform/howto-restrict-your-app-to-a-set-of-users);
* the scopes (AADSTS650053, 650057, 70011, 28000, 9010010 for ``resource``);
* Conditional Access: a policy that blocks the user for the resource is AADSTS53003;
* consent (https://learn.microsoft.com/entra/identity-platform/consent-types-developer,
  https://learn.microsoft.com/entra/identity-platform/scopes-oidc#the-default-scope): the prompt
  lists the permissions not yet granted (``.default``: the client's configured permissions,
  nothing once a grant exists); ``prompt=consent`` (``/authorize`` only) lists every requested
  one. What the user may not consent to (an admin-only scope, a tenant without user consent) is
  AADSTS90094 (https://learn.microsoft.com/entra/identity/enterprise-apps/configure-user-consent);
  accepting records a user grant of exactly the listed permissions;
* MFA: the sign-in performs the MFA a policy requires for the resource, or that a claims
  challenge asks for (``capolids``, ``acrs``: https://learn.microsoft.com/entra/identity-platform/claims-challenge),
  so the token's ``amr`` carries ``mfa`` in both flows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from . import _errors as e
from ._issue import ScopeRequest, check_account, check_assignment, check_member, parse_scopes
from ._state import Runtime
from ._world import App, Tenant, User


@dataclass(frozen=True)
class SignIn:
    """What a sign-in decided: the tenant of the tokens, the scopes, the consent prompt (empty:
    none to show) and the authentication methods the sign-in performed."""

    user: User
    client: App
    tenant_id: str
    req: ScopeRequest
    #: The permissions the consent prompt lists (empty: no prompt).
    prompt: tuple[str, ...]
    amr: tuple[str, ...]

    def check_may_consent(self, rt: Runtime) -> None:
        """AADSTS90094 when the user may not consent to what the prompt lists."""
        if self.prompt and self.req.resource is not None:
            check_user_may_consent(rt, self.tenant_id, self.req.resource, list(self.prompt))

    def accept(self, rt: Runtime) -> None:
        """The user accepts the consent prompt: a user grant of the listed permissions."""
        if not self.prompt or self.req.resource is None:
            return
        self.check_may_consent(rt)
        rt.grant_consent(
            self.user.name,
            self.client.client_id,
            self.req.resource.client_id,
            self.prompt,
            tenant_id=self.tenant_id,  # consent is given in the tenant signed in to
        )


def sign_in(
    rt: Runtime,
    *,
    client: App,
    user: User,
    tenant: Tenant | None,
    params: Mapping[str, str],
    force_consent: bool = False,
) -> SignIn:
    """The checks of a sign-in of ``user`` to ``client`` at the authority's ``tenant`` (``None``
    for ``common``/``organizations``) for ``params`` (``scope``, ``claims``, ``resource``), and
    its consent decision. Raises ``StsError`` with Entra's code for the first rule refused."""
    from ._token_endpoint import check_resource_param

    tid = tenant.id if tenant else user.tenant_id
    # The account itself first: disabled, locked, password expired, session revoked.
    check_account(rt, user, error="access_denied")
    # AADSTS50020: the user is not a member (or guest) of this tenant.
    check_member(rt, user, tid, client)
    check_assignment(client, user)
    req = parse_scopes(rt, params.get("scope"), tid, interactive_client=client)
    # RFC 8707 `resource` is checked against the scopes too (AADSTS9010010; what MCP clients
    # that send it see, docs/platform-facts.md).
    check_resource_param(params, req)
    if "openid" not in req.oidc and req.resource is None:
        raise e.missing_param("scope")
    prompt: list[str] = []
    if req.resource is not None:
        granted = rt.granted_scopes(user, client, req.resource, tenant_id=tid)
        if req.is_default and granted and not force_consent:
            # Static consent already given (by the user or an administrator): .default is the
            # granted permissions, nothing to ask (scopes-oidc, "The .default scope").
            wanted: list[str] = []
        else:
            wanted = default_scopes(client, req.resource) if req.is_default else list(req.names)
        prompt = wanted if force_consent else [s for s in wanted if s not in granted]
        if set(req.resource.identifiers) & set(user.blocked_for):
            raise e.StsError(53003, "access_denied", e.blocked_by_ca().text)
    amr: tuple[str, ...] = ("pwd",)
    if (
        req.resource is not None and set(req.resource.identifiers) & set(user.mfa_required_for)
    ) or asks_for_step_up(params.get("claims")):
        # The interactive sign-in performs the MFA the policy asks for, also when the client
        # comes back with the claims challenge an OBO answer carried (AADSTS50076 + claims:
        # v2-oauth2-on-behalf-of-flow, "Error response example"; claims-challenge).
        amr = ("pwd", "mfa")
    return SignIn(
        user=user,
        client=client,
        tenant_id=tid,
        req=req,
        prompt=tuple(dict.fromkeys(prompt)),
        amr=amr,
    )


def asks_for_step_up(raw: str | None) -> bool:
    """Whether a sign-in request's ``claims`` asks for Conditional Access policies or an
    authentication context (``capolids``, ``acrs``, ``amr``): the sign-in then performs MFA."""
    if not raw:
        return False
    try:
        claims = json.loads(raw)
    except ValueError:
        return False
    token = claims.get("access_token") if isinstance(claims, dict) else None
    return isinstance(token, dict) and bool({"capolids", "polids", "acrs", "amr"} & set(token))


def default_scopes(client: App, resource: App) -> list[str]:
    """What ``.default`` asks the user to consent to on ``resource``: the client's configured
    permissions for it (``requiredResourceAccess``, static consent). A client that configures
    none for that resource (none at all included) gets AADSTS650057
    (https://learn.microsoft.com/entra/identity-platform/scopes-oidc#the-default-scope,
    https://learn.microsoft.com/entra/identity-platform/consent-types-developer)."""
    mine = []
    for entry in client.required:
        ident, _, scope = entry.rpartition("/")
        if ident.rstrip("/").lower() in {
            i.rstrip("/").lower() for i in (*resource.identifiers, resource.name)
        }:
            mine.append(resource.registered_scope(scope) or scope)
    if not mine:
        raise e.StsError(
            650057,
            "invalid_client",
            "Invalid resource. The client has requested access to a resource which is not listed "
            "in the requested permissions in the client's application registration. Client app "
            f"ID: {client.client_id}({client.name}). Resource value from request: "
            f"{resource.app_id_uri or resource.client_id}.",
        )
    return mine


def check_user_may_consent(rt: Runtime, tenant_id: str, resource: App, scopes: list[str]) -> None:
    """AADSTS90094: a user cannot consent to an admin-only scope, nor to anything in a tenant
    whose setting lets no user consent
    (https://learn.microsoft.com/entra/identity/enterprise-apps/configure-user-consent)."""
    tenant = rt.world.tenant(tenant_id)
    admin_only = [s for s in scopes if s in resource.admin_scopes]
    if admin_only or (tenant is not None and not tenant.user_consent):
        raise e.StsError(
            90094,
            "consent_required",
            "The grant requires admin permission. An administrator must consent to "
            f"{', '.join(admin_only or scopes)[:200]} for this application.",
        )
