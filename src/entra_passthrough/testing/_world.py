"""The emulator's world: tenants, apps, users, consent grants, federated credentials, lifetimes.

A :class:`World` is a frozen description. Build it with :meth:`World.default`, change it with the
``with_*`` methods, or load it from a JSON/TOML file with :meth:`World.from_file`. Mutable runtime
state (consent recorded at the authorize endpoint, refresh tokens, codes) lives in the running
emulator, never here.

Object ids are stable across runs (uuid5 of the object's name) so that a config file or a state
file can name them; secrets and certificates are generated per emulator.
"""

from __future__ import annotations

import json
import secrets
import tomllib
import uuid
from collections.abc import Iterable, Mapping
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
#: The Azure CLI's public client id (the ``appid`` of tokens ``az`` obtains).
AZURE_CLI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"


def stable_id(*parts: str) -> str:
    """A GUID derived from names, stable across runs."""
    return str(uuid.uuid5(_NS, "/".join(parts)))


@dataclass(frozen=True)
class Tenant:
    name: str
    id: str
    domain: str


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


@dataclass(frozen=True)
class ManagedIdentity:
    name: str
    client_id: str
    object_id: str
    tenant_id: str
    resource_id: str


@dataclass(frozen=True)
class Grant:
    """Delegated consent: ``client_id`` may call ``resource_id`` (client id) with ``scopes``.

    ``user=None`` is an admin (tenant-wide) consent.
    """

    client_id: str
    resource_id: str
    scopes: tuple[str, ...]
    user: str | None = None


@dataclass(frozen=True)
class RoleAssignment:
    """An application permission (app role) granted to a client or managed identity."""

    client_id: str
    resource_id: str
    role: str


@dataclass(frozen=True)
class Lifetimes:
    access_token: int = 3600
    refresh_token: int = 90 * 24 * 3600
    code: int = 600


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
    managed_identities: tuple[ManagedIdentity, ...] = ()
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

    def user(self, ident: str) -> User | None:
        key = ident.lower()
        for u in self.users:
            if key in (u.name.lower(), u.upn.lower(), u.oid):
                return u
        return None

    def identity(self, ident: str) -> ManagedIdentity | None:
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

    def with_managed_identity(self, mi: ManagedIdentity) -> World:
        return replace(self, managed_identities=(*self.managed_identities, mi))

    def with_lifetimes(self, lifetimes: Lifetimes) -> World:
        return replace(self, lifetimes=lifetimes)

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def default(cls) -> World:
        return _default_world()

    @classmethod
    def from_file(cls, path: str | Path) -> World:
        """Load a JSON (``.json``) or TOML (anything else) world description (docs/emulator.md)."""
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        data: Mapping[str, Any] = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> World:
        return _from_dict(data)


def new_certificate(common_name: str) -> tuple[bytes, str]:
    key = _ca.new_rsa_key()
    cert = _ca.self_signed(key, common_name)
    return _ca.key_pem(key) + _ca.cert_pem(cert), _ca.thumbprint_sha1(cert)


def new_secret() -> str:
    return "emu~" + secrets.token_urlsafe(30)


def _tenant(name: str) -> Tenant:
    return Tenant(name=name, id=stable_id("tenant", name), domain=f"{name}.onmicrosoft.com")


