"""A verified user of another allowed tenant signs in, and is refreshed, at that tenant.

``DelegatedConsent(tenant_id=contoso, allowed_tenants=[contoso, fabrikam])`` with a multi-tenant
consent app: a caller verified as a fabrikam member got a link to contoso's authority, where
Entra does not know them (AADSTS50020), and every later call handed out the same dead link. The
workaround ``tenant_id="organizations"`` signed a guest verified in contoso in at home, as
another user (``user_mismatch``). Now a *verified* caller's tenant on the allow-list is the
authority of the sign-in, the code redemption and every refresh of that user's grant; an
unverified tenant (a platform user's token) or one not on the list never chooses it.

After an admin-only refusal (AADSTS90094) the broker's page names the admin consent URL with the
broker's own authority host, tenant and client id, not a template.

The emulator over HTTPS (a world of its own: a multi-tenant consent app, a fabrikam member, an
admin-only scope), the real broker on uvicorn, real MSAL; the "browser" is httpx.
"""

from __future__ import annotations

import asyncio
import ssl
import tomllib
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from _support.consent import Slot, form_post_fields, verified_caller
from _support.servers import serve_in_thread
from entra_passthrough import Caller, ConsentRequired, TokenRequest, UnverifiedClaims
from entra_passthrough._jwt import decode_unverified
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring, MemoryStore
from entra_passthrough._user_key import UserKey
from entra_passthrough.consent import ConsentBroker
from entra_passthrough.testing import EntraEmulator, World
from entra_passthrough.testing._ca import make_tls_material

_WORLD = """
[[apps]]
name = "hr-api"
api = true
scopes = ["HR.Read", "HR.Admin"]
admin_scopes = ["HR.Admin"]
multi_tenant = true

[[apps]]
name = "consent-broker"
tenant = "contoso"
secret = "consent-broker-secret"
redirect_uris = ["https://127.0.0.1:{port}/consent/callback"]
multi_tenant = true
required = ["mcp/access_as_user", "hr-api/HR.Read", "hr-api/HR.Admin"]

[[users]]
name = "fred"
tenant = "fabrikam"
"""


@dataclass
class _Env:
    idp: Any
    port: int
    bundle: str
    slot: Slot
    made: list[DelegatedConsent] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}/consent"

    @property
    def app(self) -> Any:
        return next(a for a in self.idp.world.apps if a.name == "consent-broker")

    def tenant(self, name: str) -> str:
        return str(next(t.id for t in self.idp.world.tenants if t.name == name))

    def make(
        self, tenant_id: str, allowed_tenants: list[str] | None
    ) -> tuple[DelegatedConsent, ConsentBroker]:
        source = DelegatedConsent(
            client_id=self.app.client_id,
            tenant_id=tenant_id,
            client_secret="consent-broker-secret",
            store=MemoryStore(),
            keyring=Keyring.generate(),
            broker_url=self.base,
            authority_host=self.idp.url,
            http_client=self.idp.msal_http_client(),
            server_label="mcp",
            allowed_tenants=allowed_tenants,
        )
        broker = ConsentBroker.for_source(source, redirect_uris=[f"{self.base}/callback"])
        self.slot.app = Starlette(routes=[Mount("/consent", broker.app)])
        self.made.append(source)
        return source, broker

    def browser(self) -> httpx2.AsyncClient:
        context = ssl.create_default_context(cafile=self.bundle)
        return httpx2.AsyncClient(verify=context, follow_redirects=True, timeout=30)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Env]:
    tmp: Path = tmp_path_factory.mktemp("tenant-consent-tls")
    tls = make_tls_material()
    (tmp / "cert.pem").write_bytes(tls.server_cert_pem)
    (tmp / "key.pem").write_bytes(tls.server_key_pem)
    slot = Slot()
    with serve_in_thread(
        slot, lifespan="off", certfile=str(tmp / "cert.pem"), keyfile=str(tmp / "key.pem")
    ) as base:
        port = urllib.parse.urlsplit(base).port
        assert port is not None
        world = World.from_dict(tomllib.loads(_WORLD.replace("{port}", str(port))))
        with EntraEmulator(world=world) as idp:
            bundle = tmp / "bundle.pem"
            bundle.write_bytes(Path(idp.ca_file).read_bytes() + b"\n" + tls.ca_cert_pem)
            found = _Env(idp=idp, port=port, bundle=str(bundle), slot=slot)
            try:
                yield found
            finally:
                for source in found.made:
                    source.close()


