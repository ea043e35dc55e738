"""The consent tests' environment (the fixture ``consent_env``, used by tests/consent and
tests/scale_out): one emulator, one HTTPS server on loopback hosting the broker (mounted at
/consent) and a tiny protected API (/whoami, verified with JwtVerifier), and their helpers.

The broker's certificate comes from a CA generated here (the emulator's CA signs only its own
server certificate); the trust bundle holds both CAs.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import ssl
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from _support.servers import serve_in_thread
from entra_passthrough import Caller, ConsentRequired, TokenRequest, TokenVerificationError
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring, MemoryStore
from entra_passthrough._verify import JwtVerifier
from entra_passthrough.consent import ConsentBroker
from entra_passthrough.testing import EntraEmulator, World
from entra_passthrough.testing._ca import make_tls_material
from entra_passthrough.testing._world import App, Grant, User, stable_id


class Slot:
    """An ASGI app whose target is set after the server started (the port is needed first)."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        assert self.app is not None, "no app mounted yet"
        await self.app(scope, receive, send)


#: Test users of this module only (revoking their refresh tokens affects no other test).
EXTRA_USERS = ("pat", "quinn", "rita")


@dataclass
class ConsentEnv:
    idp: Any
    app: App
    port: int
    bundle: str
    slot: Slot
    made: list[tuple[DelegatedConsent, ConsentBroker]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}/consent"

    @property
    def redirect_uri(self) -> str:
        return f"{self.base}/callback"

    @property
    def mcp_scope(self) -> str:
        return f"{self.idp.mcp.app_id_uri}/access_as_user"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.bundle)

    def browser(self) -> httpx2.AsyncClient:
        """A user's browser: follows redirects, keeps cookies, trusts both CAs."""
        return httpx2.AsyncClient(verify=self.ssl_context(), follow_redirects=True, timeout=30)

    def make(
        self,
        *,
        store: MemoryStore | None = None,
        keyring: Keyring | None = None,
        state_lifetime: float = 600.0,
    ) -> tuple[DelegatedConsent, ConsentBroker]:
        keyring = keyring or Keyring.generate()
        store = store or MemoryStore()
        source = DelegatedConsent(
            client_id=self.app.client_id,
            tenant_id=self.idp.tenant_id,
            client_secret=self.app.secret,
            store=store,
            keyring=keyring,
            broker_url=self.base,
            authority_host=self.idp.url,
            http_client=self.idp.msal_http_client(),
            server_label="mcp",
        )
        broker = ConsentBroker.for_source(
            source, redirect_uris=[self.redirect_uri], state_lifetime=state_lifetime
        )
        verifier = JwtVerifier(
            audiences=[self.idp.mcp.client_id, self.idp.mcp.app_id_uri],
            tenants=[self.idp.tenant_id],
            authority_host=self.idp.url,
            verify=self.idp.ca_file,
        )

        async def whoami(request: Request) -> JSONResponse:
            auth = request.headers.get("authorization", "")
            try:
                vt = await verifier.verify_async(auth.removeprefix("Bearer "))
            except TokenVerificationError as exc:
                return JSONResponse({"error": exc.reason}, status_code=401)
            return JSONResponse({"oid": vt.oid, "tid": vt.tid, "upn": vt.upn, "aud": vt.audience})

        self.slot.app = Starlette(routes=[Mount("/consent", broker.app), Route("/whoami", whoami)])
        self.made.append((source, broker))
        return source, broker


def platform_caller(user_id: str, *, upn: str | None = None) -> Caller:
    """What a Foundry hosted agent sees: the platform user id (and, maybe, a token for
    https://ai.azure.com whose unverified upn only serves as a sign-in hint)."""
    from entra_passthrough import UnverifiedClaims

    claims = UnverifiedClaims(upn=upn, aud="https://ai.azure.com") if upn else None
    return Caller(user_id=user_id, claims=claims)


def verified_caller(tid: str, oid: str) -> Caller:
    return Caller(verified={"tid": tid, "oid": oid})


_FORM_POST = re.compile(r"<form method='post' action='([^']+)'>(.*?)</form>", re.S)
_FIELD = re.compile(r"<input type='hidden' name='([^']*)' value='([^']*)'>")


def form_post_fields(response: httpx2.Response) -> tuple[str, dict[str, str]]:
    """The identity provider's response_mode=form_post page: its action and fields."""
    match = _FORM_POST.search(response.text)
    assert match, response.text[:300]
    assert "document.forms[0].submit()" in response.text
    fields = {html.unescape(k): html.unescape(v) for k, v in _FIELD.findall(match.group(2))}
    return html.unescape(match.group(1)), fields


async def submit_form_post(
    browser: httpx2.AsyncClient, response: httpx2.Response
) -> httpx2.Response:
    """Do what the browser's script does with a form_post page: POST it."""
    action, fields = form_post_fields(response)
    return await browser.post(action, data=fields)


