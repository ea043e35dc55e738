"""Unmodified MSAL obtains tokens from the emulator; PyJWT verifies them against the JWKS."""

from __future__ import annotations

import hashlib
import re
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import msal
import pytest

from entra_passthrough.testing import EntraEmulator

from .emu_helpers import aadsts, post_token, verify_with_jwks


def test_client_credentials_with_secret(idp: EntraEmulator, cca) -> None:
    result = cca().acquire_token_for_client([f"{idp.mcp.app_id_uri}/.default"])
    assert result["token_type"] == "Bearer"
    claims = verify_with_jwks(
        idp, result["access_token"], audience=idp.mcp.client_id, issuer=idp.issuer()
    )
    assert claims["azp"] == idp.agent.client_id
    assert claims["azpacr"] == "1"
    assert claims["oid"] == claims["sub"] == idp.agent.object_id
    assert claims["roles"] == ["Tools.Call"]
    assert claims["idtyp"] == "app"  # mcp lists idtyp as an optional claim
    assert "scp" not in claims


def test_client_credentials_with_certificate(idp: EntraEmulator, cca) -> None:
    pem = idp.agent.certificate_pem
    assert pem is not None
    app = cca(
        credential={
            "private_key": pem.decode(),
            "thumbprint": idp.agent.certificate_thumbprint,
            "public_certificate": pem.decode().split("-----END PRIVATE KEY-----")[1].strip(),
        }
    )
    result = app.acquire_token_for_client([f"{idp.legacy_api.app_id_uri}/.default"])
    assert "access_token" in result, result.get("error_description")
    claims = verify_with_jwks(
        idp,
        result["access_token"],
        audience=idp.legacy_api.app_id_uri,
        issuer=idp.issuer(version="1.0"),
    )
    # v1 token: appid/appidacr, aud = App ID URI, certificate -> appidacr 2.
    assert claims["ver"] == "1.0"
    assert claims["appid"] == idp.agent.client_id
    assert claims["appidacr"] == "2"


def test_certificate_with_sha1_thumbprint_only(idp: EntraEmulator, cca) -> None:
    pem = idp.agent.certificate_pem
    assert pem is not None
    app = cca(
        credential={"private_key": pem.decode(), "thumbprint": idp.agent.certificate_thumbprint}
    )
    assert "access_token" in app.acquire_token_for_client([f"{idp.mcp.app_id_uri}/.default"])


def test_on_behalf_of_v2_claims(idp: EntraEmulator, cca) -> None:
    assertion = idp.user_token("alice", audience=idp.agent.client_id)
    result = cca().acquire_token_on_behalf_of(assertion, [f"{idp.mcp.app_id_uri}/.default"])
    assert "access_token" in result, result.get("error_description")
    assert result["scope"].split()[0] == f"{idp.mcp.app_id_uri}/access_as_user"
    assert "refresh_token" in result  # MSAL adds offline_access itself
    claims = verify_with_jwks(
        idp, result["access_token"], audience=idp.mcp.client_id, issuer=idp.issuer()
    )
    alice = idp.users["alice"]
    assert claims["oid"] == alice.oid
    assert claims["preferred_username"] == alice.upn
    assert claims["name"] == alice.display_name
    assert claims["tid"] == idp.tenant_id
    assert claims["scp"] == "access_as_user"
    assert claims["azp"] == idp.agent.client_id
    assert claims["ver"] == "2.0"
    assert claims["sub"] != alice.oid  # pairwise
    assert claims["idtyp"] == "user"


def test_on_behalf_of_v1_resource_and_app_id_uri_assertion(idp: EntraEmulator, cca) -> None:
    assertion = idp.user_token("bob", audience=idp.agent.app_id_uri, version=1)
    result = cca().acquire_token_on_behalf_of(
        assertion, [f"{idp.legacy_api.app_id_uri}/user_impersonation"]
    )
    assert "access_token" in result, result.get("error_description")
    claims = verify_with_jwks(
        idp,
        result["access_token"],
        audience=idp.legacy_api.app_id_uri,
        issuer=idp.issuer(version="1.0"),
    )
    assert claims["upn"] == claims["unique_name"] == idp.users["bob"].upn
    assert claims["appid"] == idp.agent.client_id
    assert "idtyp" not in claims  # not configured as an optional claim on legacy_api


