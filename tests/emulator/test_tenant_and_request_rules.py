"""The emulator refuses what Entra refuses across tenants and in the request's own shape, seen by
unmodified MSAL, azure-identity and raw HTTPS (docs/emulator.md):

- a parameter named twice: AADSTS9000411 at the token endpoint and at ``/authorize``;
- a v1 ``aud`` is the identifier the request named, on the managed identity endpoints and from
  ``az`` as at the token endpoint;
- ``az --tenant`` for a tenant the user is not in: AADSTS50020;
- a code redeemed at another tenant's endpoint: AADSTS700005; a refresh token at a tenant the
  user is not in: AADSTS50020, and at a tenant where they are a guest, tokens of that tenant;
- consent grants and app role assignments hold in one tenant;
- a resource with "assignment required" gives no app-only token to a caller without an app
  role on it: AADSTS501051.
"""

from __future__ import annotations

import dataclasses
import html
import json
import subprocess
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import msal
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import AzureCliCredential

from entra_passthrough.testing import EntraEmulator, World

from .emu_helpers import assert_entra_error, msal_app, token_url


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def _cca(idp: EntraEmulator, tenant: str) -> msal.ConfidentialClientApplication:
    """The agent as MSAL builds it, with the authority of ``tenant`` (id or common/...)."""
    return msal_app(idp, authority=f"{idp.url}/{tenant}")


