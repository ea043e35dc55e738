"""The tenant-less authorities refuse what Entra refuses there, seen by unmodified MSAL,
azure-identity and raw HTTPS (docs/emulator.md, "Strict where Entra is strict"):

- client credentials name no tenant at ``common``/``organizations``: AADSTS50059 ("No
  tenant-identifying information found in either the request or implied by any provided
  credentials.", ``invalid_request``), never a token of some tenant of the world
  (https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow: the
  request names "the directory tenant the application plans to operate against");
- ``consumers`` serves personal Microsoft accounts only, and the emulator has no personal-account
  apps: every flow there is AADSTS700016 in the directory 'Microsoft Accounts', and its discovery
  document publishes the MSA tenant's issuer;
- OBO at ``common``/``organizations`` runs in the assertion's tenant: a single-tenant app with
  another tenant's assertion is AADSTS700016 there, as at that tenant's own endpoint (not a
  consent prompt no consent can satisfy).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import msal
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientSecretCredential

from entra_passthrough.testing import App, EntraEmulator, World

from .emu_helpers import aadsts, assert_entra_error, msal_app, no_http_cache

MSA_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
NO_TENANT = (
    "No tenant-identifying information found in either the request or implied by any "
    "provided credentials."
)


@pytest.fixture(scope="module")
def world_idp() -> Iterator[EntraEmulator]:
    """The default world plus ``fab-app``: a single-tenant confidential app of fabrikam."""
    world = World.from_dict(
        {"apps": [{"name": "fab-app", "tenant": "fabrikam", "secret": True, "certificate": True}]}
    )
    with EntraEmulator(world=world) as emulator:
        yield emulator


def _at(
    idp: EntraEmulator, app: App, segment: str, credential: Any = None
) -> msal.ConfidentialClientApplication:
    """MSAL for ``app`` (its secret unless ``credential``) at the authority ``segment``."""
    return msal_app(
        idp,
        client_id=app.client_id,
        credential=credential if credential is not None else app.secret,
        authority=f"{idp.url}/{segment}",
    )


def _msa_unknown(result: dict[str, Any], client_id: str) -> None:
    assert "access_token" not in result, result
    assert result.get("error") == "unauthorized_client", result
    assert aadsts(result) == 700016
    assert (
        f"Application with identifier '{client_id}' was not found in the directory "
        "'Microsoft Accounts'." in result["error_description"]
    )


# ---- 1. client credentials at common / organizations: AADSTS50059 --------------------------


@pytest.mark.parametrize("segment", ["common", "organizations"])
def test_client_credentials_at_a_tenantless_authority_is_aadsts50059(
    world_idp: EntraEmulator, segment: str
) -> None:
    idp = world_idp
    scope = [f"{idp.mcp.app_id_uri}/.default"]
    # A single-tenant app of fabrikam (no service principal in contoso, the world's first
    # tenant) and a multi-tenant app of contoso: neither gets a token without a tenant.
    for app in (idp.app("fab-app"), idp.agent):
        result = _at(idp, app, segment).acquire_token_for_client(scope)
        assert "access_token" not in result, result
        assert result.get("error") == "invalid_request"
        assert aadsts(result) == 50059
        assert NO_TENANT in result["error_description"]
    # The same with a certificate (nothing in it names a tenant either).
    fab = idp.app("fab-app")
    assert fab.certificate_pem is not None
    assert fab.certificate_thumbprint is not None
    text = fab.certificate_pem.decode()
    key = text[: text.index("-----BEGIN CERTIFICATE-----")]
    credential = {"private_key": key, "thumbprint": fab.certificate_thumbprint}
    result = _at(idp, fab, segment, credential=credential).acquire_token_for_client(scope)
    assert aadsts(result) == 50059, result
    # Entra's body: invalid_request, HTTP 400.
    with httpx.Client(verify=idp.ssl_context()) as http:
        resp = http.post(
            f"{idp.url}/{segment}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": fab.client_id,
                "client_secret": fab.secret or "",
                "scope": scope[0],
            },
        )
    body = assert_entra_error(resp, 50059, "invalid_request")
    assert (fab.secret or "") not in resp.text
    assert "tid" not in body
    # azure-identity with AZURE_TENANT_ID=organizations (a common mistake): refused too.
    cred = ClientSecretCredential(
        segment,
        fab.client_id,
        fab.secret or "",
        authority=idp.url,
        disable_instance_discovery=True,
        connection_verify=idp.ca_file,
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS50059"):
        cred.get_token(scope[0])
    # At the app's own tenant it works, as before.
    own = _at(idp, fab, idp.second_tenant_id).acquire_token_for_client(scope)
    assert "access_token" in own, own.get("error_description")


# ---- 2. consumers: personal Microsoft accounts only --------------------------------------------


def test_client_credentials_at_consumers_is_aadsts700016_in_microsoft_accounts(
    world_idp: EntraEmulator,
) -> None:
    idp = world_idp
    scope = [f"{idp.mcp.app_id_uri}/.default"]
    for app in (idp.app("fab-app"), idp.agent):
        _msa_unknown(_at(idp, app, "consumers").acquire_token_for_client(scope), app.client_id)
    with httpx.Client(verify=idp.ssl_context()) as http:
        resp = http.post(
            f"{idp.url}/consumers/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": idp.agent.client_id,
                "client_secret": idp.agent.secret or "",
                "scope": scope[0],
            },
        )
    assert_entra_error(resp, 700016, "unauthorized_client")
    assert (idp.agent.secret or "") not in resp.text


def test_every_flow_at_consumers_is_aadsts700016_in_microsoft_accounts(idp: EntraEmulator) -> None:
    agent, mcp = idp.agent, idp.mcp
    scope = [f"{mcp.app_id_uri}/access_as_user"]
    # OBO of a work account (alice's token for the agent): no token at /consumers.
    alice = idp.user_token("alice", audience=agent.client_id)
    result = _at(idp, agent, "consumers").acquire_token_on_behalf_of(alice, scope)
    _msa_unknown(result, agent.client_id)
    # A refresh token and ROPC, raw: the same answer, whatever the grant.
    with httpx.Client(verify=idp.ssl_context()) as http:
        for form in (
            {"grant_type": "refresh_token", "refresh_token": "x" * 40, "scope": scope[0]},
            {"grant_type": "password", "username": "alice", "password": "alice-password"},
        ):
            resp = http.post(
                f"{idp.url}/consumers/oauth2/v2.0/token",
                data={**form, "client_id": idp.frontend.client_id},
            )
            _msa_unknown(
                assert_entra_error(resp, 700016, "unauthorized_client"), idp.frontend.client_id
            )
        # /authorize: Entra's error page for an unknown app, nothing sent to the redirect URI.
        query = {
            "client_id": agent.client_id,
            "response_type": "code",
            "redirect_uri": "http://localhost/callback",
            "scope": f"openid {scope[0]}",
            "login_hint": "alice",
            "state": "s1",
        }
        page = http.get(f"{idp.url}/consumers/oauth2/v2.0/authorize?{urlencode(query)}")
        assert page.status_code == 400
        assert "location" not in page.headers
        found = re.search(r"<p id='error'>(.*?)</p>", page.text, flags=re.S)
        assert found, page.text
        text = html.unescape(found[1])
        assert text.startswith(
            f"AADSTS700016: Application with identifier '{agent.client_id}' was not found in "
            "the directory 'Microsoft Accounts'."
        )
    # Device code (MSAL's public client): refused at the devicecode endpoint.
    public = msal.PublicClientApplication(
        idp.frontend.client_id,
        authority=f"{idp.url}/consumers",
        instance_discovery=False,
        http_client=idp.msal_http_client(),
        http_cache=no_http_cache(),
    )
    flow = public.initiate_device_flow(scopes=scope)
    assert "user_code" not in flow, flow
    _msa_unknown(flow, idp.frontend.client_id)
    # The MSA tenant's own id is the same authority.
    result = _at(idp, agent, MSA_TENANT).acquire_token_on_behalf_of(alice, scope)
    _msa_unknown(result, agent.client_id)
    # At /organizations the same OBO works (the user's home tenant), as before.
    ok = _at(idp, agent, "organizations").acquire_token_on_behalf_of(alice, scope)
    assert "access_token" in ok, ok.get("error_description")


def test_consumers_discovery_publishes_the_msa_tenant_issuer(idp: EntraEmulator) -> None:
    with httpx.Client(verify=idp.ssl_context()) as http:
        v2 = http.get(f"{idp.url}/consumers/v2.0/.well-known/openid-configuration").json()
        v1 = http.get(f"{idp.url}/consumers/.well-known/openid-configuration").json()
        keys = http.get(v2["jwks_uri"]).json()["keys"]
        organizations = http.get(
            f"{idp.url}/organizations/v2.0/.well-known/openid-configuration"
        ).json()
    # The fixed tenant of personal accounts, not the {tenantid} template of common.
    assert v2["issuer"] == f"{idp.url}/{MSA_TENANT}/v2.0"
    assert v2["token_endpoint"] == f"{idp.url}/consumers/oauth2/v2.0/token"
    assert v2["authorization_endpoint"] == f"{idp.url}/consumers/oauth2/v2.0/authorize"
    assert v1["issuer"] == f"{idp.url}/{MSA_TENANT}/"
    assert keys
    assert all(k["issuer"] == f"{idp.url}/{MSA_TENANT}/v2.0" for k in keys)
    assert organizations["issuer"] == f"{idp.url}/{{tenantid}}/v2.0"  # unchanged


# ---- 3. OBO at common / organizations runs in the assertion's tenant --------------------------


@pytest.mark.parametrize("segment", ["common", "organizations"])
def test_obo_at_a_tenantless_authority_checks_the_client_in_the_assertions_tenant(
    idp: EntraEmulator, segment: str
) -> None:
    bp = idp.blueprint  # single-tenant, registered in contoso
    scope = [f"{idp.mcp.app_id_uri}/.default"]
    foreign = idp.user_token("alice", audience=bp.client_id, tenant_id=idp.second_tenant_id)
    at_fabrikam = _at(idp, bp, idp.second_tenant_id).acquire_token_on_behalf_of(foreign, scope)
    result = _at(idp, bp, segment).acquire_token_on_behalf_of(foreign, scope)
    for answer in (at_fabrikam, result):
        assert "access_token" not in answer, answer
        assert answer.get("error") == "unauthorized_client"
        assert aadsts(answer) == 700016
        assert answer.get("suberror") is None  # not consent_required: no consent can help
        assert f"directory '{idp.second_tenant_id}'" in answer["error_description"]
    # With a wrong secret too: the app is not found there before its secret is looked at,
    # as at fabrikam's own endpoint.
    wrong = _at(idp, bp, segment, credential="wrong").acquire_token_on_behalf_of(foreign, scope)
    assert aadsts(wrong) == 700016, wrong
    # Its own tenant's assertion keeps working at the tenant-less authority.
    own = idp.user_token("alice", audience=bp.client_id)
    ok = _at(idp, bp, segment).acquire_token_on_behalf_of(own, scope)
    assert "access_token" in ok, ok.get("error_description")
