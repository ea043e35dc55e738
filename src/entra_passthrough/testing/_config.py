"""Loading a world from a config file (JSON or TOML; format in docs/emulator.md)."""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

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
    for t in data.get("tenants", ()):
        tenant = Tenant(
            name=t["name"],
            id=t.get("id") or stable_id("tenant", t["name"]),
            domain=t.get("domain") or f"{t['name']}.onmicrosoft.com",
            user_consent=bool(t.get("user_consent", True)),
        )
        world = replace(world, tenants=(*(x for x in world.tenants if x.name != t["name"]), tenant))

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
                blueprint_id=_app_id(world, a.get("blueprint")),
                pre_authorized=tuple(
                    _app_id(world, str(x)) or str(x) for x in a.get("pre_authorized", ())
                ),
                first_party=bool(a.get("first_party", False)),
                admin_scopes=_strs(a.get("admin_scopes")),
                assignment_required=bool(a.get("assignment_required", False)),
                assigned=_strs(a.get("assigned")),
                required=_strs(a.get("required")),
                inheritable=_inheritable(a),
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
                account_state=str(u.get("account_state", "enabled")),
            )
        )

    def grant_tenant(raw: Mapping[str, Any]) -> str | None:
        # Grants and role assignments hold in one tenant; none named: the client's home tenant.
        return tenant_id(raw) if raw.get("tenant") else None

    for g in data.get("grants", ()):
        world = world.with_grant(
            Grant(
                client_id=_app_id(world, g["client"]) or g["client"],
                resource_id=_app_id(world, g["resource"]) or g["resource"],
                scopes=_strs(g.get("scopes")),
                user=g.get("user"),
                tenant_id=grant_tenant(g),
            )
        )
    for r in data.get("role_assignments", ()):
        client = _app_id(world, r["client"]) or _mi_client(world, r["client"]) or r["client"]
        world = world.with_role_assignment(
            RoleAssignment(
                client,
                _app_id(world, r["resource"]) or r["resource"],
                r["role"],
                tenant_id=grant_tenant(r),
            )
        )
    _check_federated_credentials(world)
    if "lifetimes" in data:
        world = world.with_lifetimes(Lifetimes(**{k: int(v) for k, v in data["lifetimes"].items()}))
    return world


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