def _sign_in(
    idp: EntraEmulator, app: msal.ConfidentialClientApplication, user: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """An authorization code flow up to the code (headless consent): MSAL's flow and the
    redirect's query."""
    flow = app.initiate_auth_code_flow(
        [f"{idp.mcp.app_id_uri}/access_as_user"],
        redirect_uri="http://localhost/callback",
        login_hint=user,
    )
    with httpx.Client(verify=idp.ssl_context()) as http:
        resp = http.get(flow["auth_uri"] + "&emulator_consent=accept")
    assert resp.status_code == 302, resp.text
    query = urllib.parse.urlsplit(resp.headers["location"]).query
    return flow, dict(urllib.parse.parse_qsl(query))


# ---- 1. duplicated parameters (AADSTS9000411) -------------------------------------------------
# MicrosoftDocs/azure-dev-docs#934 (scope twice in a token request),
# AzureAD/microsoft-authentication-library-for-android#688 (login_hint twice at /authorize).


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")
def test_a_parameter_named_twice_is_9000411(idp: EntraEmulator) -> None:
    agent, mcp = idp.agent, idp.mcp
    base = {
        "grant_type": "client_credentials",
        "client_id": agent.client_id,
        "client_secret": agent.secret or "",
    }
    form = "application/x-www-form-urlencoded"
    with httpx.Client(verify=idp.ssl_context()) as http:
        # The same name twice, whatever the values: refused, not resolved to one of them.
        for extra in (
            {"scope": ["nonsense", f"{mcp.client_id}/.default"]},
            {"scope": [f"{mcp.client_id}/.default"] * 2},
            {"scope": [f"{mcp.client_id}/.default"], "client_secret": ["wrong"]},
        ):
            pairs = [*base.items(), *((k, v) for k, vs in extra.items() for v in vs)]
            resp = http.post(
                token_url(idp),
                content=urllib.parse.urlencode(pairs),
                headers={"content-type": form},
            )
            body = assert_entra_error(resp, 9000411, "invalid_request")
            name = next(iter(extra)) if len(extra) == 1 else "client_secret"
            assert f"The parameter '{name}' is duplicated." in body["error_description"]
        # The device code endpoint reads a form too.
        resp = http.post(
            f"{idp.authority}/oauth2/v2.0/devicecode",
            content=f"client_id={idp.frontend.client_id}&scope=openid&scope=profile",
            headers={"content-type": form},
        )
        assert_entra_error(resp, 9000411, "invalid_request")

        # /authorize: an app appends prompt=consent to MSAL's URL, which already has a prompt.
        app = msal_app(idp)
        url = app.get_authorization_request_url(
            [f"{mcp.app_id_uri}/access_as_user"],
            redirect_uri="http://localhost/callback",
            prompt="select_account",
            login_hint="alice",
        )
        resp = http.get(url + "&prompt=consent&emulator_consent=accept")
        assert resp.status_code == 400, resp.headers
        assert "location" not in resp.headers
        page = html.unescape(resp.text)
        assert "AADSTS9000411: The request is not properly formatted." in page
        assert "The parameter 'prompt' is duplicated." in page
        # Posted as a form: the same name twice in the body is refused as well.
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        body_pairs = [*query.items(), ("login_hint", "bob")]
        resp = http.post(
            url.split("?")[0],
            content=urllib.parse.urlencode(body_pairs),
            headers={"content-type": form},
        )
        assert resp.status_code == 400
        assert "The parameter 'login_hint' is duplicated." in html.unescape(resp.text)
        # Once each, the same URL signs alice in.
        resp = http.get(url + "&emulator_consent=accept")
        assert resp.status_code == 302
        assert "code=" in resp.headers["location"]


# ---- 2. a v1 aud is the identifier the request named, everywhere ------------------------------
# access-token-claims-reference, "aud": "the client ID or the resource URI used in the request".


def test_v1_aud_follows_the_request_on_managed_identity_and_az(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    legacy, foundry = idp.legacy_api, idp.foundry
    assert legacy.access_token_version == foundry.access_token_version == 1
    mi = idp.managed_identity
    header = {"X-IDENTITY-HEADER": idp.mi_env()["IDENTITY_HEADER"]}
    cases = {
        legacy.app_id_uri: legacy.app_id_uri,
        legacy.client_id: legacy.client_id,
        "https://ai.azure.com": "https://ai.azure.com",
        "https://ai.azure.com/": "https://ai.azure.com/",
        foundry.client_id: foundry.client_id,
    }
    with httpx.Client() as http:
        for resource, aud in cases.items():
            params = {"api-version": "2019-08-01", "resource": resource, "client_id": mi.client_id}
            resp = http.get(idp.mi_endpoint, params=params, headers=header)
            assert resp.status_code == 200, resp.text
            claims = _claims(resp.json()["access_token"])
            assert (claims["aud"], claims["ver"]) == (aud, "1.0"), resource
            # IMDS answers alike.
            imds = idp.mi_env("imds")["AZURE_POD_IDENTITY_AUTHORITY_HOST"].rstrip("/")
            resp = http.get(
                f"{imds}/metadata/identity/oauth2/token",
                params={"api-version": "2018-02-01", "resource": resource},
                headers={"Metadata": "true"},
            )
            assert resp.status_code == 200, resp.text
            assert _claims(resp.json()["access_token"])["aud"] == aud, resource
    # The v1 token endpoint keeps the trailing slash of `resource` too.
    with httpx.Client(verify=idp.ssl_context()) as http:
        resp = http.post(
            f"{idp.authority}/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": idp.agent.client_id,
                "client_secret": idp.agent.secret or "",
                "resource": "https://ai.azure.com/",
            },
        )
    assert _claims(resp.json()["access_token"])["aud"] == "https://ai.azure.com/"
    # az: azure-identity's AzureCliCredential turns the scope into --resource.
    for name, value in idp.az_env("alice").items():
        monkeypatch.setenv(name, value)
    token = AzureCliCredential().get_token(f"{legacy.client_id}/.default")
    assert _claims(token.token)["aud"] == legacy.client_id
    token = AzureCliCredential().get_token(f"{legacy.app_id_uri}/.default")
    assert _claims(token.token)["aud"] == legacy.app_id_uri
    out = subprocess.run(
        ["az", "account", "get-access-token", "--resource", "https://ai.azure.com/"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert _claims(json.loads(out.stdout)["accessToken"])["aud"] == "https://ai.azure.com/"


# ---- 3. az --tenant for a tenant the user is not in (AADSTS50020) -----------------------------


def test_az_refuses_a_tenant_the_user_is_not_in(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in idp.az_env("alice").items():  # alice: a member of contoso only
        monkeypatch.setenv(name, value)
    with pytest.raises(ClientAuthenticationError) as info:
        AzureCliCredential(tenant_id=idp.second_tenant_id).get_token(
            f"{idp.mcp.app_id_uri}/.default"
        )
    assert "AADSTS50020" in str(info.value)
    assert "04b07795-8ddb-461a-bbee-02f9e1bf7b46" in str(info.value)  # the Azure CLI's client
    # Her own tenant works, named or not.
    token = AzureCliCredential(tenant_id=idp.tenant_id).get_token(f"{idp.mcp.app_id_uri}/.default")
    assert _claims(token.token)["tid"] == idp.tenant_id
    # The guest (home fabrikam, guest in contoso) gets tokens in both; but a single-tenant API
    # of contoso does not exist in fabrikam (AADSTS500011, as at the token endpoint).
    for name, value in idp.az_env("guest").items():
        monkeypatch.setenv(name, value)
    for tenant in (idp.tenant_id, idp.second_tenant_id):
        token = AzureCliCredential(tenant_id=tenant).get_token(f"{idp.mcp.app_id_uri}/.default")
        assert _claims(token.token)["tid"] == tenant
    with pytest.raises(ClientAuthenticationError) as info:
        AzureCliCredential(tenant_id=idp.second_tenant_id).get_token(
            f"{idp.legacy_api.app_id_uri}/.default"
        )
    assert "AADSTS500011" in str(info.value)


# ---- 4. codes and refresh tokens redeemed at another tenant's endpoint ------------------------
# reference-error-codes: AADSTS700005 InvalidGrantRedeemAgainstWrongTenant; AADSTS50020.


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")
def test_a_code_is_redeemed_at_the_tenant_it_was_issued_for(idp: EntraEmulator) -> None:
    contoso, fabrikam = _cca(idp, idp.tenant_id), _cca(idp, idp.second_tenant_id)
    flow, answer = _sign_in(idp, contoso, "alice")
    refused = fabrikam.acquire_token_by_auth_code_flow(flow, answer)
    assert refused.get("error") == "invalid_grant", refused
    assert refused.get("error_codes") == [700005], refused
    # The refused redemption did not spend the code: at its own tenant it still works.
    ok = contoso.acquire_token_by_auth_code_flow(flow, answer)
    assert _claims(ok["access_token"])["tid"] == idp.tenant_id, ok
    # A sign-in at /organizations is issued by the user's home tenant (fabrikam for the
    # guest): redeemed at the app's own tenant, it is refused too...
    organizations = _cca(idp, "organizations")
    flow, answer = _sign_in(idp, organizations, "guest")
    assert contoso.acquire_token_by_auth_code_flow(flow, answer).get("error_codes") == [700005]
    # ...and at /organizations (or the home tenant) it is redeemed.
    flow, answer = _sign_in(idp, organizations, "guest")
    ok = _cca(idp, "organizations").acquire_token_by_auth_code_flow(flow, answer)
    assert _claims(ok["access_token"])["tid"] == idp.second_tenant_id, ok
    # /common redeems a code of a tenant-specific sign-in, as before.
    flow, answer = _sign_in(idp, contoso, "bob")
    ok = _cca(idp, "common").acquire_token_by_auth_code_flow(flow, answer)
    assert _claims(ok["access_token"])["tid"] == idp.tenant_id, ok


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")
def test_a_refresh_token_at_another_tenant_needs_the_user_there(idp: EntraEmulator) -> None:
    scopes = [f"{idp.mcp.app_id_uri}/access_as_user"]
    contoso, fabrikam = _cca(idp, idp.tenant_id), _cca(idp, idp.second_tenant_id)
    # alice is a member of contoso only: her refresh token at fabrikam's endpoint is refused.
    flow, answer = _sign_in(idp, contoso, "alice")
    rt = contoso.acquire_token_by_auth_code_flow(flow, answer)["refresh_token"]
    refused = fabrikam.acquire_token_by_refresh_token(rt, scopes)
    assert refused.get("error_codes") == [50020], refused
    # At /common it is redeemed in the tenant it was issued in.
    ok = _cca(idp, "common").acquire_token_by_refresh_token(rt, scopes)
    assert _claims(ok["access_token"])["tid"] == idp.tenant_id, ok
    # The guest (home fabrikam, guest in contoso): a refresh token of a sign-in at fabrikam,
    # redeemed at contoso's endpoint, gives tokens of contoso, the tenant whose endpoint issued
    # them, with the guest's home issuer as idp.
    flow, answer = _sign_in(idp, fabrikam, "guest")
    first = fabrikam.acquire_token_by_auth_code_flow(flow, answer)
    assert _claims(first["access_token"])["tid"] == idp.second_tenant_id, first
    again = contoso.acquire_token_by_refresh_token(first["refresh_token"], scopes)
    claims = _claims(again["access_token"])
    assert claims["tid"] == idp.tenant_id, again
    assert claims["iss"] == idp.issuer(idp.tenant_id)
    assert claims["idp"] == idp.issuer(idp.second_tenant_id)
    # The refresh token that answer returned belongs to contoso now: at /common, contoso.
    ok = _cca(idp, "common").acquire_token_by_refresh_token(again["refresh_token"], scopes)
    assert _claims(ok["access_token"])["tid"] == idp.tenant_id, ok


# ---- 5. consent grants and app role assignments hold in one tenant ----------------------------

TENANT_WORLD: dict[str, Any] = {
    "users": [{"name": "fred", "tenant": "fabrikam"}],  # a member of fabrikam
    "apps": [
        {"name": "fab_api", "api": True, "multi_tenant": True, "scope": "read", "roles": ["R"]}
    ],
    "grants": [
        # fred's consent, given where the agent is registered (contoso): no tenant named.
        {"client": "agent", "resource": "mcp", "scopes": ["access_as_user"], "user": "fred"},
        # An admin of fabrikam consented to fab_api for everyone in fabrikam.
        {"client": "agent", "resource": "fab_api", "scopes": ["read"], "tenant": "fabrikam"},
    ],
    "role_assignments": [
        {"client": "agent", "resource": "fab_api", "role": "R", "tenant": "fabrikam"},
    ],
}


@pytest.fixture(scope="module")
def tenant_idp() -> Iterator[EntraEmulator]:
    with EntraEmulator(world=World.from_dict(TENANT_WORLD)) as idp:
        yield idp


def test_grants_and_role_assignments_hold_in_their_tenant(tenant_idp: EntraEmulator) -> None:
    idp = tenant_idp
    fabrikam = idp.second_tenant_id
    api = idp.app("fab_api")
    obo = _cca(idp, fabrikam)
    assertion = idp.user_token("fred", audience=idp.agent.client_id, tenant_id=fabrikam)
    # fred's consent was given in contoso: in fabrikam the agent has none (AADSTS65001).
    refused = obo.acquire_token_on_behalf_of(assertion, [f"{idp.mcp.app_id_uri}/.default"])
    assert refused.get("error_codes") == [65001], refused
    # Nor does contoso's tenant-wide consent to Graph hold in fabrikam.
    refused = obo.acquire_token_on_behalf_of(assertion, ["User.Read"])
    assert refused.get("error_codes") == [65001], refused
    # fabrikam's own admin consent does.
    ok = obo.acquire_token_on_behalf_of(assertion, [f"{api.app_id_uri}/.default"])
    claims = _claims(ok["access_token"])
    assert (claims["tid"], claims["scp"]) == (fabrikam, "read"), ok
    # Consent given in fabrikam (idp.grant_consent(tenant_id=...)) makes fred's OBO work.
    idp.grant_consent("fred", idp.agent.client_id, ["access_as_user"], tenant_id=fabrikam)
    ok = obo.acquire_token_on_behalf_of(assertion, [f"{idp.mcp.app_id_uri}/.default"])
    assert _claims(ok["access_token"])["tid"] == fabrikam, ok
    # App roles: the agent's Tools.Call on mcp was assigned in contoso, R on fab_api in fabrikam.
    contoso_app = _cca(idp, idp.tenant_id)
    for app, resource, roles in (
        (contoso_app, idp.mcp, ["Tools.Call"]),
        (obo, idp.mcp, None),
        (obo, api, ["R"]),
        (contoso_app, api, None),
    ):
        token = app.acquire_token_for_client([f"{resource.client_id}/.default"])["access_token"]
        assert _claims(token).get("roles") == roles, (resource.name, app.authority.tenant)


# ---- 6. assignment required on the resource, app-only (AADSTS501051) --------------------------


@pytest.fixture(scope="module")
def assigned_idp() -> Iterator[EntraEmulator]:
    world = World.default()
    mcp = world.app("mcp")
    assert mcp is not None
    world = world.with_app(dataclasses.replace(mcp, assignment_required=True, assigned=("alice",)))
    with EntraEmulator(world=world) as idp:
        yield idp


def test_assignment_required_resource_needs_an_app_role_for_app_only(
    assigned_idp: EntraEmulator,
) -> None:
    idp = assigned_idp
    scope = [f"{idp.mcp.client_id}/.default"]
    # The agent holds Tools.Call on mcp; the blueprint holds no role there.
    ok = msal_app(idp).acquire_token_for_client(scope)
    assert _claims(ok["access_token"])["roles"] == ["Tools.Call"], ok
    refused = msal_app(idp, idp.blueprint.client_id, idp.blueprint.secret).acquire_token_for_client(
        scope
    )
    assert refused.get("error") == "invalid_grant", refused
    assert refused.get("error_codes") == [501051], refused
    assert f"Application '{idp.blueprint.client_id}'" in refused["error_description"]
    assert "is not assigned to a role for the application" in refused["error_description"]
    # Managed identity: the user-assigned identity holds Tools.Call, the system-assigned one
    # (what the endpoint answers with when no identity is named) does not.
    header = {"X-IDENTITY-HEADER": idp.mi_env()["IDENTITY_HEADER"]}
    with httpx.Client() as http:
        params = {"api-version": "2019-08-01", "resource": idp.mcp.client_id}
        ok_resp = http.get(
            idp.mi_endpoint,
            params={**params, "client_id": idp.managed_identity.client_id},
            headers=header,
        )
        assert _claims(ok_resp.json()["access_token"])["roles"] == ["Tools.Call"]
        resp = http.get(idp.mi_endpoint, params=params, headers=header)
    assert resp.status_code == 400, resp.text
    assert resp.json()["message"].startswith("AADSTS501051: "), resp.text
    # A resource without assignment required still gives app-only tokens without roles.
    other = msal_app(idp, idp.blueprint.client_id, idp.blueprint.secret).acquire_token_for_client(
        [f"{idp.legacy_api.client_id}/.default"]
    )
    assert "access_token" in other, other
    assert "roles" not in _claims(other["access_token"])


def test_the_refusals_are_decoded() -> None:
    from entra_passthrough._aadsts import AADSTS

    for code in (9000411, 700005, 501051, 50020):
        assert AADSTS[code].meaning, code
        assert AADSTS[code].fix, code