def _request(scope: str, caller: Caller) -> TokenRequest:
    return TokenRequest(scopes=(scope,), caller=caller)


async def _link(source: DelegatedConsent, request: TokenRequest) -> str:
    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(request)
    assert info.value.link is not None
    return info.value.link


async def _authorize_url(env: _Env, link: str) -> str:
    async with env.browser() as browser:
        start = await browser.get(link, follow_redirects=False)
    assert start.status_code == 302, start.text[:300]
    return str(start.headers["location"])


def _tenant_of(url: str) -> str:
    return urllib.parse.urlsplit(url).path.split("/")[1]


async def _sign_in(env: _Env, link: str, upn: str) -> httpx2.Response:
    """The user follows the link, signs in as ``upn`` and accepts the consent prompt."""
    async with env.browser() as browser:
        start = await browser.get(link, follow_redirects=False)
        assert start.status_code == 302, start.text[:300]
        location = str(start.headers["location"])
        query = {"login_hint": upn, "emulator_consent": "accept"}
        authorize = await browser.get(
            location.replace("prompt=select_account", "prompt=login")
            + "&"
            + urllib.parse.urlencode(query)
        )
        action, fields = form_post_fields(authorize)
        return await browser.post(action, data=fields, headers={"Accept": "application/json"})


async def test_a_member_of_another_allowed_tenant_signs_in_and_refreshes_there(
    env: _Env,
) -> None:
    idp = env.idp
    contoso, fabrikam = env.tenant("contoso"), env.tenant("fabrikam")
    source, _ = env.make(contoso, [contoso, fabrikam])
    fred = idp.users["fred"]
    request = _request(f"{idp.mcp.app_id_uri}/access_as_user", verified_caller(fabrikam, fred.oid))
    link = await _link(source, request)
    assert _tenant_of(await _authorize_url(env, link)) == fabrikam  # was contoso's: 50020

    page = await _sign_in(env, link, fred.upn)
    assert page.status_code == 200, page.text[:400]
    key = UserKey.for_entra_user(fabrikam, fred.oid)
    stored = await source.grants.get_grant(key.hashed)
    assert stored is not None
    grant = stored[0]
    assert (grant.tid, grant.oid) == (fabrikam, fred.oid)  # keyed as the verified caller

    # The grant's refresh token goes to fabrikam's authority: the token is fabrikam's.
    result = await source.get_token_async(request)
    assert result is not None
    claims = decode_unverified(result.token)
    assert (claims["tid"], claims["oid"]) == (fabrikam, fred.oid)
    assert f"/{fabrikam}/" in claims["iss"]
    # The sync driver's refresh of the rotated grant too.
    again = await asyncio.to_thread(source.get_token, request)
    assert again is not None
    assert decode_unverified(again.token)["tid"] == fabrikam

    # At contoso's authority (the configured tenant) the same refresh token is refused:
    # fred is no member or guest of contoso (AADSTS50020), as Entra refuses it.
    refused = source.client.app().acquire_token_by_refresh_token(
        grant.refresh_token, [f"{idp.mcp.app_id_uri}/access_as_user"]
    )
    assert "access_token" not in refused
    assert 50020 in refused.get("error_codes", [])


async def test_a_guest_verified_in_the_resource_tenant_signs_in_there(env: _Env) -> None:
    """``tenant_id="organizations"``: the guest's verified tenant (contoso) is the authority,
    so the id token is contoso's and matches the key (at ``organizations`` they were signed in
    at home, fabrikam: ``user_mismatch``)."""
    idp = env.idp
    contoso, fabrikam = env.tenant("contoso"), env.tenant("fabrikam")
    source, _ = env.make("organizations", [contoso, fabrikam])
    guest = idp.users["guest"]
    token = decode_unverified(
        idp.user_token("guest", audience=idp.agent.app_id_uri, tenant_id=contoso)
    )
    assert token["tid"] == contoso
    request = _request(
        f"{idp.mcp.app_id_uri}/access_as_user", verified_caller(contoso, token["oid"])
    )
    link = await _link(source, request)
    assert _tenant_of(await _authorize_url(env, link)) == contoso

    page = await _sign_in(env, link, guest.upn)
    assert page.status_code == 200, page.text[:400]
    result = await source.get_token_async(request)
    assert result is not None
    assert decode_unverified(result.token)["tid"] == contoso


