"""Loading a world from a config file (JSON or TOML; format in docs/emulator.md)."""

from __future__ import annotations

import datetime as dt
import difflib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, NoReturn

from .._errors import ConfigurationError
from ._default_world import default_world
from ._world import (
    TOKEN_EXCHANGE_AUDIENCE,
    App,
    FederatedCredential,
    Grant,
    Lifetimes,
    ManagedIdentityPrincipal,
    RoleAssignment,
    Tenant,
    User,
    World,
    new_certificate,
    new_secret,
    stable_id,
)


def _strs(value: Iterable[Any] | None) -> tuple[str, ...]:
    return tuple(str(v) for v in (value or ()))


#: The keys of each table of a world file (docs/emulator.md). A key outside them is refused: a
#: misspelt one ("pre_authorised", "scops") would be ignored, and the emulator would refuse what
#: its author believes configured.
_SECTIONS: dict[str, frozenset[str]] = {
    "tenants": frozenset({"name", "id", "domain", "user_consent"}),
    "managed_identities": frozenset(
        {"name", "client_id", "object_id", "tenant", "resource_id", "system_assigned"}
    ),
    "apps": frozenset(
        {
            "name",
            "client_id",
            "tenant",
            "object_id",
            "secret",
            "secret_expires",
            "confidential",
            "certificate",
            "api",
            "app_id_uri",
            "scope",
            "scopes",
            "roles",
            "access_token_version",
            "redirect_uris",
            "public_client",
            "multi_tenant",
            "federated_credentials",
            "optional_claims",
            "kind",
            "blueprint",
            "pre_authorized",
            "first_party",
            "admin_scopes",
            "assignment_required",
            "assigned",
            "required",
            "inheritable",
        }
    ),
    "users": frozenset(
        {
            "name",
            "upn",
            "oid",
            "tenant",
            "password",
            "display_name",
            "mfa_required_for",
            "blocked_for",
            "guest",
            "account_state",
        }
    ),
    "grants": frozenset({"client", "resource", "scopes", "user", "tenant"}),
    "role_assignments": frozenset({"client", "resource", "role", "tenant"}),
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "tenants": ("name",),
    "managed_identities": ("name",),
    "apps": ("name",),
    "users": ("name",),
    "grants": ("client", "resource"),
    "role_assignments": ("client", "resource", "role"),
}
_FEDERATED = frozenset({"name", "subject", "issuer", "audiences"})
_LIFETIMES = frozenset(Lifetimes.__dataclass_fields__)
_TOP = frozenset({"include_defaults", "lifetimes", *_SECTIONS})


def _unknown(where: str, keys: Iterable[Any], known: frozenset[str]) -> None:
    for key in keys:
        if key not in known and not str(key).startswith("_"):  # "_comment": JSON's comments
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"emulator config: {where}: unknown key {str(key)[:64]!r}{hint}; the keys are "
                f"{', '.join(sorted(known))} (docs/emulator.md, 'Config file format')"
            )


def _check_shape(data: Any) -> None:
    """Every table and key of a world file known, each section a list of tables with its
    required keys: a misspelt key or a wrong shape is named, never ignored or a bare TypeError."""
    if not isinstance(data, Mapping):
        raise ValueError("emulator config: the top level must be a table (TOML) or object (JSON)")
    _unknown("the top level", data, _TOP)
    for section, known in _SECTIONS.items():
        entries = data.get(section, ())
        if not isinstance(entries, list | tuple):
            raise ValueError(
                f"emulator config: {section} must be a list of tables ([[{section}]] in TOML, "
                f"an array of objects in JSON), not {type(entries).__name__}"
            )
        for i, entry in enumerate(entries):
            where = f"{section}[{i}]"
            if not isinstance(entry, Mapping):
                raise ValueError(
                    f"emulator config: {where} must be a table, not {type(entry).__name__}"
                )
            _unknown(where, entry, known)
            missing = [k for k in _REQUIRED[section] if k not in entry]
            if missing:
                raise ValueError(f"emulator config: {where} needs {', '.join(missing)}")
            for j, fic in enumerate(entry.get("federated_credentials", ()) or ()):
                if not isinstance(fic, Mapping) or "subject" not in fic:
                    raise ValueError(
                        f"emulator config: {where}.federated_credentials[{j}] must be a table "
                        "with a subject"
                    )
                _unknown(f"{where}.federated_credentials[{j}]", fic, _FEDERATED)
    lifetimes = data.get("lifetimes", {})
    if not isinstance(lifetimes, Mapping):
        raise ValueError("emulator config: lifetimes must be a table of seconds")
    _unknown("lifetimes", lifetimes, _LIFETIMES)
    for key, value in lifetimes.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"emulator config: lifetimes.{key} must be a number of seconds >= 0")


