"""The running emulator's mutable state: keys, consents, codes, refresh tokens, stats, faults.

Everything here is guarded by one lock; endpoints run on the server thread while tests call the
Python API from theirs.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._tokens import KeyRing
from ._world import App, Grant, User, World

#: Scopes OpenID Connect defines; they name no resource.
#: https://learn.microsoft.com/entra/identity-platform/scopes-oidc#openid-connect-scopes
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
#: What ``EntraEmulator.issued()`` records at the least (a PKCE verifier has 43 characters).
MIN_SECRET_LENGTH = 16


@dataclass
class Fault:
    status: int | None = 503  # None: only delay (or drop), then answer normally
    retry_after: float | None = None
    delay: float = 0.0
    drop: bool = False
    count: int = 1
    truncate: int = 0  # answer normally, minus this many bytes at the end of the body


@dataclass
class CodeRecord:
    user: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    tenant_id: str
    challenge: str | None
    method: str | None
    nonce: str | None
    expires: float
    amr: tuple[str, ...] = ("pwd",)
    redeemed: bool = False


@dataclass
class RefreshRecord:
    user: str
    client_id: str
    scopes: tuple[str, ...]
    tenant_id: str
    expires: float
    amr: tuple[str, ...] = ("pwd",)
    revoked: bool = False


@dataclass
class Pending:
    """A browser sign-in between the user picker and the consent page."""

    user: str
    expires: float


@dataclass
class Runtime:
    world: World
    keys: KeyRing = field(default_factory=KeyRing)
    url: str = ""
    mi_url: str = ""
    token_latency: float = 0.0
    mi_header: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    #: the current Azure Arc challenge secret (written to a .key file on challenge)
    arc_secret: str = ""
    #: the challenge file holding it (the previous one is removed at the next challenge)
    arc_file: str = ""
    az_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    lock: threading.RLock = field(default_factory=threading.RLock)
    endpoints: Counter[str] = field(default_factory=Counter)
    grants_stats: Counter[str] = field(default_factory=Counter)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    issued: set[str] = field(default_factory=set)
    consents: list[Grant] = field(default_factory=list)
    revoked_consents: set[tuple[str, str]] = field(default_factory=set)
    codes: dict[str, CodeRecord] = field(default_factory=dict)
    refresh: dict[str, RefreshRecord] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    #: device codes of the device code grant (``_device.DeviceRecord``)
    device_codes: dict[str, Any] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)
    #: account states set while running (``EntraEmulator.set_account_state``), by user name;
    #: they override the world's ``User.account_state``
    account_states: dict[str, str] = field(default_factory=dict)
    #: requests being answered now (``FaultMiddleware``): a request held by an injected delay
    #: or ``token_latency`` is counted in ``stats`` only when it ends (``EntraEmulator.wait_idle``)
    in_flight: int = 0

    # ---- identities ----------------------------------------------------------------------
    def issuer(self, tenant_id: str, version: int = 2) -> str:
        return f"{self.url}/{tenant_id}/v2.0" if version == 2 else f"{self.url}/{tenant_id}/"

    def remember(self, *values: str | None) -> None:
        # Values shorter than any real token, code, verifier or assertion are left out: a fuzzer's
        # one-character "assertion" would otherwise be a "secret" every later leak scan finds.
        with self.lock:
            self.issued.update(v for v in values if v and len(v) >= MIN_SECRET_LENGTH)

    def account_state(self, user: User) -> str:
        """``user``'s account state now (``_world.ACCOUNT_STATES``)."""
        with self.lock:
            return self.account_states.get(user.name, user.account_state)

    # ---- stats and faults ----------------------------------------------------------------
    def count(self, endpoint: str) -> None:
        with self.lock:
            self.endpoints[endpoint] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Requests per endpoint and per grant (the known names always present)."""
        endpoints = ("token", "authorize", "discovery", "jwks", "msi", "az")
        grants = (
            "client_credentials",
            "on_behalf_of",
            "authorization_code",
            "refresh_token",
            "password",
        )
        with self.lock:
            return {
                "endpoints": {n: 0 for n in endpoints} | dict(self.endpoints),
                "grants": {n: 0 for n in grants} | dict(self.grants_stats),
            }

    def count_grant(self, grant: str) -> None:
        with self.lock:
            self.grants_stats[grant] += 1

    def take_fault(self, endpoint: str) -> Fault | None:
        with self.lock:
            queue = self.faults.get(endpoint)
            if not queue:
                return None
            fault = queue[0]
            fault.count -= 1
            if fault.count <= 0:
                queue.pop(0)
            return fault

    # ---- consent -------------------------------------------------------------------------
    def all_grants(self) -> Iterable[Grant]:
        with self.lock:
            runtime = list(self.consents)
            revoked = set(self.revoked_consents)
        for g in (*self.world.grants, *runtime):
            if g.user is not None and (g.user, g.client_id) in revoked:
                continue
            yield g

    def granted_scopes(
        self, user: User | None, client: App, resource: App, *, tenant_id: str
    ) -> set[str]:
        """Scopes ``client`` may use on ``resource`` for ``user`` in tenant ``tenant_id`` (user
        grants + admin grants given in that tenant; pre-authorization, a property of the API's
        registration, holds in every tenant; for an agent identity, what it inherits)."""
        out: set[str] = set()
        # Pre-authorized clients need no consent for the API's delegated scopes
        # (https://learn.microsoft.com/entra/identity-platform/permissions-consent-overview).
        if client.client_id in resource.pre_authorized:
            out.update(resource.exposed_scopes)
        out |= self._held_scopes(user, client.client_id, resource, tenant_id)
        # A child agent identity inherits a delegated scope of its blueprint only if both hold:
        # the blueprint lists it (or the resource, "*") as inheritable, and the blueprint holds
        # a grant for it in this tenant (a pre-authorization is no grant). Otherwise Entra
        # answers AADSTS65001 (https://learn.microsoft.com/entra/agent-id/
        # concept-inheritable-permissions, configure-inheritable-permissions-blueprints).
        if client.kind == "agent_identity" and client.blueprint_id:
            blueprint = self.world.app(client.blueprint_id)
            inheritable = blueprint.inheritable_scopes(resource) if blueprint else frozenset()
            if inheritable:
                held = self._held_scopes(user, client.blueprint_id, resource, tenant_id)
                out |= held if "*" in inheritable else held & inheritable
        return out

    def _held_scopes(
        self, user: User | None, client_id: str, resource: App, tenant_id: str
    ) -> set[str]:
        """The scopes on ``resource`` the grants of ``client_id`` (for ``user``, or tenant-wide)
        give in ``tenant_id``."""
        out: set[str] = set()
        for g in self.all_grants():
            if g.client_id != client_id or g.resource_id not in (resource.client_id, "*"):
                continue
            if self.world.grant_tenant(g) != tenant_id:
                continue
            if g.user is not None and (user is None or g.user not in (user.name, user.upn)):
                continue
            if "*" in g.scopes:
                out.update(resource.exposed_scopes)
            else:  # as registered: a grant may spell a scope in another case (Entra ignores it)
                out.update(resource.registered_scope(s) or s for s in g.scopes)
        return out

    def grant_consent(
        self,
        user: str | None,
        client_id: str,
        resource_id: str,
        scopes: Iterable[str],
        *,
        tenant_id: str | None = None,
    ) -> None:
        """Record consent given in ``tenant_id`` (``None``: the client's home tenant)."""
        with self.lock:
            if user is not None:
                self.revoked_consents.discard((user, client_id))
            self.consents.append(
                Grant(client_id, resource_id, tuple(scopes), user=user, tenant_id=tenant_id)
            )

    def revoke_consent(self, user: str, client_id: str) -> None:
        with self.lock:
            self.revoked_consents.add((user, client_id))
            self.consents = [
                g for g in self.consents if not (g.user == user and g.client_id == client_id)
            ]

    # ---- codes and refresh tokens --------------------------------------------------------
    def new_code(self, record: CodeRecord) -> str:
        code = "emu-code." + secrets.token_urlsafe(32)
        with self.lock:
            self.codes[code] = record
            self.issued.add(code)
        return code

    def new_refresh_token(self, record: RefreshRecord) -> str:
        rt = "emu-rt." + secrets.token_urlsafe(48)
        with self.lock:
            self.refresh[rt] = record
            self.issued.add(rt)
        return rt

    def revoke_refresh_tokens(self, user: str) -> int:
        n = 0
        with self.lock:
            for rec in self.refresh.values():
                if rec.user == user and not rec.revoked:
                    rec.revoked = True
                    n += 1
        return n

    def new_pending(self, user: str) -> str:
        pid = secrets.token_urlsafe(24)
        with self.lock:
            now = time.time()
            self.pending = {k: v for k, v in self.pending.items() if v.expires > now}
            self.pending[pid] = Pending(user=user, expires=now + 600)
        return pid

    def take_pending(self, pid: str) -> str | None:
        with self.lock:
            p = self.pending.get(pid)
            if p is None or p.expires < time.time():
                return None
            return p.user
