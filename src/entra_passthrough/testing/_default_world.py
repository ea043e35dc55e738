"""The default world the emulator starts with (printed by ``entra-passthrough emulator``)."""

from __future__ import annotations

import threading
from typing import Any

from ._world import (
    AZURE_CLI_CLIENT_ID,
    FOUNDRY_AUDIENCE,
    GRAPH_APP_ID,
    TOKEN_EXCHANGE_APP_ID,
    TOKEN_EXCHANGE_AUDIENCE,
    App,
    FederatedCredential,
    Grant,
    ManagedIdentityPrincipal,
    RoleAssignment,
    Tenant,
    User,
    World,
    new_certificate,
    new_secret,
    stable_id,
)


def _tenant(name: str) -> Tenant:
    return Tenant(name=name, id=stable_id("tenant", name), domain=f"{name}.onmicrosoft.com")


_AGENT_CERTIFICATE: tuple[bytes, str] | None = None
_AGENT_CERTIFICATE_LOCK = threading.Lock()


def _agent_certificate() -> tuple[bytes, str]:
    """The default world's agent certificate (PEM key + certificate, thumbprint), made once per
    process: every default world registers the same apps (their ids are ``stable_id``s), and an
    RSA key costs ~50 ms of CPU where a test suite starts hundreds of emulators. Signing keys,
    secrets and a world file's certificates are still made per emulator."""
    global _AGENT_CERTIFICATE
    with _AGENT_CERTIFICATE_LOCK:
        if _AGENT_CERTIFICATE is None:
            _AGENT_CERTIFICATE = new_certificate("agent")
        return _AGENT_CERTIFICATE


def default_world() -> World:
    contoso, fabrikam = _tenant("contoso"), _tenant("fabrikam")
    tid = contoso.id
    mi = ManagedIdentityPrincipal(
        name="agent-mi",
        client_id=stable_id("mi", "agent-mi"),
        object_id=stable_id("mi-object", "agent-mi"),
        tenant_id=tid,
        resource_id=f"/subscriptions/{stable_id('sub')}/resourceGroups/rg/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/agent-mi",
    )
    # The host's own (system-assigned) identity: what every managed identity endpoint answers
    # with when the request names no identity. It cannot be a federated credential.
    host_mi = ManagedIdentityPrincipal(
        name="agent-host",
        client_id=stable_id("mi", "agent-host"),
        object_id=stable_id("mi-object", "agent-host"),
        tenant_id=tid,
        resource_id=f"/subscriptions/{stable_id('sub')}/resourceGroups/rg/providers/"
        "Microsoft.Web/sites/agent-host",
        system_assigned=True,
    )
    mi_fic = FederatedCredential(name="agent-mi", subject=mi.object_id)
    pem, thumb = _agent_certificate()
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
        # Configured permissions (requiredResourceAccess): what ".default" consents to.
        required=("mcp/access_as_user", "legacy_api/user_impersonation", "graph/User.Read"),
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
        # az / azd (one first-party client) are refused a custom API unless it pre-authorizes
        # them (AADSTS65001); the developer path (AzureCli) calls this API.
        pre_authorized=(AZURE_CLI_CLIENT_ID,),
        access_token_version=2,
        multi_tenant=True,
        # idtyp is an optional claim (access-token-claims-reference); the mcp API asks for it so
        # that tests see both shapes (legacy_api does not).
        # xms_cc: the API handles claims challenges (CAE), so tokens for it say whether the
        # client can (claims-challenge).
        optional_claims=("idtyp", "xms_cc"),
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
        pre_authorized=(AZURE_CLI_CLIENT_ID,),
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
        first_party=True,
    )
    exchange = App(
        name="token_exchange",
        client_id=TOKEN_EXCHANGE_APP_ID,
        tenant_id=tid,
        object_id=stable_id("sp", "token-exchange"),
        app_id_uri=TOKEN_EXCHANGE_AUDIENCE,
        access_token_version=2,
        multi_tenant=True,
        first_party=True,
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
        required=("mcp/access_as_user", "graph/User.Read"),
        # What its agent identities inherit (inheritablePermissions, allAllowedScopes for the
        # MCP API): the blueprint's grants on mcp, not its Graph grant (AADSTS65001 for an
        # agent identity asking Graph, as in Entra when Graph is not inheritable).
        inheritable=("mcp/*",),
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
        required=("agent/access_as_user", "mcp/access_as_user", "graph/User.Read"),
    )
    # Microsoft Graph stands for "the resource of bare scopes" (User.Read) and of sign-ins that ask
    # only for OIDC scopes (Entra then returns a Graph token: scopes-oidc).
    graph = App(
        name="graph",
        client_id=GRAPH_APP_ID,
        tenant_id=tid,
        object_id=stable_id("sp", "graph"),
        app_id_uri="https://graph.microsoft.com",
        scopes=("User.Read", "openid", "profile", "email"),
        access_token_version=1,
        multi_tenant=True,
        first_party=True,
    )
    azure_cli = App(
        name="azure_cli",
        client_id=AZURE_CLI_CLIENT_ID,
        tenant_id=tid,
        object_id=stable_id("sp", "azure-cli"),
        public_client=True,
        multi_tenant=True,
        first_party=True,
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
    # Grants hold in one tenant (default: the client's home tenant, contoso). The guest also
    # consented at home, in fabrikam, where their own tokens are issued.
    for client in (agent, blueprint):
        grants.append(
            Grant(
                client.client_id,
                mcp.client_id,
                ("access_as_user",),
                user="guest",
                tenant_id=fabrikam.id,
            )
        )
    # Tenant-wide admin consent: the agent may call the legacy API for everyone, and Foundry
    # (a first-party app in reality) may be signed into by anyone. The Azure CLI has no grant:
    # the APIs it may call pre-authorize it (mcp, legacy_api), first-party ones consent it.
    grants.append(Grant(agent.client_id, legacy.client_id, ("user_impersonation",)))
    for app in (agent, blueprint, frontend):  # tenant-wide consent to sign in and read a profile
        grants.append(
            Grant(app.client_id, GRAPH_APP_ID, ("User.Read", "openid", "profile", "email"))
        )
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
            graph,
            azure_cli,
        ),
        users=users,
        managed_identities=(mi, host_mi),
        grants=tuple(grants),
        role_assignments=roles,
    )