def world_from_dict(data: Mapping[str, Any]) -> World:
    _check_shape(data)
    world = default_world() if data.get("include_defaults", True) else World(tenants=())
    for i, t in enumerate(data.get("tenants", ())):
        if t.get("id") is not None:
            _check_guid(f"tenants[{i}]", "id", t["id"])
        tenant = Tenant(
            name=t["name"],
            id=t.get("id") or stable_id("tenant", t["name"]),
            domain=t.get("domain") or f"{t['name']}.onmicrosoft.com",
            user_consent=bool(t.get("user_consent", True)),
        )
        world = replace(world, tenants=(*(x for x in world.tenants if x.name != t["name"]), tenant))
    if not world.tenants:
        _no_tenant()

    def tenant_id(raw: Mapping[str, Any]) -> str:
        name = raw.get("tenant") or world.tenants[0].name
        found = world.tenant(str(name))
        if found is None:
            raise ValueError(f"unknown tenant {name!r} in emulator config")
        return found.id

    # Managed identities first: an app's federated credential may name one by name.
    for m in data.get("managed_identities", ()):
        world = world.with_managed_identity(
            ManagedIdentityPrincipal(
                name=m["name"],
                client_id=m.get("client_id") or stable_id("mi", m["name"]),
                object_id=m.get("object_id") or stable_id("mi-object", m["name"]),
                tenant_id=tenant_id(m),
                resource_id=m.get("resource_id") or f"/mi/{m['name']}",
                system_assigned=bool(m.get("system_assigned", False)),
            )
        )
    for i, a in enumerate(data.get("apps", ())):
        _check_app_values(f"apps[{i}]", a)
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
                secret_expires=_instant(a, "secret_expires"),
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
                first_party=bool(a.get("first_party", False)),
                admin_scopes=_strs(a.get("admin_scopes")),
                assignment_required=bool(a.get("assignment_required", False)),
                assigned=_strs(a.get("assigned")),
                required=_strs(a.get("required")),
                inheritable=_inheritable(a),
            )
        )
    # Then what apps say of other apps, once every app is known (in any order in the file): a
    # blueprint, pre-authorized clients (a client id from outside this world, such as the Azure
    # CLI's, is kept as it is).
    resolved: dict[str, App] = {}
    for i, a in enumerate(data.get("apps", ())):
        app = next(x for x in world.apps if x.name == a["name"])
        blueprint = a.get("blueprint")
        if blueprint is not None:
            found = world.app(str(blueprint))
            if found is None or found.kind != "agent_blueprint":
                blueprints = [x.name for x in world.apps if x.kind == "agent_blueprint"]
                _refuse(
                    f"apps[{i}]",
                    f"blueprint {str(blueprint)[:64]!r} is not an agent blueprint of this "
                    f"world{_close(str(blueprint), blueprints)}",
                    'name an app with kind = "agent_blueprint"'
                    + (f" ({', '.join(blueprints)})" if blueprints else ""),
                )
        resolved[app.name] = replace(
            app,
            blueprint_id=_app_id(world, blueprint),
            pre_authorized=tuple(
                _ref_app(world, f"apps[{i}].pre_authorized", str(x), outside_ok=True)
                for x in a.get("pre_authorized", ())
            ),
        )
    world = replace(world, apps=tuple(resolved.get(x.name, x) for x in world.apps))
    for i, u in enumerate(data.get("users", ())):
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
                    _ref_app(world, f"users[{i}].mfa_required_for", str(x))
                    for x in u.get("mfa_required_for", ())
                ),
                blocked_for=tuple(
                    _ref_app(world, f"users[{i}].blocked_for", str(x))
                    for x in u.get("blocked_for", ())
                ),
                guest=bool(u.get("guest", False)),
                account_state=str(u.get("account_state", "enabled")),
            )
        )
    names = [u.name for u in world.users]
    for i, a in enumerate(data.get("apps", ())):
        for user in _strs(a.get("assigned")):
            if user not in names:
                _refuse(
                    f"apps[{i}].assigned",
                    f"{user[:64]!r} is not a user of this world{_close(user, names)}",
                    "name a user of [[users]] (or of the default world) by name",
                )

    def grant_tenant(raw: Mapping[str, Any]) -> str | None:
        # Grants and role assignments hold in one tenant; none named: the client's home tenant.
        return tenant_id(raw) if raw.get("tenant") else None

    for i, g in enumerate(data.get("grants", ())):
        where = f"grants[{i}]"
        resource = str(g["resource"])
        resource_id = "*" if resource == "*" else _ref_app(world, f"{where}.resource", resource)
        api = world.resource(resource_id) if resource_id != "*" else None
        if api is not None:
            for scope in _strs(g.get("scopes")):
                if scope != "*" and api.registered_scope(scope) is None:
                    exposed = list(api.exposed_scopes)
                    _refuse(
                        f"{where}.scopes",
                        f"{api.name!r} exposes no scope {scope[:64]!r}{_close(scope, exposed)}",
                        f"grant a scope it exposes ({', '.join(exposed) or 'none'}), or add it "
                        f"to that app's scopes",
                    )
        user = g.get("user")
        person = world.user(str(user)) if user is not None else None
        if user is not None and person is None:
            _refuse(
                f"{where}.user",
                f"{str(user)[:64]!r} is not a user of this world{_close(str(user), names)}",
                "name a user of [[users]] (or of the default world), or omit user for "
                "tenant-wide consent",
            )
        world = world.with_grant(
            Grant(
                client_id=_ref_app(world, f"{where}.client", str(g["client"])),
                resource_id=resource_id,
                scopes=_strs(g.get("scopes")),
                user=person.name if person else None,  # as the emulator compares it
                tenant_id=grant_tenant(g),
            )
        )
    for i, r in enumerate(data.get("role_assignments", ())):
        where = f"role_assignments[{i}]"
        client = _app_id(world, r["client"]) or _mi_client(world, r["client"])
        if client is None:
            known = [x.name for x in world.apps] + [x.name for x in world.managed_identities]
            _refuse(
                f"{where}.client",
                f"{str(r['client'])[:64]!r} is neither an app nor a managed identity of this "
                f"world{_close(str(r['client']), known)}",
                "name an app or a managed identity by name or client id",
            )
        resource_id = _ref_app(world, f"{where}.resource", str(r["resource"]))
        api = next(x for x in world.apps if x.client_id == resource_id)
        role = str(r["role"])
        if role not in api.roles:
            _refuse(
                f"{where}.role",
                f"{api.name!r} defines no app role {role[:64]!r}{_close(role, list(api.roles))}",
                f"assign a role it defines ({', '.join(api.roles) or 'none'}), or add it to "
                "that app's roles",
            )
        world = world.with_role_assignment(
            RoleAssignment(client, api.client_id, role, tenant_id=grant_tenant(r))
        )
    _check_federated_credentials(world)
    if "lifetimes" in data:
        world = world.with_lifetimes(Lifetimes(**{k: int(v) for k, v in data["lifetimes"].items()}))
    check_world(world)
    return world


