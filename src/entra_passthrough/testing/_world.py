"""The emulator's world: tenants, apps, users, consent grants, federated credentials, lifetimes.

A :class:`World` is a frozen description. Build it with :meth:`World.default`, change it with the
``with_*`` methods, or load it from a JSON/TOML file with :meth:`World.from_file`. Mutable runtime
state (consent recorded at the authorize endpoint, refresh tokens, codes) lives in the running
emulator, never here.

Object ids are stable across runs (uuid5 of the object's name) so that a config file or a state
file can name them; secrets and certificates are generated per emulator.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import _ca

_NS = uuid.UUID("5d3b8e5a-7c1f-4f56-9a44-2f0c6b7e1a10")

#: The resource Microsoft Foundry's tokens are for (what a hosted agent receives).
FOUNDRY_AUDIENCE = "https://ai.azure.com"
#: The audience of a federated credential's assertion in the public cloud
#: (https://learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-managed-identity).
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
#: Client id of Microsoft's token exchange resource, which is the v2 ``aud`` of an MI token
#: requested for api://AzureADTokenExchange.
TOKEN_EXCHANGE_APP_ID = "fb60f99c-7a34-4190-8149-302f77469936"
#: Microsoft Graph's client id (the resource of bare scopes such as "User.Read").
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
#: The Azure CLI's public client id (the ``appid`` of tokens ``az`` obtains).
AZURE_CLI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
#: The directory Entra's errors name for that tenant.
MSA_DIRECTORY = "Microsoft Accounts"


def stable_id(*parts: str) -> str:
    """A GUID derived from names, stable across runs."""
    return str(uuid.uuid5(_NS, "/".join(parts)))


@dataclass(frozen=True)
class Tenant:
    name: str
    id: str
    domain: str
    #: the tenant setting "users can consent to apps"; off: every consent needs an administrator
    #: (AADSTS90094, https://learn.microsoft.com/entra/identity/enterprise-apps/configure-user-consent)
    user_consent: bool = True


@dataclass(frozen=True)
class FederatedCredential:
    """A trust on an app registration: a token from ``issuer`` about ``subject`` for ``audiences``.

    ``issuer=None`` means this emulator's own v2 issuer for the app's tenant (what a managed
    identity's token carries), since the emulator's URL is only known once it runs.
    """

    name: str
    subject: str
    issuer: str | None = None
    audiences: tuple[str, ...] = (TOKEN_EXCHANGE_AUDIENCE,)


@dataclass(frozen=True)
class App:
    """An app registration and its service principal.

    ``kind``: ``"app"`` (client and/or API), ``"agent_blueprint"`` or ``"agent_identity"`` (Entra
    Agent ID; an agent identity names its ``blueprint_id``).
    """

    name: str
    client_id: str
    tenant_id: str
    object_id: str
    secret: str | None = None
    #: the end of the secret's validity (a password credential's ``endDateTime``, UTC); past
    #: it the secret is refused with AADSTS7000222. ``None``: it never expires.
    secret_expires: dt.datetime | None = None
    certificate_pem: bytes | None = field(default=None, repr=False)
    certificate_thumbprint: str | None = None
    app_id_uri: str | None = None
    scope: str | None = None
    scopes: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    access_token_version: int = 2
    redirect_uris: tuple[str, ...] = ()
    public_client: bool = False
    multi_tenant: bool = False
    federated_credentials: tuple[FederatedCredential, ...] = ()
    optional_claims: tuple[str, ...] = ()
    kind: str = "app"
    blueprint_id: str | None = None
    #: client ids this API pre-authorizes ("Expose an API > Authorized client applications",
    #: ``api.preAuthorizedApplications``): they need no consent for its delegated scopes.
    #: https://learn.microsoft.com/entra/identity-platform/permissions-consent-overview
    pre_authorized: tuple[str, ...] = ()
    #: "Assignment required" on the enterprise app: only ``assigned`` users (names) may sign in
    #: to it (AADSTS50105, https://learn.microsoft.com/troubleshoot/entra/entra-id/app-integration/
    #: error-code-aadsts50105-user-not-assigned-role)
    assignment_required: bool = False
    assigned: tuple[str, ...] = ()
    #: delegated scopes of this API that only an administrator may consent to
    #: (``adminConsentRequired``; a user's consent answers AADSTS90094)
    admin_scopes: tuple[str, ...] = ()
    #: the client's configured permissions (``requiredResourceAccess``) as ``"<resource>/<scope>"``
    #: (resource = client id or App ID URI). When set, ``.default`` consents exactly these, and a
    #: resource not listed is AADSTS650057
    #: (https://learn.microsoft.com/entra/identity-platform/scopes-oidc#the-default-scope).
    required: tuple[str, ...] = ()
    #: a Microsoft first-party resource (Graph, Foundry, token exchange): Microsoft's own
    #: clients (Azure CLI, azd) are pre-consented to it in every tenant.
    first_party: bool = False
    #: Agent ID, on a blueprint: its inheritable permissions (``inheritablePermissions``) as
    #: ``"<resource>/<scope>"`` (``enumeratedScopes``) or ``"<resource>/*"`` (every scope,
    #: ``allAllowedScopes``); resource = name, client id or App ID URI. A child agent identity
    #: inherits a delegated scope only if it is listed here AND the blueprint holds a grant for
    #: it (otherwise AADSTS65001, as in Entra:
    #: https://learn.microsoft.com/entra/agent-id/concept-inheritable-permissions).
    inheritable: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never show the secret
        return f"App(name={self.name!r}, client_id={self.client_id!r})"

    @property
    def identifiers(self) -> tuple[str, ...]:
        """What a token's ``aud`` or a scope's resource part may name this app by."""
        ids = [self.client_id]
        if self.app_id_uri:
            ids.append(self.app_id_uri)
        return tuple(ids)

    @property
    def exposed_scopes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(([self.scope] if self.scope else []) + list(self.scopes)))

    def registered_scope(self, name: str) -> str | None:
        """The exposed scope ``name`` names, spelled as registered (``None``: none). Entra
        compares scope names case-insensitively and answers with the registered case
        (AzureAD/microsoft-authentication-library-for-go#214: "AAD itself treats scopes as case
        insensitive ... AAD will return it back in a 'corrected' case")."""
        key = name.lower()
        return next((s for s in self.exposed_scopes if s.lower() == key), None)

    def names_resource(self, ident: str) -> bool:
        """Whether ``ident`` (a name, client id or App ID URI, as in ``required`` and
        ``inheritable``) names this app (case and a trailing slash ignored)."""
        key = ident.rstrip("/").lower()
        return key in {i.rstrip("/").lower() for i in (*self.identifiers, self.name)}

    def inheritable_scopes(self, resource: App) -> frozenset[str]:
        """The scopes of ``resource`` this blueprint makes inheritable (``"*"``: all of them;
        empty: none, the resource is not listed)."""
        return frozenset(
            scope
            for ident, _, scope in (entry.rpartition("/") for entry in self.inheritable)
            if ident and scope and resource.names_resource(ident)
        )


@dataclass(frozen=True)
class User:
    name: str
    upn: str
    oid: str
    tenant_id: str
    password: str = field(repr=False)
    display_name: str
    #: resources (client id or App ID URI) for which this user must satisfy MFA (AADSTS50076)
    mfa_required_for: tuple[str, ...] = ()
    #: resources a Conditional Access policy blocks for this user (AADSTS53003)
    blocked_for: tuple[str, ...] = ()
    guest: bool = False
    #: the account's state (``ACCOUNT_STATES``): other than ``"enabled"``, every grant that acts
    #: for this user (sign-in, ROPC, code, refresh, OBO, device code, ``az``) is refused with
    #: Entra's code for it. ``EntraEmulator.set_account_state`` changes it while running.
    account_state: str = "enabled"

    def __post_init__(self) -> None:
        if self.account_state not in ACCOUNT_STATES:
            raise ValueError(
                f"user {self.name!r}: unknown account_state {self.account_state[:40]!r}; one of "
                f"{', '.join(ACCOUNT_STATES)}"
            )


#: A user's account states and the AADSTS code Entra refuses that user's token requests with
#: (https://learn.microsoft.com/entra/identity-platform/reference-error-codes): 50057 UserDisabled
#: ("The user object in Active Directory backing this account has been disabled"), 50053 IdsLocked
#: (too many sign-ins with a wrong password, or a sign-in from a malicious IP address), 50055
#: InvalidPasswordExpiredPassword, 50133 SsoArtifactRevoked ("The session isn't valid due to
#: password expiration or recent password change"). ``enabled``: none.
ACCOUNT_STATES: dict[str, int | None] = {
    "enabled": None,
    "disabled": 50057,
    "locked": 50053,
    "password_expired": 50055,
    "session_revoked": 50133,
}


@dataclass(frozen=True)
class ManagedIdentityPrincipal:
    """A managed identity of the emulated tenant (its service principal: client and object id;
    the token source that uses one is ``entra_passthrough.ManagedIdentity``).
    ``system_assigned``: the host's own identity, the one every managed
    identity endpoint answers with when the request names no identity; it cannot be a
    federated credential of an app (only user-assigned identities can:
    https://learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-managed-identity).
    """

    name: str
    client_id: str
    object_id: str
    tenant_id: str
    resource_id: str
    system_assigned: bool = False


@dataclass(frozen=True)
class Grant:
    """Delegated consent: ``client_id`` may call ``resource_id`` (client id) with ``scopes``.

    ``user=None`` is an admin (tenant-wide) consent. A grant holds in one tenant, as in Entra
    (an ``oauth2PermissionGrant`` is an object of the tenant where the consent was given):
    ``tenant_id``, or when ``None`` the client app's home tenant. A multi-tenant client used in
    another tenant needs a grant there.
    """

    client_id: str
    resource_id: str
    scopes: tuple[str, ...]
    user: str | None = None
    tenant_id: str | None = None


@dataclass(frozen=True)
class RoleAssignment:
    """An application permission (app role) granted to a client or managed identity, in one
    tenant (an ``appRoleAssignment`` belongs to the client's service principal in that tenant):
    ``tenant_id``, or when ``None`` the client's home tenant."""

    client_id: str
    resource_id: str
    role: str
    tenant_id: str | None = None


@dataclass(frozen=True)
class Lifetimes:
    access_token: int = 3600
    refresh_token: int = 90 * 24 * 3600
    code: int = 600
    #: A device code's and its user code's ``expires_in`` (Entra: 15 minutes,
    #: v2-oauth2-device-code); 0 makes every code expired at its first poll (tests).
    device_code: int = 900


@dataclass(frozen=True)
class World:
    """Everything the emulator knows. Example::

    world = World.default().with_user(
        User(name="dave", upn="dave@contoso.onmicrosoft.com", oid=stable_id("dave"),
             tenant_id=World.default().tenants[0].id, password="pw", display_name="Dave"))
    with EntraEmulator(world=world) as idp: ...
    """

    tenants: tuple[Tenant, ...]
    apps: tuple[App, ...] = ()
    users: tuple[User, ...] = ()
    managed_identities: tuple[ManagedIdentityPrincipal, ...] = ()
    grants: tuple[Grant, ...] = ()
    role_assignments: tuple[RoleAssignment, ...] = ()
    lifetimes: Lifetimes = Lifetimes()

    # ---- lookups -------------------------------------------------------------------------
    def tenant(self, name_or_id: str) -> Tenant | None:
        key = name_or_id.lower()
        for t in self.tenants:
            if key in (t.id, t.name.lower(), t.domain.lower()):
                return t
        return None

    def app(self, ident: str) -> App | None:
        """By name, client id or App ID URI (trailing slash ignored, as Entra does)."""
        key = ident.rstrip("/")
        for a in self.apps:
            if key in (a.name, a.client_id) or (a.app_id_uri and key == a.app_id_uri.rstrip("/")):
                return a
        return None

    def resource(self, ident: str) -> App | None:
        """On the wire: by client id or App ID URI only (never by our display names), with
        trailing slashes ignored (https://management.core.windows.net// works, as in Entra)."""
        key = ident.rstrip("/").lower()
        for a in self.apps:
            if key == a.client_id or (a.app_id_uri and key == a.app_id_uri.rstrip("/").lower()):
                return a
        return None

    def user(self, ident: str) -> User | None:
        key = ident.lower()
        for u in self.users:
            if key in (u.name.lower(), u.upn.lower(), u.oid):
                return u
        return None

    def home_tenant(self, client_id: str) -> str:
        """The tenant an app or managed identity (by client id) is registered in: where its
        grants and role assignments hold unless they name another tenant."""
        for a in self.apps:
            if a.client_id == client_id:
                return a.tenant_id
        for m in self.managed_identities:
            if m.client_id == client_id:
                return m.tenant_id
        return self.tenants[0].id

    def grant_tenant(self, grant: Grant | RoleAssignment) -> str:
        """The tenant a grant or role assignment holds in."""
        return grant.tenant_id or self.home_tenant(grant.client_id)

    def identity(self, ident: str) -> ManagedIdentityPrincipal | None:
        for m in self.managed_identities:
            if ident in (m.name, m.client_id, m.object_id, m.resource_id):
                return m
        return None

    # ---- builder -------------------------------------------------------------------------
    def with_app(self, app: App) -> World:
        return replace(self, apps=(*(a for a in self.apps if a.name != app.name), app))

    def with_user(self, user: User) -> World:
        return replace(self, users=(*(u for u in self.users if u.name != user.name), user))

    def with_grant(self, grant: Grant) -> World:
        return replace(self, grants=(*self.grants, grant))

    def with_role_assignment(self, assignment: RoleAssignment) -> World:
        return replace(self, role_assignments=(*self.role_assignments, assignment))

    def with_managed_identity(self, mi: ManagedIdentityPrincipal) -> World:
        return replace(self, managed_identities=(*self.managed_identities, mi))

    def with_lifetimes(self, lifetimes: Lifetimes) -> World:
        return replace(self, lifetimes=lifetimes)

    def with_foundry_platform_credential(
        self, blueprint: str = "blueprint", *, trusted: bool = True
    ) -> World:
        """A Foundry hosted agent's blueprint credential, as Microsoft describes it (not verified
        against a live Foundry): inside the container the managed identity endpoint is Foundry's
        hosted-agent token service, which answers for the blueprint's client id
        (``FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID``, "the managed identity client ID of the agent
        blueprint"), and the blueprint trusts that token as a platform-managed federated
        credential. Modelled as a user-assigned identity whose client id is the blueprint's and,
        when ``trusted``, a federated credential of the blueprint naming it (without it Entra
        refuses the blueprint's T1 request: AADSTS700213)."""
        app = self.app(blueprint)
        if app is None or app.kind != "agent_blueprint":
            raise ValueError(f"{blueprint!r} is not an agent blueprint of this world")
        platform = ManagedIdentityPrincipal(
            name=f"foundry-platform-{app.name}",
            client_id=app.client_id,
            object_id=stable_id("foundry-platform", app.client_id),
            tenant_id=app.tenant_id,
            resource_id=f"/providers/Microsoft.CognitiveServices/agents/{app.name}",
        )
        world = self.with_managed_identity(platform)
        if trusted:
            fic = FederatedCredential(name="foundry-platform", subject=platform.object_id)
            world = world.with_app(
                replace(app, federated_credentials=(*app.federated_credentials, fic))
            )
        return world

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def default(cls) -> World:
        """The default world (docs/emulator.md): fresh secrets and certificates each call."""
        from ._default_world import default_world

        return default_world()

    @classmethod
    def from_file(cls, path: str | Path) -> World:
        """Load a JSON (``.json``) or TOML (anything else) world description (docs/emulator.md)."""
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        try:
            data: Mapping[str, Any] = (
                json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
            )
        except RecursionError:
            # Python's parsers recurse per level: a ValueError like any other unreadable file.
            raise ValueError(
                f"emulator config: {p.name} is nested too deeply to be read; a world file is a "
                "table of tenants, apps and users (docs/emulator.md)"
            ) from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> World:
        from ._config import world_from_dict

        return world_from_dict(data)


def new_certificate(common_name: str) -> tuple[bytes, str]:
    key = _ca.new_rsa_key()
    cert = _ca.self_signed(key, common_name)
    return _ca.key_pem(key) + _ca.cert_pem(cert), _ca.thumbprint_sha1(cert)


def new_secret() -> str:
    return "emu~" + secrets.token_urlsafe(30)