async def consent_link(source: DelegatedConsent, env: ConsentEnv, caller: Caller) -> str:
    """The link of the ``ConsentRequired`` a caller with no grant gets."""
    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(TokenRequest(scopes=(env.mcp_scope,), caller=caller))
    assert info.value.link is not None
    return info.value.link


async def code_and_state(browser: httpx2.AsyncClient, link: str) -> tuple[str, str]:
    """Follow the link to the identity provider and stop before the callback."""
    start = await browser.get(link, follow_redirects=False)
    assert start.status_code == 302
    authorize = await browser.get(start.headers["location"], follow_redirects=False)
    _, fields = form_post_fields(authorize)
    return fields["code"], fields["state"]


def callback_url(env: ConsentEnv, params: dict[str, str]) -> str:
    """The broker's callback with ``params`` in the query (the GET form of the answer)."""
    return f"{env.redirect_uri}?{urllib.parse.urlencode(params)}"


def with_login_hint(location: str, old: str, new: str) -> str:
    """The authorize URL of a consent link, its login hint swapped (another user signs in)."""
    swapped = location.replace(urllib.parse.quote(old, safe=""), urllib.parse.quote(new, safe=""))
    assert new in urllib.parse.unquote(swapped)
    return swapped


async def follow_link(env: ConsentEnv, link: str) -> httpx2.Response:
    """A user clicking the consent link in a fresh browser, through to the broker's page."""
    async with env.browser() as browser:
        page = await browser.get(link)
        return await submit_form_post(browser, page)


_HIDDEN_T = re.compile(r'name="t" value="([^"]+)"')


def revoke_ticket(html: str) -> str:
    match = _HIDDEN_T.search(html)
    assert match, "no sign-out form on the page"
    return match.group(1)


@pytest.fixture(scope="session")
def consent_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsentEnv]:
    tmp: Path = tmp_path_factory.mktemp("consent-tls")
    tls = make_tls_material()
    (tmp / "cert.pem").write_bytes(tls.server_cert_pem)
    (tmp / "key.pem").write_bytes(tls.server_key_pem)
    slot = Slot()
    with serve_in_thread(
        slot, lifespan="off", certfile=str(tmp / "cert.pem"), keyfile=str(tmp / "key.pem")
    ) as base:
        port = urllib.parse.urlsplit(base).port
        assert port is not None
        world = World.default()
        tenant = world.tenants[0].id
        mcp = next(a for a in world.apps if a.name == "mcp")
        app = App(
            name="consent-broker",
            client_id=stable_id("app", "consent-broker"),
            tenant_id=tenant,
            object_id=stable_id("sp", "consent-broker"),
            secret="consent-" + stable_id("secret", str(port)),
            redirect_uris=(f"https://127.0.0.1:{port}/consent/callback",),
            multi_tenant=False,
        )
        world = world.with_app(app)
        for name in EXTRA_USERS:
            world = world.with_user(
                User(
                    name=name,
                    upn=f"{name}@{world.tenants[0].domain}",
                    oid=stable_id("user", "consent-tests", name),
                    tenant_id=tenant,
                    password=f"{name}-password",
                    display_name=name.title(),
                )
            )
        # These users consented to the broker's app calling the MCP API; carol did not (the
        # browser test accepts the consent page as carol).
        for user in ("alice", "bob", "dave", *EXTRA_USERS):
            world = world.with_grant(
                Grant(
                    client_id=app.client_id,
                    resource_id=mcp.client_id,
                    scopes=("access_as_user",),
                    user=user,
                )
            )
        with EntraEmulator(world=world) as idp:
            bundle = tmp / "bundle.pem"
            bundle.write_bytes(Path(idp.ca_file).read_bytes() + b"\n" + tls.ca_cert_pem)
            env = ConsentEnv(idp=idp, app=app, port=port, bundle=str(bundle), slot=slot)
            try:
                yield env
            finally:
                for source, _ in env.made:
                    source.close()


def spki(pem: bytes) -> str:
    """The base64 SHA-256 of a certificate's public key (Chromium's SPKI pin)."""
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def server_pem(url: str) -> bytes:
    """The PEM certificate a loopback HTTPS server presents."""
    host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return ssl.get_server_certificate((host, int(port))).encode()


CHROMIUM = "/usr/bin/chromium"


async def launch_chromium(playwright: Any, profile: Path, pins: str) -> Any:
    """Debian's headless Chromium, trusting exactly the certificate keys ``pins`` (SPKI
    hashes, comma-separated: honoured only with a user data dir, hence a persistent context);
    every other certificate check stays on."""
    return await playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,
        ignore_https_errors=False,
        args=[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--ignore-certificate-errors-spki-list={pins}",
        ],
    )