_KINDS = ("app", "agent_blueprint", "agent_identity")


def _refuse(where: str, what: str, fix: str) -> NoReturn:
    # "apps[0]": a place in a world file; "app 'x'": an object of a World
    source = "config" if "[" in where.split(" ", 1)[0] else "world"
    raise ConfigurationError(f"emulator {source}: {where}: {what}.", fix=fix)


def _close(value: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, sorted(set(known)), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _no_tenant() -> NoReturn:
    raise ConfigurationError(
        "emulator world: it has no tenant, and every app, user and token belongs to one.",
        fix="add a [[tenants]] entry (or keep include_defaults = true)",
    )


def _check_guid(where: str, key: str, value: Any) -> None:
    try:
        canonical = str(uuid.UUID(str(value)))
    except ValueError:
        canonical = None
    if canonical != value:
        _refuse(
            where,
            f"{key} {str(value)[:64]!r} is not a GUID in lower case",
            f"write it as {canonical!r}"
            if canonical
            else "give a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx), or omit it for a stable one",
        )


def _check_app_values(where: str, raw: Mapping[str, Any]) -> None:
    kind = raw.get("kind", "app")
    if kind not in _KINDS:
        _refuse(
            where,
            f"unknown kind {str(kind)[:64]!r}{_close(str(kind), _KINDS)}",
            f"kind is one of {', '.join(_KINDS)}",
        )
    version = raw.get("access_token_version", 2)
    if isinstance(version, bool) or version not in (1, 2):
        _refuse(
            where,
            f"access_token_version {str(version)[:16]!r} is not 1 or 2",
            "1 (v1 tokens) or 2 (v2 tokens), Entra's accessTokenAcceptedVersion",
        )
    if raw.get("client_id") is not None:
        _check_guid(where, "client_id", raw["client_id"])
    if kind == "agent_identity" and not raw.get("blueprint"):
        _refuse(
            where,
            "an agent identity needs its blueprint",
            'add blueprint = "<the name of an agent blueprint app>"',
        )
    if kind != "agent_identity" and raw.get("blueprint") is not None:
        _refuse(
            where,
            f"only an agent identity has a blueprint (this is kind {kind!r})",
            'set kind = "agent_identity", or remove blueprint',
        )


def _ref_app(world: World, where: str, ident: str, *, outside_ok: bool = False) -> str:
    """The client id of the app ``ident`` names (name, client id or App ID URI); with
    ``outside_ok``, a GUID that names no app of this world is kept (an app outside it, such as
    the Azure CLI's client id)."""
    found = _app_id(world, ident)
    if found is not None:
        return found
    if outside_ok:
        try:
            uuid.UUID(ident)
        except ValueError:
            pass
        else:
            return ident
    _refuse(
        where,
        f"{ident[:64]!r} is not an app of this world{_close(ident, [a.name for a in world.apps])}",
        "name an app of [[apps]] (or of the default world) by name, client id or App ID URI",
    )


def check_world(world: World) -> None:
    """Refuse a world the emulator cannot run or would run other than its author meant: no
    tenant, an id or value Entra would not have, a reference to something it does not hold.
    Called when a world is loaded from a file and when an emulator is given one."""
    if not world.tenants:
        _no_tenant()
    tenant_ids = set()
    for t in world.tenants:
        _check_guid(f"tenant {t.name!r}", "id", t.id)
        if t.id in tenant_ids:
            _refuse(
                f"tenant {t.name!r}", f"id {t.id!r} is another tenant's", "give each its own id"
            )
        tenant_ids.add(t.id)
    client_ids: dict[str, str] = {}
    for a in world.apps:
        where = f"app {a.name!r}"
        if a.kind not in _KINDS:
            _refuse(where, f"unknown kind {a.kind[:64]!r}", f"kind is one of {', '.join(_KINDS)}")
        if isinstance(a.access_token_version, bool) or a.access_token_version not in (1, 2):
            _refuse(
                where,
                f"access_token_version {a.access_token_version!r} is not 1 or 2",
                "1 (v1 tokens) or 2 (v2 tokens), Entra's accessTokenAcceptedVersion",
            )
        if a.client_id in client_ids:
            _refuse(
                where,
                f"client id {a.client_id!r} is also app {client_ids[a.client_id]!r}'s",
                "give each app its own client_id (or omit it for a stable one)",
            )
        client_ids[a.client_id] = a.name
        if a.tenant_id not in tenant_ids:
            _refuse(where, f"tenant {a.tenant_id!r} is not in this world", "name a tenant of it")
        if a.kind == "agent_identity":
            bp = world.app(a.blueprint_id) if a.blueprint_id else None
            if bp is None or bp.kind != "agent_blueprint":
                _refuse(
                    where,
                    f"the blueprint {a.blueprint_id!r} of this agent identity is not an agent "
                    "blueprint of this world",
                    "set blueprint_id to the client id of an app with kind='agent_blueprint'",
                )
    users = {u.name for u in world.users} | {u.upn for u in world.users}
    for u in world.users:
        if u.tenant_id not in tenant_ids:
            _refuse(f"user {u.name!r}", f"tenant {u.tenant_id!r} is not in this world", "name one")
    for m in world.managed_identities:
        if m.tenant_id not in tenant_ids:
            _refuse(
                f"managed identity {m.name!r}",
                f"tenant {m.tenant_id!r} is not in this world",
                "name a tenant of it",
            )
    mi_ids = {m.client_id for m in world.managed_identities}
    for g in world.grants:
        where = f"grant of {g.client_id!r} on {g.resource_id!r}"
        if g.client_id not in client_ids:
            _refuse(where, "the client is not an app of this world", "use an app's client id")
        if g.resource_id != "*" and g.resource_id not in client_ids:
            _refuse(where, "the resource is not an app of this world", "use an app's client id")
        if g.user is not None and g.user not in users:
            _refuse(
                where,
                f"user {g.user[:64]!r} is not a user of this world",
                "name a user by name or UPN, or None for tenant-wide consent",
            )
        if g.tenant_id is not None and g.tenant_id not in tenant_ids:
            _refuse(where, f"tenant {g.tenant_id!r} is not in this world", "name a tenant id")
    for r in world.role_assignments:
        where = f"role assignment of {r.client_id!r} on {r.resource_id!r}"
        if r.client_id not in client_ids and r.client_id not in mi_ids:
            _refuse(
                where,
                "the client is neither an app nor a managed identity of this world",
                "use the client id of one",
            )
        api = next((a for a in world.apps if a.client_id == r.resource_id), None)
        if api is None:
            _refuse(where, "the resource is not an app of this world", "use an app's client id")
        if r.role not in api.roles:
            _refuse(
                where,
                f"{api.name!r} defines no app role {r.role[:64]!r}",
                f"assign one of its roles ({', '.join(api.roles) or 'none'})",
            )
        if r.tenant_id is not None and r.tenant_id not in tenant_ids:
            _refuse(where, f"tenant {r.tenant_id!r} is not in this world", "name a tenant id")


def _instant(raw: Mapping[str, Any], key: str) -> dt.datetime | None:
    """A point in time, UTC: a TOML date or date-time, or an ISO 8601 string (JSON); without
    an offset it is UTC, a date alone is its midnight."""
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"app {raw.get('name')!r}: {key} {value!r} is not an ISO 8601 date or date-time"
            ) from None
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    raise ValueError(f"app {raw.get('name')!r}: {key} must be a date or date-time")