def _default_world() -> World:
    contoso, fabrikam = _tenant("contoso"), _tenant("fabrikam")
    tid = contoso.id
    mi = ManagedIdentity(
        name="agent-mi",
        client_id=stable_id("mi", "agent-mi"),
        object_id=stable_id("mi-object", "agent-mi"),
        tenant_id=tid,
        resource_id=f"/subscriptions/{stable_id('sub')}/resourceGroups/rg/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/agent-mi",
    )
    mi_fic = FederatedCredential(name="agent-mi", subject=mi.object_id)
    pem, thumb = new_certificate("agent")
    agent_id = stable_id("app", "agent")
    agent = App(
        name="agent",
        client_id=agent_id,
        tenant_id=tid,
        object_id=stable_id("sp", "agent"),
        secret=new_secret(),
        certificate_pem=pem,
        certificate_thumbprint=thumb,
        app_id_uri=f"api://{agent_id}",
        scope="access_as_user",
        redirect_uris=("http://localhost/callback", "http://127.0.0.1/callback"),
        multi_tenant=True,
        federated_credentials=(mi_fic,),
    )
    mcp_id = stable_id("app", "mcp")
    mcp = App(
        name="mcp",
        client_id=mcp_id,
        tenant_id=tid,
        object_id=stable_id("sp", "mcp"),
        app_id_uri=f"api://{mcp_id}",
        scope="access_as_user",
        roles=("Tools.Call",),
        access_token_version=2,
        multi_tenant=True,
        # idtyp is an optional claim (access-token-claims-reference); the mcp API asks for it so
        # that tests see both shapes (legacy_api does not).
        optional_claims=("idtyp",),
    )
    legacy_id = stable_id("app", "legacy-api")
    legacy = App(
        name="legacy_api",
        client_id=legacy_id,
        tenant_id=tid,
        object_id=stable_id("sp", "legacy-api"),
        app_id_uri=f"api://{legacy_id}",
        scope="user_impersonation",
        roles=("Data.Read",),
        access_token_version=1,
    )
    foundry = App(
        name="foundry",
        client_id=stable_id("app", "foundry"),
        tenant_id=tid,
        object_id=stable_id("sp", "foundry"),
        app_id_uri=FOUNDRY_AUDIENCE,
        scope="user_impersonation",
        access_token_version=1,
        multi_tenant=True,
    )
    exchange = App(
        name="token_exchange",
        client_id=TOKEN_EXCHANGE_APP_ID,
        tenant_id=tid,
        object_id=stable_id("sp", "token-exchange"),
        app_id_uri=TOKEN_EXCHANGE_AUDIENCE,
        access_token_version=2,
        multi_tenant=True,
    )
    bp_id = stable_id("app", "agent-blueprint")
    blueprint = App(
        name="blueprint",
        client_id=bp_id,
        tenant_id=tid,
        object_id=stable_id("sp", "agent-blueprint"),
        secret=new_secret(),
        app_id_uri=f"api://{bp_id}",
        scope="access_as_user",
        federated_credentials=(mi_fic,),
        kind="agent_blueprint",
    )
    agent_identity = App(
        name="agent_identity",
        client_id=stable_id("app", "agent-identity"),
        tenant_id=tid,
        object_id=stable_id("sp", "agent-identity"),
        kind="agent_identity",
        blueprint_id=bp_id,
    )
    frontend_id = stable_id("app", "frontend")
    frontend = App(
        name="frontend",
        client_id=frontend_id,
        tenant_id=tid,
        object_id=stable_id("sp", "frontend"),
        redirect_uris=("http://localhost", "http://localhost/callback"),
        public_client=True,
        multi_tenant=True,
    )
    azure_cli = App(
        name="azure_cli",
        client_id=AZURE_CLI_CLIENT_ID,
        tenant_id=tid,
        object_id=stable_id("sp", "azure-cli"),
        public_client=True,
        multi_tenant=True,
    )

    def user(name: str, t: Tenant, display: str, **kw: Any) -> User:
        return User(
            name=name,
            upn=f"{name}@{t.domain}",
            oid=stable_id("user", t.name, name),
            tenant_id=t.id,
            password=f"{name}-password",
            display_name=display,
            **kw,
        )

    users = (
        user("alice", contoso, "Alice Archer"),
        user("bob", contoso, "Bob Baker"),
        user("carol", contoso, "Carol Carter"),
        user("guest", fabrikam, "Gina Guest", guest=True),
        user("dave", contoso, "Dave Dalton (MFA for mcp)", mfa_required_for=(mcp.client_id,)),
        user("erin", contoso, "Erin Ellis (blocked from mcp)", blocked_for=(mcp.client_id,)),
    )
    consented = ("alice", "bob", "guest", "dave", "erin")
    grants: list[Grant] = []
    for name in consented:
        grants.append(Grant(agent.client_id, mcp.client_id, ("access_as_user",), user=name))
        grants.append(Grant(blueprint.client_id, mcp.client_id, ("access_as_user",), user=name))
        grants.append(Grant(agent_identity.client_id, mcp.client_id, ("access_as_user",), name))
    # Tenant-wide admin consent: the agent may call the legacy API for everyone, and Foundry
    # (a first-party app in reality) may be signed into by anyone; az is pre-authorized.
    grants.append(Grant(agent.client_id, legacy.client_id, ("user_impersonation",)))
    grants.append(Grant(AZURE_CLI_CLIENT_ID, "*", ("*",)))
    # The frontend people sign in to (azp of user tokens minted for the agent) is pre-consented.
    grants.append(Grant(frontend.client_id, agent.client_id, ("access_as_user",)))
    grants.append(Grant(frontend.client_id, mcp.client_id, ("access_as_user",)))
    roles = (
        RoleAssignment(agent.client_id, mcp.client_id, "Tools.Call"),
        RoleAssignment(mi.client_id, mcp.client_id, "Tools.Call"),
    )
    return World(
        tenants=(contoso, fabrikam),
        apps=(
            agent,
            mcp,
            legacy,
            foundry,
            exchange,
            blueprint,
            agent_identity,
            frontend,
            azure_cli,
        ),
        users=users,
        managed_identities=(mi,),
        grants=tuple(grants),
        role_assignments=roles,
    )


def _strs(value: Iterable[Any] | None) -> tuple[str, ...]:
    return tuple(str(v) for v in (value or ()))


