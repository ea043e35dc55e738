"""``EntraEmulator``: the local Entra ID that tests, benchmarks and the demo run against."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from cryptography import x509
from requests.adapters import HTTPAdapter

from .._checks import seconds
from . import _ca
from ._az import az_env, write_stand_in
from ._config import check_world
from ._issue import mint_access, user_subject
from ._msi import HOST_VARIABLES
from ._server import ServerThread, build_app, build_msi_app
from ._state import Fault, Runtime
from ._tokens import Subject
from ._world import ACCOUNT_STATES, App, ManagedIdentityPrincipal, User, World


def _latency(value: object) -> float:
    """``token_latency`` as the command line takes it (``--token-latency``): 0 to 3600 s. NaN
    was taken and silently added no latency, so a benchmark measured something else."""
    return seconds(value, what="token_latency", low=0, high=3600)


class EntraEmulator:
    """A local Entra ID over HTTPS on 127.0.0.1 that unmodified MSAL and azure-identity accept.

    Example::

        with EntraEmulator() as idp:
            app = msal.ConfidentialClientApplication(
                idp.agent.client_id, client_credential=idp.agent.secret,
                authority=idp.authority, instance_discovery=False,
                http_client=idp.msal_http_client())
            user_token = idp.user_token("alice", audience=idp.agent.client_id)
            result = app.acquire_token_on_behalf_of(user_token, [f"{idp.mcp.app_id_uri}/.default"])
    """

    def __init__(
        self, *, world: World | None = None, port: int = 0, token_latency: float = 0.0
    ) -> None:
        self._world = world or World.default()
        check_world(self._world)  # no tenant, a grant naming no app...: refused before it runs
        self._port = port
        self._rt = Runtime(world=self._world, token_latency=_latency(token_latency))
        self._dir: Path | None = None
        self._server: ServerThread | None = None
        self._ca_file = ""
        self._server_thumbprint = ""

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> EntraEmulator:
        if self._server is not None:
            return self
        self._dir = Path(tempfile.mkdtemp(prefix="entra-emulator-"))
        tls = _ca.make_tls_material()
        ca, cert, key = self._dir / "ca.pem", self._dir / "server.pem", self._dir / "server-key.pem"
        ca.write_bytes(tls.ca_cert_pem)
        cert.write_bytes(tls.server_cert_pem)
        key.write_bytes(tls.server_key_pem)
        key.chmod(0o600)
        self._ca_file = str(ca)
        self._server_thumbprint = _ca.thumbprint_sha1(
            x509.load_pem_x509_certificate(tls.server_cert_pem)
        ).lower()
        write_stand_in(self._dir / "bin")
        server = ServerThread(
            build_app(self._rt),
            build_msi_app(self._rt),
            cert=str(cert),
            key=str(key),
            port=self._port,
        )
        try:
            https_port, http_port = server.start()
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            raise
        self._server = server
        self._rt.url = f"https://127.0.0.1:{https_port}"
        self._rt.mi_url = f"http://127.0.0.1:{http_port}/msi/token"
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> EntraEmulator:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> EntraEmulator:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.close)

    def __repr__(self) -> str:
        return f"EntraEmulator(url={self._rt.url!r})"

    # ---- where it is ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self._rt.url

    @property
    def ca_file(self) -> str:
        return self._ca_file

    @property
    def server_cert_file(self) -> str:
        """The emulator's own HTTPS certificate (PEM; SAN 127.0.0.1, ::1, localhost), signed by
        ``ca_file``'s CA. Other loopback servers in a test (a consent broker, an API) can serve
        it too, so that clients trust one CA."""
        return str(Path(self._ca_file).with_name("server.pem"))

    @property
    def server_key_file(self) -> str:
        """The private key of ``server_cert_file`` (mode 0600, deleted with the emulator)."""
        return str(Path(self._ca_file).with_name("server-key.pem"))

    @property
    def world(self) -> World:
        return self._world

    @property
    def tenant_id(self) -> str:
        return self._world.tenants[0].id

    @property
    def second_tenant_id(self) -> str:
        return self._world.tenants[1].id

    @property
    def authority(self) -> str:
        return f"{self.url}/{self.tenant_id}"

    def issuer(self, tenant_id: str | None = None, version: str = "2.0") -> str:
        return self._rt.issuer(tenant_id or self.tenant_id, 2 if version.startswith("2") else 1)

    def jwks_uri(self, tenant_id: str | None = None) -> str:
        return f"{self.url}/{tenant_id or self.tenant_id}/discovery/v2.0/keys"

    @property
    def mi_endpoint(self) -> str:
        return self._rt.mi_url

    # ---- the default world ---------------------------------------------------------------
    def app(self, name: str) -> App:
        found = self._world.app(name)
        if found is None:
            raise KeyError(name)
        return found

    @property
    def agent(self) -> App:
        return self.app("agent")

    @property
    def mcp(self) -> App:
        return self.app("mcp")

    @property
    def legacy_api(self) -> App:
        return self.app("legacy_api")

    @property
    def foundry(self) -> App:
        return self.app("foundry")

    @property
    def frontend(self) -> App:
        return self.app("frontend")

    @property
    def blueprint(self) -> App:
        return self.app("blueprint")

    @property
    def agent_identity(self) -> App:
        return self.app("agent_identity")

    @property
    def managed_identity(self) -> ManagedIdentityPrincipal:
        """The first user-assigned managed identity (the one a federated credential can be)."""
        for mi in self._world.managed_identities:
            if not mi.system_assigned:
                return mi
        raise KeyError("no user-assigned managed identity in this world")

    @property
    def system_identity(self) -> ManagedIdentityPrincipal:
        """The host's system-assigned identity (what no selector gets)."""
        for mi in self._world.managed_identities:
            if mi.system_assigned:
                return mi
        raise KeyError("no system-assigned managed identity in this world")

    @property
    def users(self) -> dict[str, User]:
        return {u.name: u for u in self._world.users}

    # ---- minting without HTTP ------------------------------------------------------------
    def _user(self, user: str | User) -> User:
        if isinstance(user, User):
            return user
        found = self._world.user(user)
        if found is None:
            raise KeyError(user)
        return found

    def user_token(
        self,
        user: str | User = "alice",
        *,
        audience: str | None = None,
        scopes: Sequence[str] | None = None,
        tenant_id: str | None = None,
        lifetime: int = 3600,
        version: int | str | None = None,
        extra_claims: Mapping[str, Any] | None = None,
        client_id: str | None = None,
    ) -> str:
        """A delegated token for ``user`` as the token endpoint would issue it.

        ``audience``: a client id, App ID URI or resource URL (default: the agent app). v2 tokens
        carry the resource's client id as ``aud``; v1 tokens the identifier asked for. ``client_id``
        is the app the user signed in to (``azp``/``appid``; default: the frontend app).
        """
        u = self._user(user)
        ident = audience or self.agent.client_id
        resource = self._world.app(ident) or self._world.app(ident.rstrip("/"))
        if resource is None:
            raise KeyError(f"no app or resource {ident!r} in the emulator's world")
        ver = int(float(version)) if version is not None else resource.access_token_version
        aud = resource.client_id if ver == 2 else ident
        if scopes is None:
            scopes = resource.exposed_scopes[:1] or ("user_impersonation",)
        tid = tenant_id or u.tenant_id
        return mint_access(
            self._rt,
            resource=resource,
            client_id=client_id or self.frontend.client_id,
            client_acr="0",
            subject=user_subject(self._rt, u, tid),
            scopes=scopes,
            app_only=False,
            lifetime=lifetime,
            version=ver,
            audience=aud,
            extra=extra_claims,
        )

    def app_token(
        self,
        *,
        client_id: str,
        audience: str,
        roles: Sequence[str] = (),
        tenant_id: str | None = None,
        lifetime: int = 3600,
    ) -> str:
        """An app-only token (client credentials / managed identity) for ``audience``."""
        resource = self._world.app(audience) or self._world.app(audience.rstrip("/"))
        if resource is None:
            raise KeyError(f"no app or resource {audience!r} in the emulator's world")
        client = self._world.app(client_id)
        mi = self._world.identity(client_id)
        oid = client.object_id if client else mi.object_id if mi else client_id
        ver = resource.access_token_version
        return mint_access(
            self._rt,
            resource=resource,
            client_id=client_id,
            client_acr="2" if mi else "1",
            subject=Subject(oid=oid, tid=tenant_id or self.tenant_id),
            roles=roles,
            app_only=True,
            lifetime=lifetime,
            audience=resource.client_id if ver == 2 else audience,
        )

    # ---- control -------------------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, int]]:
        """Requests per endpoint and per grant since start (or ``reset_stats()``)."""
        return self._rt.snapshot()

    def in_flight(self) -> int:
        """How many requests are being answered now (held by ``token_latency`` or an injected
        delay included): a test waits for its request to be out by polling this, not by
        sleeping a fixed time a loaded machine may outlast."""
        with self._rt.lock:
            return self._rt.in_flight

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait (at most ``timeout`` seconds) until no request is being answered: a request
        held by an injected delay or ``token_latency``, which its client may have given up on,
        is counted in ``stats()`` when it ends. Call it before taking a count that a previous
        test's straggler must not land in. ``False`` if requests were still in flight."""
        end = time.monotonic() + timeout
        while True:
            with self._rt.lock:
                if self._rt.in_flight <= 0:
                    return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.02)

    def reset_stats(self) -> None:
        with self._rt.lock:
            self._rt.endpoints.clear()
            self._rt.grants_stats.clear()

    def inject_fault(
        self,
        endpoint: str = "token",
        *,
        status: int | None = 503,
        retry_after: float | None = None,
        delay: float = 0.0,
        drop: bool = False,
        count: int = 1,
        truncate: int = 0,
    ) -> None:
        """The next ``count`` requests to ``endpoint`` (token, authorize, discovery, jwks, msi,
        az, logout, userrealm) get ``status`` (with ``Retry-After``) after ``delay`` seconds, or
        a dropped connection (``drop=True``). ``status=None`` only delays, then answers;
        ``truncate=n`` answers normally with the body's last ``n`` bytes cut (not JSON)."""
        if truncate:
            status = None
        with self._rt.lock:
            self._rt.faults.setdefault(endpoint, []).append(
                Fault(
                    status=status,
                    retry_after=retry_after,
                    delay=delay,
                    drop=drop,
                    count=count,
                    truncate=truncate,
                )
            )

    def clear_faults(self) -> None:
        with self._rt.lock:
            self._rt.faults.clear()

    @property
    def token_latency(self) -> float:
        return self._rt.token_latency

    @token_latency.setter
    def token_latency(self, seconds: float) -> None:
        self._rt.token_latency = _latency(seconds)

    def rotate_keys(self, *, retire_old: bool = False) -> str:
        """Publish a new signing key first (old ones stay published) or retire the old ones.
        Returns the current key id."""
        return self._rt.keys.rotate(retire_old=retire_old).kid

    def approve_device_code(
        self, user_code: str, user: str = "alice", *, decline: bool = False
    ) -> None:
        """The user signs in at the device code verification page (or presses Cancel)."""
        from ._device import approve

        if approve(self._rt, user_code, self._user(user).name, decline=decline) is None:
            raise KeyError("no pending device code with that user code")

    @property
    def signing_kid(self) -> str:
        return self._rt.keys.current.kid

    def issued(self) -> set[str]:
        """Every token, code and refresh token issued (16+ characters), plus every secret held:
        for leak scans."""
        with self._rt.lock:
            out = set(self._rt.issued)
        out.update(a.secret for a in self._world.apps if a.secret)
        out.update(u.password for u in self._world.users)
        out.update((self._rt.mi_header, self._rt.az_key))
        if self._rt.arc_secret:  # the Azure Arc challenge file's content, once written
            out.add(self._rt.arc_secret)
        return out

    def grant_consent(
        self,
        user: str | None,
        client_id: str,
        scopes: Sequence[str],
        *,
        resource: str | None = None,
        tenant_id: str | None = None,
    ) -> None:
        """Record consent. Scopes are full (``api://<app>/access_as_user``) or bare names on
        ``resource`` (default: the mcp app). ``user=None`` is an admin consent. Consent holds in
        one tenant: ``tenant_id`` (default: the client's home tenant)."""
        by_resource: dict[str, list[str]] = {}
        for s in scopes:
            if "/" in s:
                ident, _, name = s.rpartition("/")
            else:
                ident, name = resource or self.mcp.client_id, s
            app = self._world.app(ident)
            if app is None:
                raise KeyError(ident)
            by_resource.setdefault(app.client_id, []).append(name)
        name_of = self._user(user).name if user else None
        for rid, names in by_resource.items():
            self._rt.grant_consent(name_of, client_id, rid, names, tenant_id=tenant_id)

    def revoke_consent(self, user: str, client_id: str) -> None:
        self._rt.revoke_consent(self._user(user).name, client_id)

    def revoke_refresh_tokens(self, user: str) -> int:
        return self._rt.revoke_refresh_tokens(self._user(user).name)

    def set_account_state(self, user: str, state: str = "enabled") -> None:
        """Change ``user``'s account while running, as an administrator would: ``"disabled"``
        (AADSTS50057), ``"locked"`` (50053), ``"password_expired"`` (50055),
        ``"session_revoked"`` (50133) or ``"enabled"``. Every later grant acting for the user is
        refused with that code; tokens issued before stay valid until they expire."""
        if state not in ACCOUNT_STATES:
            raise ValueError(
                f"unknown account state {state[:40]!r}; one of {', '.join(ACCOUNT_STATES)}"
            )
        name = self._user(user).name
        with self._rt.lock:
            self._rt.account_states[name] = state

    # ---- pointing clients at it ----------------------------------------------------------
    def msal_http_client(self) -> requests.Session:
        """A requests.Session for MSAL's ``http_client=``: trusts only the emulator's CA and
        ignores REQUESTS_CA_BUNDLE/proxies (``trust_env=False``; tests only)."""
        session = requests.Session()
        session.verify = self.ca_file
        session.trust_env = False
        # MSAL's ROPC user-realm discovery builds https://{hostname}/common/userrealm/... and
        # drops the port (msal/authority.py user_realm_discovery); route such URLs here.
        session.mount("https://127.0.0.1/", _PortAdapter(self.url))
        return session

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context that trusts the emulator's CA (for httpx/httpx2 ``verify=``)."""
        return ssl.create_default_context(cafile=self.ca_file)

    #: Every variable some managed identity host sets: clear them all before ``mi_env(host)``.
    MI_HOST_VARIABLES = HOST_VARIABLES

    def mi_env(self, host: str = "app_service") -> dict[str, str]:
        """The variables a managed identity ``host`` sets, pointing at this emulator, so that
        MSAL's ``ManagedIdentityClient`` and azure-identity's ``ManagedIdentityCredential``
        detect that host: ``app_service`` (also Functions, Container Apps; api-version
        2019-08-01), ``app_service_2017`` (``MSI_ENDPOINT`` + ``MSI_SECRET``), ``imds`` (VMs,
        AKS nodes), ``azure_arc`` (challenge file in /var/opt/azcmagent/tokens),
        ``service_fabric`` (HTTPS pinned by the server certificate's thumbprint) or
        ``cloud_shell`` (azure-identity only: MSAL's ``ManagedIdentityClient`` does not
        implement Cloud Shell). Clear ``MI_HOST_VARIABLES`` first: detection goes by
        presence."""
        base = self._rt.mi_url.rsplit("/msi/token", 1)[0]
        envs = {
            "app_service": {
                "IDENTITY_ENDPOINT": self._rt.mi_url,
                "IDENTITY_HEADER": self._rt.mi_header,
            },
            "app_service_2017": {"MSI_ENDPOINT": self._rt.mi_url, "MSI_SECRET": self._rt.mi_header},
            "imds": {"AZURE_POD_IDENTITY_AUTHORITY_HOST": base},
            "azure_arc": {
                "IDENTITY_ENDPOINT": f"{base}/metadata/identity/oauth2/token",
                "IMDS_ENDPOINT": base,
            },
            "cloud_shell": {"MSI_ENDPOINT": f"{base}/cloudshell/token"},
            "service_fabric": {
                "IDENTITY_ENDPOINT": f"{self.url}/servicefabric/token",
                "IDENTITY_HEADER": self._rt.mi_header,
                "IDENTITY_SERVER_THUMBPRINT": self._server_thumbprint,
            },
        }
        if host not in envs:
            raise ValueError(f"unknown managed identity host {host!r}; one of {sorted(envs)}")
        return envs[host]

    def az_env(self, user: str | None = "alice", *, mfa: bool = False) -> dict[str, str]:
        """Environment for AzureCliCredential / AzureDeveloperCliCredential: the ``az`` and
        ``azd`` stand-ins first on PATH, signed in as ``user`` (``None``: not logged in).

        The user's per-resource policies hold for the CLI's tokens as for every grant: a
        resource that blocks the user is AADSTS53003, one that requires MFA is AADSTS50076
        unless ``mfa=True``: the sign-in performed MFA, as ``az login --scope
        <resource>/.default`` (``azd auth login --scope ...``) does for such a user."""
        if self._dir is None:
            raise RuntimeError("the emulator is not running")
        name = self._user(user).name if user else None
        return az_env(self._rt, bin_dir=self._dir / "bin", ca_file=self.ca_file, user=name, mfa=mfa)


class _PortAdapter(HTTPAdapter):
    """Sends https://127.0.0.1/<path> (no port) to the emulator's port."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self._base = base_url

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if request.url and request.url.startswith("https://127.0.0.1/"):
            request.url = self._base + request.url[len("https://127.0.0.1") :]
        return super().send(request, **kwargs)