def form_post_fields(page: str) -> dict[str, str]:
    """The hidden fields of Entra's response_mode=form_post page."""
    return dict(re.findall(r"name='([^']+)' value='([^']*)'", page))


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")
def test_auth_code_with_pkce(idp: EntraEmulator, cca) -> None:
    app = cca()
    flow = app.initiate_auth_code_flow(
        [f"{idp.mcp.app_id_uri}/access_as_user"],
        redirect_uri="http://localhost:8765/callback",
        login_hint=idp.users["alice"].upn,
        domain_hint="organizations",
    )
    assert flow["code_verifier"]
    with httpx.Client(verify=idp.ssl_context()) as http:
        resp = http.get(flow["auth_uri"])
    assert resp.status_code == 302
    params = {k: v[0] for k, v in parse_qs(urlsplit(resp.headers["location"]).query).items()}
    assert params["state"] == flow["state"]
    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert "access_token" in result, result.get("error_description")
    # MSAL sends sha256(nonce) as the nonce and checks the id token echoes it.
    hashed = hashlib.sha256(flow["nonce"].encode()).hexdigest()
    assert result["id_token_claims"]["nonce"] == hashed
    assert result["id_token_claims"]["aud"] == idp.agent.client_id
    assert app.get_accounts()[0]["username"] == idp.users["alice"].upn
    # The same code again: AADSTS54005.
    again = app.client.obtain_token_by_authorization_code(
        params["code"],
        redirect_uri="http://localhost:8765/callback",
        data={"code_verifier": flow["code_verifier"]},
    )
    assert aadsts(again) == 54005


def test_pkce_mismatch_is_invalid_grant(idp: EntraEmulator, cca) -> None:
    app = cca()
    flow = app.initiate_auth_code_flow(
        [f"{idp.mcp.app_id_uri}/access_as_user"],
        redirect_uri="http://localhost/callback",
        login_hint="alice",
        response_mode="form_post",
    )
    with httpx.Client(verify=idp.ssl_context()) as http:
        params = form_post_fields(http.get(flow["auth_uri"]).text)
    flow["code_verifier"] = "x" * 43
    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert result["error"] == "invalid_grant"
    assert aadsts(result) == 501481


def test_unregistered_redirect_uri_is_50011_page(idp: EntraEmulator, cca) -> None:
    flow = cca().initiate_auth_code_flow(
        [f"{idp.mcp.app_id_uri}/access_as_user"],
        redirect_uri="https://evil.example/cb",
        login_hint="alice",
        response_mode="form_post",
    )
    with httpx.Client(verify=idp.ssl_context()) as http:
        resp = http.get(flow["auth_uri"])
    assert resp.status_code == 400
    assert "AADSTS50011" in resp.text
    assert "location" not in resp.headers


def test_refresh_rotates_and_old_token_still_works(idp: EntraEmulator, cca) -> None:
    app = cca()
    first = app.acquire_token_on_behalf_of(
        idp.user_token("alice", audience=idp.agent.client_id), [f"{idp.mcp.app_id_uri}/.default"]
    )
    rt1 = first["refresh_token"]
    second = app.acquire_token_by_refresh_token(rt1, [f"{idp.mcp.app_id_uri}/.default"])
    assert "access_token" in second, second.get("error_description")
    assert second["refresh_token"] != rt1
    # Entra does not revoke the old refresh token on rotation (refresh-tokens page).
    third = app.acquire_token_by_refresh_token(rt1, [f"{idp.mcp.app_id_uri}/.default"])
    assert "access_token" in third


def test_revoked_refresh_token(idp: EntraEmulator, cca) -> None:
    app = cca()
    first = app.acquire_token_on_behalf_of(
        idp.user_token("bob", audience=idp.agent.client_id), [f"{idp.mcp.app_id_uri}/.default"]
    )
    assert idp.revoke_refresh_tokens("bob") >= 1
    result = app.acquire_token_by_refresh_token(
        first["refresh_token"], [f"{idp.mcp.app_id_uri}/.default"]
    )
    assert result["error"] == "invalid_grant"
    assert aadsts(result) == 50173