def _from_dict(data: Mapping[str, Any]) -> World:
    world = _default_world() if data.get("include_defaults", True) else World(tenants=())
    for t in data.get("tenants", ()):
        tenant = Tenant(
            name=t["name"],
            id=t.get("id") or stable_id("tenant", t["name"]),
            domain=t.get("domain") or f"{t['name']}.onmicrosoft.com",
        )
        world = replace(world, tenants=(*(x for x in world.tenants if x.name != t["name"]), tenant))

    def tenant_id(raw: Mapping[str, Any]) -> str:
        name = raw.get("tenant") or world.tenants[0].name
        found = world.tenant(str(name))
        if found is None:
            raise ValueError(f"unknown tenant {name!r} in emulator config")
        return found.id

    for a in data.get("apps", ()):
        cid = a.get("client_id") or stable_id("app", a["name"])
        pem, thumb = (None, None)
        if a.get("certificate"):
            pem, thumb = new_certificate(a["name"])
        secret = a.get("secret")
        if secret is True or (secret is None and a.get("confidential", True) and not a.get("api")):
            secret = new_secret()
        fics = tuple(
            FederatedCredential(
                name=f.get("name", "fic"),
                subject=_mi_subject(world, f["subject"]),
                issuer=f.get("issuer"),
                audiences=_strs(f.get("audiences")) or (TOKEN_EXCHANGE_AUDIENCE,),
            )
            for f in a.get("federated_credentials", ())
        )
        app_id_uri = a.get("app_id_uri")
        if app_id_uri is None and (a.get("scope") or a.get("api")):
            app_id_uri = f"api://{cid}"
        world = world.with_app(
            App(
                name=a["name"],
                client_id=cid,
                tenant_id=tenant_id(a),
                object_id=a.get("object_id") or stable_id("sp", a["name"]),
                secret=secret or None,
                certificate_pem=pem,
                certificate_thumbprint=thumb,
                app_id_uri=app_id_uri,
                scope=a.get("scope"),
                scopes=_strs(a.get("scopes")),
                roles=_strs(a.get("roles")),
                access_token_version=int(a.get("access_token_version", 2)),
                redirect_uris=_strs(a.get("redirect_uris")),
                public_client=bool(a.get("public_client", False)),
                multi_tenant=bool(a.get("multi_tenant", False)),
                federated_credentials=fics,
                optional_claims=_strs(a.get("optional_claims")),
                kind=a.get("kind", "app"),
                blueprint_id=_app_id(world, a.get("blueprint")),
            )
        )
    for u in data.get("users", ()):
        t = world.tenant(u.get("tenant") or world.tenants[0].name)
        if t is None:
            raise ValueError(f"unknown tenant for user {u['name']!r}")
        world = world.with_user(
            User(
                name=u["name"],
                upn=u.get("upn") or f"{u['name']}@{t.domain}",
                oid=u.get("oid") or stable_id("user", t.name, u["name"]),
                tenant_id=t.id,
                password=u.get("password") or f"{u['name']}-password",
                display_name=u.get("display_name") or u["name"].title(),
                mfa_required_for=tuple(
                    _app_id(world, x) or x for x in u.get("mfa_required_for", ())
                ),
                blocked_for=tuple(_app_id(world, x) or x for x in u.get("blocked_for", ())),
                guest=bool(u.get("guest", False)),
            )
        )
    for m in data.get("managed_identities", ()):
        world = world.with_managed_identity(
            ManagedIdentity(
                name=m["name"],
                client_id=m.get("client_id") or stable_id("mi", m["name"]),
                object_id=m.get("object_id") or stable_id("mi-object", m["name"]),
                tenant_id=tenant_id(m),
                resource_id=m.get("resource_id") or f"/mi/{m['name']}",
            )
        )
    for g in data.get("grants", ()):
        world = world.with_grant(
            Grant(
                client_id=_app_id(world, g["client"]) or g["client"],
                resource_id=_app_id(world, g["resource"]) or g["resource"],
                scopes=_strs(g.get("scopes")),
                user=g.get("user"),
            )
        )
    for r in data.get("role_assignments", ()):
        client = _app_id(world, r["client"]) or _mi_client(world, r["client"]) or r["client"]
        world = world.with_role_assignment(
            RoleAssignment(client, _app_id(world, r["resource"]) or r["resource"], r["role"])
        )
    if "lifetimes" in data:
        world = world.with_lifetimes(Lifetimes(**{k: int(v) for k, v in data["lifetimes"].items()}))
    return world


def _app_id(world: World, ident: str | None) -> str | None:
    if ident is None:
        return None
    app = world.app(ident)
    return app.client_id if app else None


def _mi_client(world: World, ident: str) -> str | None:
    mi = world.identity(ident)
    return mi.client_id if mi else None


def _mi_subject(world: World, ident: str) -> str:
    mi = world.identity(ident)
    return mi.object_id if mi else ident