def _inheritable(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """A blueprint's inheritable permissions: ``["mcp/*", "graph/User.Read"]``, or per resource
    ``{"mcp": "*", "graph": ["User.Read"]}`` (``"*"``/``"all"``: every scope, Graph's
    ``allAllowedScopes``; a list: ``enumeratedScopes``)."""
    value = raw.get("inheritable")
    if not value:
        return ()
    if raw.get("kind", "app") != "agent_blueprint":
        raise ValueError(
            f'app {raw["name"]!r}: only an agent blueprint (kind = "agent_blueprint") has '
            "inheritable permissions"
        )
    if isinstance(value, Mapping):
        out: list[str] = []
        for resource, scopes in value.items():
            if scopes in ("*", "all", True):
                out.append(f"{resource}/*")
            elif isinstance(scopes, str):
                out.append(f"{resource}/{scopes}")
            else:
                out.extend(f"{resource}/{s}" for s in _strs(scopes))
        entries = tuple(out)
    elif isinstance(value, str):
        entries = (value,)
    else:
        entries = _strs(value)
    for entry in entries:
        resource, _, scope = entry.rpartition("/")
        if not resource or not scope:
            raise ValueError(
                f'app {raw["name"]!r}: inheritable entry {entry!r} is not "<resource>/<scope>" '
                'or "<resource>/*"'
            )
    return entries


def _app_id(world: World, ident: str | None) -> str | None:
    if ident is None:
        return None
    app = world.app(ident)
    return app.client_id if app else None


def _mi_client(world: World, ident: str) -> str | None:
    mi = world.identity(ident)
    return mi.client_id if mi else None


def _check_federated_credentials(world: World) -> None:
    # Only a user-assigned managed identity can be a federated credential of an app
    # (https://learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-managed-identity).
    system = {m.object_id: m.name for m in world.managed_identities if m.system_assigned}
    for app in world.apps:
        for fic in app.federated_credentials:
            if fic.subject in system:
                raise ValueError(
                    f"app {app.name!r}: the system-assigned managed identity "
                    f"{system[fic.subject]!r} cannot be a federated credential; use a "
                    "user-assigned identity"
                )


def _mi_subject(world: World, ident: str) -> str:
    mi = world.identity(ident)
    return mi.object_id if mi else ident