def test_ropc_with_public_client(idp: EntraEmulator) -> None:
    app = msal.PublicClientApplication(
        idp.frontend.client_id,
        authority=idp.authority,
        instance_discovery=False,
        http_client=idp.msal_http_client(),
    )
    alice = idp.users["alice"]
    result = app.acquire_token_by_username_password(
        alice.upn, alice.password, [f"{idp.agent.app_id_uri}/access_as_user"]
    )
    assert "access_token" in result, result.get("error_description")
    claims = verify_with_jwks(
        idp, result["access_token"], audience=idp.agent.client_id, issuer=idp.issuer()
    )
    assert claims["azpacr"] == "0"
    bad = app.acquire_token_by_username_password(
        alice.upn, "wrong", [f"{idp.agent.app_id_uri}/access_as_user"]
    )
    assert aadsts(bad) == 50126


def test_fmi_path_agent_identity_obo(idp: EntraEmulator, cca) -> None:
    blueprint = cca(idp.blueprint.client_id, idp.blueprint.secret)
    t1 = blueprint.acquire_token_for_client(
        ["api://AzureADTokenExchange/.default"], fmi_path=idp.agent_identity.client_id
    )
    assert "access_token" in t1, t1.get("error_description")
    agent_identity = cca(
        idp.agent_identity.client_id, {"client_assertion": lambda: t1["access_token"]}
    )
    user = idp.user_token("alice", audience=idp.blueprint.client_id)
    result = agent_identity.acquire_token_on_behalf_of(user, [f"{idp.mcp.app_id_uri}/.default"])
    assert "access_token" in result, result.get("error_description")
    claims = verify_with_jwks(
        idp, result["access_token"], audience=idp.mcp.client_id, issuer=idp.issuer()
    )
    assert claims["azp"] == idp.agent_identity.client_id
    assert claims["oid"] == idp.users["alice"].oid
    # A blueprint may only name its own child agent identities: AADSTS82001.
    other = blueprint.acquire_token_for_client(
        ["api://AzureADTokenExchange/.default"], fmi_path=idp.agent.client_id
    )
    assert aadsts(other) == 82001


def test_key_rotation_old_kid_verifies_until_retired(entra_emulator_fresh: EntraEmulator) -> None:
    idp = entra_emulator_fresh
    old = idp.user_token("alice", audience=idp.mcp.client_id)
    new_kid = idp.rotate_keys()
    new = idp.user_token("alice", audience=idp.mcp.client_id)
    for token in (old, new):
        verify_with_jwks(idp, token, audience=idp.mcp.client_id, issuer=idp.issuer())
    assert idp.signing_kid == new_kid
    idp.rotate_keys(retire_old=True)
    verify_with_jwks(idp, new, audience=idp.mcp.client_id, issuer=idp.issuer())
    import jwt

    with pytest.raises(jwt.PyJWKClientError):
        verify_with_jwks(idp, old, audience=idp.mcp.client_id, issuer=idp.issuer())


def test_expiry_claims_follow_lifetime(idp: EntraEmulator) -> None:
    import jwt

    token = idp.user_token("alice", audience=idp.mcp.client_id, lifetime=120)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120
    assert claims["nbf"] <= int(time.time())


def test_guest_obo_in_resource_tenant(idp: EntraEmulator, cca) -> None:
    guest = idp.users["guest"]
    assertion = idp.user_token("guest", audience=idp.agent.client_id, tenant_id=idp.tenant_id)
    result = cca().acquire_token_on_behalf_of(assertion, [f"{idp.mcp.app_id_uri}/.default"])
    assert "access_token" in result, result.get("error_description")
    claims = verify_with_jwks(
        idp, result["access_token"], audience=idp.mcp.client_id, issuer=idp.issuer()
    )
    assert claims["tid"] == idp.tenant_id
    assert claims["idp"] == idp.issuer(idp.second_tenant_id)
    assert claims["oid"] == guest.oid
    # MSAL's account is keyed on the home tenant (client_info utid).
    assert result["id_token_claims"]["tid"] == idp.tenant_id


