"""Fidelity: the emulator's wire shapes checked against Microsoft's documentation, rule by rule.

Independent of the other emulator tests: raw HTTP with httpx2 (no helper of ours builds the
requests), MSAL and azure-identity as shipped, and two JWT verifiers that are not ours (PyJWT with
the published JWKS, and a hand-written RFC 7515 RS256 check with ``cryptography``). Every check
names the page it follows; where the emulator differs on purpose, docs/emulator.md ("Known
differences") says so.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import jwt
import msal
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import OnBehalfOfCredential
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from entra_passthrough.testing import EntraEmulator

from .emu_helpers import UUID, assert_entra_error, msal_app, no_http_cache, token_url

ERRORS_DOC = "https://learn.microsoft.com/entra/identity-platform/reference-error-codes"


@pytest.fixture
def http(idp: EntraEmulator) -> Iterator[httpx2.Client]:
    with httpx2.Client(verify=ssl.create_default_context(cafile=idp.ca_file)) as client:
        yield client


def b64json(part: str) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return raw


def rfc7515_verify(idp: EntraEmulator, http: httpx2.Client, token: str) -> dict[str, Any]:
    """RS256 by hand (RFC 7515 5.2 / RFC 7518 3.3) with keys from the discovered jwks_uri."""
    config = http.get(f"{idp.url}/{idp.tenant_id}/v2.0/.well-known/openid-configuration").json()
    keys = http.get(config["jwks_uri"]).json()["keys"]
    head_b64, body_b64, sig_b64 = token.split(".")
    header = b64json(head_b64)
    assert header["alg"] == "RS256"
    assert header["typ"] == "JWT"
    jwk = next(k for k in keys if k["kid"] == header["kid"])
    assert jwk["kty"] == "RSA"
    assert jwk["use"] == "sig"
    assert "x5c" in jwk

    def num(v: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(v + "=" * (-len(v) % 4)), "big")

    public = rsa.RSAPublicNumbers(num(jwk["e"]), num(jwk["n"])).public_key()
    signature = base64.urlsafe_b64decode(sig_b64 + "=" * (-len(sig_b64) % 4))
    public.verify(signature, f"{head_b64}.{body_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return b64json(body_b64)


def pyjwt_verify(idp: EntraEmulator, token: str, *, audience: str, issuer: str) -> dict[str, Any]:
    client = jwt.PyJWKClient(idp.jwks_uri(), cache_keys=False, ssl_context=idp.ssl_context())
    claims: dict[str, Any] = jwt.decode(
        token,
        client.get_signing_key_from_jwt(token).key,
        algorithms=["RS256"],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "nbf", "iat", "aud", "iss"]},
    )
    return claims


def ropc(
    http: httpx2.Client, idp: EntraEmulator, scope: str, *, user: str = "alice", **extra: str
) -> httpx2.Response:
    return http.post(
        token_url(idp),
        data={
            "grant_type": "password",
            "client_id": extra.pop("client_id", idp.frontend.client_id),
            "username": idp.users[user].upn,
            "password": f"{user}-password",
            "scope": scope,
            **extra,
        },
    )


# ---- token responses ------------------------------------------------------------------------


def test_client_credentials_response_fields(idp: EntraEmulator, http: httpx2.Client) -> None:
    # https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow#successful-response
    resp = http.post(
        token_url(idp),
        data={
            "grant_type": "client_credentials",
            "client_id": idp.agent.client_id,
            "client_secret": idp.agent.secret,
            "scope": f"{idp.mcp.app_id_uri}/.default",
        },
    )
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"token_type", "expires_in", "ext_expires_in", "access_token"}
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int)
    assert isinstance(body["ext_expires_in"], int)
    # No-store: https://www.rfc-editor.org/rfc/rfc6749#section-5.1
    assert "no-store" in resp.headers["cache-control"]


def test_user_token_response_fields_and_refresh_token_rule(
    idp: EntraEmulator, http: httpx2.Client
) -> None:
    # https://learn.microsoft.com/entra/identity-platform/v2-oauth-ropc#successful-authentication-response
    mcp = f"{idp.mcp.app_id_uri}/access_as_user"
    full = ropc(http, idp, f"openid profile offline_access {mcp}", client_info="1").json()
    assert {"token_type", "scope", "expires_in", "ext_expires_in", "access_token"} <= set(full)
    assert full["token_type"] == "Bearer"
    assert mcp in full["scope"].split()
    # refresh_token only with offline_access; id_token only with openid
    # (https://learn.microsoft.com/entra/identity-platform/refresh-tokens,
    # https://learn.microsoft.com/entra/identity-platform/scopes-oidc#openid).
    assert "refresh_token" in full
    assert "id_token" in full
    # client_info (MSAL sends client_info=1): base64url JSON with uid/utid (MSAL
    # msal/oauth2cli/oidc.py and msal/token_cache.py read it for home_account_id).
    info = b64json(full["client_info"])
    assert info == {"uid": idp.users["alice"].oid, "utid": idp.tenant_id}
    bare = ropc(http, idp, mcp).json()
    assert "refresh_token" not in bare
    assert "id_token" not in bare
    assert "client_info" not in bare


def test_id_token_claims(idp: EntraEmulator, http: httpx2.Client) -> None:
    # https://learn.microsoft.com/entra/identity-platform/id-token-claims-reference
    body = ropc(http, idp, "openid profile").json()
    claims = pyjwt_verify(
        idp, body["id_token"], audience=idp.frontend.client_id, issuer=idp.issuer()
    )
    alice = idp.users["alice"]
    assert claims["ver"] == "2.0"
    assert claims["oid"] == alice.oid
    assert claims["tid"] == idp.tenant_id
    assert claims["preferred_username"] == alice.upn
    assert claims["name"] == alice.display_name
    assert claims["sub"] != alice.oid  # pairwise per app ("sub" in the reference)


# ---- access token claims: v2 and v1 -------------------------------------------------------


def test_v2_delegated_access_token_claims(idp: EntraEmulator, http: httpx2.Client) -> None:
    # https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference
    token = ropc(http, idp, f"{idp.mcp.app_id_uri}/access_as_user").json()["access_token"]
    claims = pyjwt_verify(idp, token, audience=idp.mcp.client_id, issuer=idp.issuer())
    assert rfc7515_verify(idp, http, token) == claims
    header = jwt.get_unverified_header(token)
    # Header claims (access-token-claims-reference): kid always; x5t "emitted only in v1.0
    # access tokens".
    assert "kid" in header
    assert "x5t" not in header
    alice = idp.users["alice"]
    assert claims["ver"] == "2.0"
    assert claims["aud"] == idp.mcp.client_id  # v2: always the API's client id
    assert claims["iss"] == f"{idp.url}/{idp.tenant_id}/v2.0"
    assert claims["azp"] == idp.frontend.client_id
    assert claims["azpacr"] == "0"
    assert "appid" not in claims
    assert "appidacr" not in claims
    assert claims["preferred_username"] == alice.upn
    assert "upn" not in claims
    assert "unique_name" not in claims
    assert claims["scp"] == "access_as_user"
    assert "roles" not in claims
    assert claims["idtyp"] == "user"  # optional claim the mcp app configures
    assert claims["oid"] == alice.oid
    assert claims["sub"] != alice.oid
    for name in ("uti", "rh", "aio"):
        assert isinstance(claims[name], str)
        assert claims[name]
    assert claims["nbf"] <= claims["iat"] < claims["exp"]


def test_v2_app_only_access_token_claims(idp: EntraEmulator, http: httpx2.Client) -> None:
    # https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference
    # ("roles" for app-only, "sub" = "oid" = the service principal, "idtyp" = "app").
    resp = http.post(
        token_url(idp),
        data={
            "grant_type": "client_credentials",
            "client_id": idp.agent.client_id,
            "client_secret": idp.agent.secret,
            "scope": f"{idp.mcp.client_id}/.default",
        },
    )
    claims = pyjwt_verify(
        idp, resp.json()["access_token"], audience=idp.mcp.client_id, issuer=idp.issuer()
    )
    assert claims["roles"] == ["Tools.Call"]
    assert "scp" not in claims
    assert claims["sub"] == claims["oid"] == idp.agent.object_id
    assert claims["idtyp"] == "app"
    assert claims["azpacr"] == "1"


@pytest.mark.parametrize("by", ["app_id_uri", "client_id"])
def test_v1_access_token_claims(idp: EntraEmulator, http: httpx2.Client, by: str) -> None:
    # https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference:
    # v1 "aud" is "the client ID or the resource URI used in the request"; iss is the
    # sts.windows.net form (emulated as {url}/{tid}/, docs/emulator.md "Known differences").
    api = idp.legacy_api
    ident = api.app_id_uri if by == "app_id_uri" else api.client_id
    assert ident is not None
    body = ropc(
        http,
        idp,
        f"{ident}/user_impersonation",
        client_id=idp.agent.client_id,
        client_secret=idp.agent.secret or "",
    ).json()
    claims = pyjwt_verify(
        idp, body["access_token"], audience=ident, issuer=f"{idp.url}/{idp.tenant_id}/"
    )
    alice = idp.users["alice"]
    assert claims["ver"] == "1.0"
    assert claims["appid"] == idp.agent.client_id
    assert claims["appidacr"] == "1"
    assert "azp" not in claims
    assert "azpacr" not in claims
    assert claims["upn"] == claims["unique_name"] == alice.upn
    assert "preferred_username" not in claims
    assert claims["scp"] == "user_impersonation"
    assert "idtyp" not in claims  # not configured on this API
    header = jwt.get_unverified_header(body["access_token"])
    assert header["x5t"] == header["kid"]  # v1: the legacy x5t header, same value as kid


def test_v1_app_only_audience_follows_the_request(idp: EntraEmulator, http: httpx2.Client) -> None:
    # access-token-claims-reference "aud" (v1: client id or resource URI used in the request).
    for ident in (idp.legacy_api.client_id, idp.legacy_api.app_id_uri):
        resp = http.post(
            token_url(idp),
            data={
                "grant_type": "client_credentials",
                "client_id": idp.agent.client_id,
                "client_secret": idp.agent.secret,
                "scope": f"{ident}/.default",
            },
        )
        token = resp.json()["access_token"]
        assert jwt.decode(token, options={"verify_signature": False})["aud"] == ident


def test_client_capabilities_reach_xms_cc(idp: EntraEmulator) -> None:
    # https://learn.microsoft.com/entra/identity-platform/claims-challenge (xms_cc, MSAL's
    # client_capabilities=["CP1"]).
    app = msal.ConfidentialClientApplication(
        idp.agent.client_id,
        client_credential=idp.agent.secret,
        authority=idp.authority,
        instance_discovery=False,
        http_client=idp.msal_http_client(),
        http_cache=no_http_cache(),
        client_capabilities=["CP1"],
    )
    result = app.acquire_token_for_client([f"{idp.mcp.app_id_uri}/.default"])
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert claims["xms_cc"] == ["cp1"]
    # Only for a resource that asks for the optional claim xms_cc (legacy_api does not).
    other = app.acquire_token_for_client([f"{idp.legacy_api.app_id_uri}/.default"])
    assert "xms_cc" not in jwt.decode(other["access_token"], options={"verify_signature": False})


# ---- errors ---------------------------------------------------------------------------------


def obo(
    http: httpx2.Client, idp: EntraEmulator, assertion: str, scope: str, **headers: str
) -> httpx2.Response:
    # https://learn.microsoft.com/entra/identity-platform/v2-oauth2-on-behalf-of-flow#first-case-access-token-request-with-a-shared-secret
    return http.post(
        token_url(idp),
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "client_id": idp.agent.client_id,
            "client_secret": idp.agent.secret,
            "assertion": assertion,
            "scope": scope,
            "requested_token_use": "on_behalf_of",
        },
        headers=headers,
    )


def test_error_body_shape_and_correlation_echo(idp: EntraEmulator, http: httpx2.Client) -> None:
    # ERRORS_DOC "Sample error response"; the correlation id is the client's client-request-id
    # (MSAL sends it: msal/application.py _make_request headers).
    cid = str(uuid.uuid4())
    resp = http.post(
        token_url(idp),
        data={
            "grant_type": "client_credentials",
            "client_id": idp.agent.client_id,
            "client_secret": idp.agent.secret,
            "scope": "https://nothing.example/.default",
        },
        headers={"client-request-id": cid},
    )
    body = assert_entra_error(resp, 500011, "invalid_resource")
    assert body["correlation_id"] == cid


def test_obo_success_response(idp: EntraEmulator, http: httpx2.Client) -> None:
    # https://learn.microsoft.com/entra/identity-platform/v2-oauth2-on-behalf-of-flow#success-response-example
    assertion = idp.user_token("alice", audience=idp.agent.client_id)
    body = obo(http, idp, assertion, f"{idp.mcp.app_id_uri}/.default offline_access").json()
    assert {"token_type", "scope", "expires_in", "ext_expires_in", "access_token"} <= set(body)
    assert "refresh_token" in body  # offline_access asked for
    bare = obo(http, idp, assertion, f"{idp.mcp.app_id_uri}/.default").json()
    assert "refresh_token" not in bare


def test_obo_500131_wrong_audience(idp: EntraEmulator, http: httpx2.Client) -> None:
    # v2-oauth2-on-behalf-of-flow: the assertion must be for the calling app; Entra answers
    # AADSTS500131 (AssertionAudienceDoesNotMatch) for another audience.
    assertion = idp.user_token("alice", audience="https://ai.azure.com")
    resp = obo(http, idp, assertion, f"{idp.mcp.app_id_uri}/.default")
    body = assert_entra_error(resp, 500131, "invalid_grant")
    assert "audience" in body["error_description"]


def test_obo_65001_consent_required(idp: EntraEmulator, http: httpx2.Client) -> None:
    # https://learn.microsoft.com/entra/identity-platform/v2-oauth2-on-behalf-of-flow#error-response-example
    # (invalid_grant with suberror consent_required when the user has not consented).
    assertion = idp.user_token("carol", audience=idp.agent.client_id)
    resp = obo(http, idp, assertion, f"{idp.mcp.app_id_uri}/.default")
    body = assert_entra_error(resp, 65001, "invalid_grant")
    assert body["suberror"] == "consent_required"


def test_obo_500133_expired_assertion(idp: EntraEmulator, http: httpx2.Client) -> None:
    # ERRORS_DOC AADSTS500133 "Assertion isn't within its valid time range".
    assertion = idp.user_token("alice", audience=idp.agent.client_id, lifetime=-120)
    resp = obo(http, idp, assertion, f"{idp.mcp.app_id_uri}/.default")
    assert_entra_error(resp, 500133, "invalid_grant")


def test_obo_7000114_app_only_assertion(idp: EntraEmulator, http: httpx2.Client) -> None:
    # ERRORS_DOC AADSTS7000114 (application on-behalf-of calls are not allowed).
    assertion = idp.app_token(client_id=idp.mcp.client_id, audience=idp.agent.client_id)
    resp = obo(http, idp, assertion, f"{idp.mcp.app_id_uri}/.default")
    assert_entra_error(resp, 7000114, "unauthorized_client")


def test_obo_500011_unknown_resource(idp: EntraEmulator, http: httpx2.Client) -> None:
    # ERRORS_DOC AADSTS500011 (resource principal not found) uses error invalid_resource.
    assertion = idp.user_token("alice", audience=idp.agent.client_id)
    resp = obo(http, idp, assertion, "api://no-such-api/.default")
    assert_entra_error(resp, 500011, "invalid_resource")


def test_50076_claims_challenge_body(idp: EntraEmulator, http: httpx2.Client) -> None:
    # v2-oauth2-on-behalf-of-flow#error-response-example: interaction_required + "claims".
    assertion = idp.user_token("dave", audience=idp.agent.client_id)
    body = assert_entra_error(
        obo(http, idp, assertion, f"{idp.mcp.app_id_uri}/.default"),
        50076,
        "interaction_required",
    )
    assert "access_token" in json.loads(body["claims"])


def test_invalid_client_is_401(idp: EntraEmulator, http: httpx2.Client) -> None:
    # RFC 6749 5.2 (invalid_client may answer 401); ERRORS_DOC AADSTS7000215.
    resp = http.post(
        token_url(idp),
        data={
            "grant_type": "client_credentials",
            "client_id": idp.agent.client_id,
            "client_secret": "wrong",
            "scope": f"{idp.mcp.app_id_uri}/.default",
        },
    )
    assert_entra_error(resp, 7000215, "invalid_client", status=401)


def test_ropc_rules(idp: EntraEmulator, http: httpx2.Client) -> None:
    # https://learn.microsoft.com/entra/identity-platform/v2-oauth-ropc: wrong password ->
    # AADSTS50126 invalid_grant; a confidential client must authenticate (AADSTS7000218).
    scope = f"{idp.mcp.app_id_uri}/access_as_user"
    bad = ropc(http, idp, scope, password="nope")
    assert_entra_error(bad, 50126, "invalid_grant")
    no_secret = ropc(http, idp, scope, client_id=idp.agent.client_id)
    assert_entra_error(no_secret, 7000218, "invalid_client", status=401)
    mfa = ropc(http, idp, scope, user="dave")  # ROPC cannot satisfy MFA (v2-oauth-ropc)
    assert_entra_error(mfa, 50076, "interaction_required")


def test_msal_surfaces_the_body(idp: EntraEmulator) -> None:
    # MSAL returns Entra's JSON as the result dict (msal/application.py): the same keys.
    app = msal_app(idp)
    assertion = idp.user_token("carol", audience=idp.agent.client_id)
    result = app.acquire_token_on_behalf_of(assertion, [f"{idp.mcp.app_id_uri}/.default"])
    assert result["error"] == "invalid_grant"
    assert result["suberror"] == "consent_required"
    assert result["error_codes"] == [65001]
    assert result["error_description"].startswith("AADSTS65001: ")
    assert re.fullmatch(UUID, result["correlation_id"])


def test_azure_identity_reports_the_code(idp: EntraEmulator) -> None:
    # azure-identity raises ClientAuthenticationError carrying Entra's error_description.
    cred = OnBehalfOfCredential(
        idp.tenant_id,
        idp.agent.client_id,
        client_secret=idp.agent.secret or "",
        user_assertion=idp.user_token("alice", audience="https://ai.azure.com"),
        authority=idp.url,
        connection_verify=idp.ca_file,
        disable_instance_discovery=True,
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS500131"):
        cred.get_token(f"{idp.mcp.app_id_uri}/.default")


def test_v1_endpoint_response_shape(idp: EntraEmulator, http: httpx2.Client) -> None:
    # https://learn.microsoft.com/previous-versions/azure/active-directory/azuread-dev/v1-oauth2-client-creds-grant-flow#service-to-service-access-token-response
    # (v1: numbers as strings, expires_on / not_before / resource; the token's aud is the
    # resource as named).
    resource = idp.legacy_api.app_id_uri or ""
    resp = http.post(
        f"{idp.authority}/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": idp.agent.client_id,
            "client_secret": idp.agent.secret,
            "resource": resource,
        },
    )
    body = resp.json()
    assert {"access_token", "token_type", "expires_in", "expires_on", "not_before"} <= set(body)
    assert body["resource"] == resource
    for name in ("expires_in", "expires_on", "not_before"):
        assert isinstance(body[name], str)
        assert body[name].isdigit()
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == resource
    assert claims["ver"] == "1.0"