async def test_an_unverified_or_unlisted_tenant_never_chooses_the_authority(env: _Env) -> None:
    idp = env.idp
    contoso, fabrikam = env.tenant("contoso"), env.tenant("fabrikam")
    fred = idp.users["fred"]
    scope = f"{idp.mcp.app_id_uri}/access_as_user"
    source, _ = env.make(contoso, [contoso, fabrikam])

    # A platform user whose (unverified) token names fabrikam: the configured tenant.
    forged = Caller(
        user_id="chat-user-1",
        claims=UnverifiedClaims(tid=fabrikam, oid=fred.oid, upn=fred.upn, aud="x"),
    )
    link = await _link(source, _request(scope, forged))
    assert _tenant_of(await _authorize_url(env, link)) == contoso

    # A verified caller of a tenant that is not on the list: the configured tenant.
    unlisted = "2b1f7c2e-0000-4000-8000-000000000001"
    link = await _link(source, _request(scope, verified_caller(unlisted, fred.oid)))
    assert _tenant_of(await _authorize_url(env, link)) == contoso

    # No allow-list (the consent app's own tenant only): unchanged.
    alone, _ = env.make(contoso, None)
    link = await _link(alone, _request(scope, verified_caller(fabrikam, fred.oid)))
    assert _tenant_of(await _authorize_url(env, link)) == contoso

    client = source.client
    assert client.user_tenant("entra", fabrikam.upper()) == fabrikam
    assert client.user_tenant("platform", fabrikam) is None
    assert client.user_tenant("entra", contoso) is None  # the configured tenant itself
    assert client.user_tenant("entra", "organizations") is None
    assert client.user_tenant("entra", None) is None


async def test_the_admin_consent_fix_names_this_broker_and_the_users_tenant(env: _Env) -> None:
    idp = env.idp
    contoso, fabrikam = env.tenant("contoso"), env.tenant("fabrikam")
    hr = next(a for a in idp.world.apps if a.name == "hr-api")
    source, _ = env.make(contoso, [contoso, fabrikam])
    fred = idp.users["fred"]
    request = _request(f"{hr.app_id_uri}/HR.Admin", verified_caller(fabrikam, fred.oid))
    link = await _link(source, request)

    page = await _sign_in(env, link, fred.upn)
    assert page.status_code == 400
    body = page.json()
    assert body["error"] == "sign_in_refused"
    assert "90094" in page.text
    expected = f"{idp.url}/{fabrikam}/adminconsent?client_id={env.app.client_id}"
    assert expected in page.text, page.text[:800]
    assert "<tenant>" not in page.text
    assert "<client app id>" not in page.text
    assert "login.microsoftonline.com" not in page.text


async def test_the_admin_consent_fix_of_a_user_of_the_configured_tenant(env: _Env) -> None:
    idp = env.idp
    contoso = env.tenant("contoso")
    hr = next(a for a in idp.world.apps if a.name == "hr-api")
    source, _ = env.make(contoso, None)
    carol = idp.users["carol"]
    request = _request(f"{hr.app_id_uri}/HR.Admin", verified_caller(contoso, carol.oid))
    page = await _sign_in(env, await _link(source, request), carol.upn)
    assert page.status_code == 400
    assert page.json()["error"] == "sign_in_refused"
    assert "90094" in page.text
    expected = f"{idp.url}/{contoso}/adminconsent?client_id={env.app.client_id}"
    assert expected in page.text, page.text[:800]
    assert f"admin-consent --id {env.app.client_id}" in page.text
    assert "<tenant>" not in page.text
    assert "<client app id>" not in page.text