def test_v1_token_endpoint_with_resource(idp: EntraEmulator) -> None:
    resp = post_token(
        idp,
        {
            "grant_type": "client_credentials",
            "client_id": idp.agent.client_id,
            "client_secret": idp.agent.secret or "",
            "resource": idp.legacy_api.app_id_uri or "",
        },
        v1=True,
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["resource"] == idp.legacy_api.app_id_uri
    assert body["expires_on"].isdigit()
    claims = verify_with_jwks(
        idp,
        body["access_token"],
        audience=idp.legacy_api.app_id_uri,
        issuer=idp.issuer(version="1.0"),
    )
    assert claims["appid"] == idp.agent.client_id
    assert "roles" not in claims  # no app role of legacy_api is assigned to the agent


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")
def test_sign_in_with_oidc_scopes_only_gets_a_graph_token(idp: EntraEmulator, cca) -> None:
    app = cca()
    flow = app.initiate_auth_code_flow(
        [], redirect_uri="http://localhost/callback", login_hint="bob"
    )
    with httpx.Client(verify=idp.ssl_context()) as http:
        location = http.get(flow["auth_uri"]).headers["location"]
    params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert "access_token" in result, result.get("error_description")
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "https://graph.microsoft.com"
    assert "openid" in claims["scp"].split()


def test_public_client_silent_refresh_for_another_resource(idp: EntraEmulator) -> None:
    app = msal.PublicClientApplication(
        idp.frontend.client_id,
        authority=idp.authority,
        instance_discovery=False,
        http_client=idp.msal_http_client(),
    )
    bob = idp.users["bob"]
    first = app.acquire_token_by_username_password(
        bob.upn, bob.password, [f"{idp.agent.app_id_uri}/access_as_user"]
    )
    assert "access_token" in first, first.get("error_description")
    (account,) = app.get_accounts(username=bob.upn)
    before = idp.stats()["grants"]["refresh_token"]
    # MSAL redeems its cached refresh token for a token for another resource.
    second = app.acquire_token_silent([f"{idp.mcp.app_id_uri}/access_as_user"], account=account)
    assert second is not None
    assert "access_token" in second, second.get("error_description")
    assert idp.stats()["grants"]["refresh_token"] == before + 1
    claims = jwt.decode(second["access_token"], options={"verify_signature": False})
    assert claims["aud"] == idp.mcp.client_id
    assert claims["oid"] == bob.oid


def test_client_capabilities_reach_the_token(idp: EntraEmulator) -> None:
    app = msal.ConfidentialClientApplication(
        idp.agent.client_id,
        client_credential=idp.agent.secret,
        authority=idp.authority,
        instance_discovery=False,
        http_client=idp.msal_http_client(),
        client_capabilities=["CP1"],
    )
    result = app.acquire_token_on_behalf_of(
        idp.user_token("alice", audience=idp.agent.client_id), [f"{idp.mcp.app_id_uri}/.default"]
    )
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert claims["xms_cc"] == ["cp1"]


def test_raw_code_redemption_without_scope_gives_a_usable_refresh_token(idp: EntraEmulator) -> None:
    import base64
    import secrets

    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    params = {
        "client_id": idp.agent.client_id,
        "response_type": "code",
        "redirect_uri": "http://localhost/callback",
        "scope": f"{idp.mcp.app_id_uri}/access_as_user offline_access",
        "login_hint": "alice",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    token_url = f"{idp.authority}/oauth2/v2.0/token"
    secret = idp.agent.secret or ""
    with httpx.Client(verify=idp.ssl_context()) as http:
        location = http.get(f"{idp.authority}/oauth2/v2.0/authorize", params=params).headers[
            "location"
        ]
        code = parse_qs(urlsplit(location).query)["code"][0]
        first = http.post(
            token_url,
            data={
                "grant_type": "authorization_code",
                "client_id": idp.agent.client_id,
                "client_secret": secret,
                "code": code,
                "redirect_uri": "http://localhost/callback",
                "code_verifier": verifier,
            },
        ).json()
        again = http.post(
            token_url,
            data={
                "grant_type": "refresh_token",
                "client_id": idp.agent.client_id,
                "client_secret": secret,
                "refresh_token": first["refresh_token"],
            },
        ).json()
    assert first["scope"].startswith(f"{idp.mcp.app_id_uri}/access_as_user")
    claims = jwt.decode(again["access_token"], options={"verify_signature": False})
    assert claims["aud"] == idp.mcp.client_id
    assert again["refresh_token"] != first["refresh_token"]
