"""Each error case gives Entra's AADSTS code and body shape, seen through MSAL and raw HTTP."""

from __future__ import annotations

import base64
import json
import time

import httpx
import msal
import pytest

from entra_passthrough.testing import EntraEmulator

from .emu_helpers import aadsts, obo_form, post_token


def _obo(cca, idp: EntraEmulator, assertion: str, scope: str | None = None) -> dict:
    return cca().acquire_token_on_behalf_of(assertion, [scope or f"{idp.mcp.app_id_uri}/.default"])


def test_error_body_has_entra_shape(idp: EntraEmulator) -> None:
    assertion = idp.user_token("carol", audience=idp.agent.client_id)
    resp = post_token(
        idp,
        obo_form(idp, assertion),
        headers={"client-request-id": "11111111-2222-3333-4444-555555555555"},
    )
    assert resp.status_code == 400
    body = resp.json()
    assert body["error"] == "invalid_grant"
    assert body["suberror"] == "consent_required"
    assert body["error_codes"] == [65001]
    desc = body["error_description"]
    assert desc.startswith("AADSTS65001: ")
    assert f"\r\nTrace ID: {body['trace_id']}\r\n" in desc
    assert "\r\nCorrelation ID: 11111111-2222-3333-4444-555555555555\r\n" in desc
    assert body["correlation_id"] == "11111111-2222-3333-4444-555555555555"
    assert desc.endswith(f"Timestamp: {body['timestamp']}")
    assert body["error_uri"] == "https://login.microsoftonline.com/error?code=65001"
    assert resp.headers["cache-control"].startswith("no-store")


def test_500131_assertion_for_another_audience(idp: EntraEmulator, cca) -> None:
    foundry = idp.user_token("alice", audience="https://ai.azure.com")
    result = _obo(cca, idp, foundry)
    assert result["error"] == "invalid_grant"
    assert aadsts(result) == 500131
    assert "https://ai.azure.com" in result["error_description"]


def test_50013_signature_from_another_issuer(idp: EntraEmulator, cca) -> None:
    with EntraEmulator() as other:
        forged = other.user_token("alice", audience=other.agent.client_id)
    assert aadsts(_obo(cca, idp, forged)) == 50013


def test_500133_expired_assertion(idp: EntraEmulator, cca) -> None:
    now = int(time.time())
    expired = idp.user_token(
        "alice",
        audience=idp.agent.client_id,
        extra_claims={"iat": now - 7200, "nbf": now - 7200, "exp": now - 60},
    )
    assert aadsts(_obo(cca, idp, expired)) == 500133


def test_65001_consent_missing(idp: EntraEmulator, cca) -> None:
    result = _obo(cca, idp, idp.user_token("carol", audience=idp.agent.client_id))
    assert result["error"] == "invalid_grant"
    assert result["suberror"] == "consent_required"
    assert aadsts(result) == 65001


def test_7000114_app_only_assertion(idp: EntraEmulator, cca) -> None:
    app_token = idp.app_token(client_id=idp.frontend.client_id, audience=idp.agent.client_id)
    result = _obo(cca, idp, app_token)
    assert result["error"] == "unauthorized_client"
    assert aadsts(result) == 7000114


def test_500011_unknown_resource(idp: EntraEmulator, cca) -> None:
    result = _obo(
        cca, idp, idp.user_token("alice", audience=idp.agent.client_id), "api://nope/.default"
    )
    assert result["error"] == "invalid_resource"
    assert aadsts(result) == 500011


def test_70011_scope_not_exposed(idp: EntraEmulator, cca) -> None:
    result = _obo(
        cca,
        idp,
        idp.user_token("alice", audience=idp.agent.client_id),
        f"{idp.mcp.app_id_uri}/Files.ReadWrite",
    )
    assert result["error"] == "invalid_scope"
    assert aadsts(result) == 70011


def test_700016_unknown_client(idp: EntraEmulator, cca) -> None:
    result = cca("00000000-0000-0000-0000-00000000dead").acquire_token_for_client(
        [f"{idp.mcp.app_id_uri}/.default"]
    )
    assert result["error"] == "unauthorized_client"
    assert aadsts(result) == 700016


def test_7000215_wrong_secret(idp: EntraEmulator, cca) -> None:
    result = cca(credential="not-the-secret").acquire_token_for_client(
        [f"{idp.mcp.app_id_uri}/.default"]
    )
    assert result["error"] == "invalid_client"
    assert aadsts(result) == 7000215


def test_7000218_no_credential(idp: EntraEmulator) -> None:
    resp = post_token(
        idp,
        {
            "grant_type": "client_credentials",
            "client_id": idp.agent.client_id,
            "scope": f"{idp.mcp.app_id_uri}/.default",
        },
    )
    assert resp.status_code == 401
    assert resp.json()["error_codes"] == [7000218]


def test_client_credentials_needs_dot_default(idp: EntraEmulator, cca) -> None:
    result = cca().acquire_token_for_client([f"{idp.mcp.app_id_uri}/access_as_user"])
    assert result["error"] == "invalid_scope"
    assert aadsts(result) == 1002012


def test_50076_mfa_claims_challenge(idp: EntraEmulator, cca) -> None:
    result = _obo(cca, idp, idp.user_token("dave", audience=idp.agent.client_id))
    assert result["error"] == "interaction_required"
    assert aadsts(result) == 50076
    claims = json.loads(result["claims"])
    assert claims["access_token"]["capolids"]["essential"] is True
    # A token from an MFA sign-in satisfies the policy.
    mfa = idp.user_token("dave", audience=idp.agent.client_id, extra_claims={"amr": ["pwd", "mfa"]})
    assert "access_token" in _obo(cca, idp, mfa)


def test_53003_blocked_by_conditional_access(idp: EntraEmulator, cca) -> None:
    result = _obo(cca, idp, idp.user_token("erin", audience=idp.agent.client_id))
    assert aadsts(result) == 53003
    assert result["error"] == "interaction_required"
    assert result["suberror"] == "message_only"


def test_9010010_resource_parameter_on_v2(idp: EntraEmulator) -> None:
    resp = post_token(
        idp,
        {
            "grant_type": "client_credentials",
            "client_id": idp.agent.client_id,
            "client_secret": idp.agent.secret or "",
            "scope": f"{idp.mcp.app_id_uri}/.default",
            "resource": "https://mcp.contoso.com/mcp",
        },
    )
    assert resp.json()["error_codes"] == [9010010]


def test_82014_agent_identity_cannot_consent_interactively(idp: EntraEmulator) -> None:
    app = msal.PublicClientApplication(
        idp.agent_identity.client_id,
        authority=idp.authority,
        instance_discovery=False,
        http_client=idp.msal_http_client(),
    )
    flow = app.initiate_auth_code_flow(
        [f"{idp.mcp.app_id_uri}/access_as_user"],
        redirect_uri="http://localhost/callback",
        login_hint="alice",
        response_mode="form_post",
    )
    with httpx.Client(verify=idp.ssl_context()) as http:
        resp = http.get(flow["auth_uri"])
    assert "AADSTS82014" in resp.text


def test_700211_assertion_matching_no_federated_credential(idp: EntraEmulator, cca) -> None:
    mi_token = idp.app_token(
        client_id=idp.managed_identity.client_id, audience="api://AzureADTokenExchange"
    )
    # legacy_api trusts no federated credential.
    result = cca(
        idp.legacy_api.client_id, {"client_assertion": lambda: mi_token}
    ).acquire_token_for_client([f"{idp.mcp.app_id_uri}/.default"])
    assert result["error"] == "invalid_client"
    assert aadsts(result) == 700211


def test_54005_and_pkce_are_in_flow_tests() -> None:
    # Reused codes (54005) and PKCE mismatches (501481) are checked in test_msal_flows.py with
    # MSAL's own auth code flow; this test pins that the AADSTS table knows both codes
    # (describe() echoes any code, known or not, so it is the table that is checked).
    from entra_passthrough._aadsts import AADSTS, describe

    assert describe(54005) is AADSTS[54005]
    assert describe(501481) is AADSTS[501481]


@pytest.mark.parametrize("segment", ["not-a-tenant", "00000000-0000-0000-0000-000000000000"])
def test_unknown_tenant(idp: EntraEmulator, segment: str) -> None:
    with httpx.Client(verify=idp.ssl_context()) as http:
        resp = http.get(f"{idp.url}/{segment}/v2.0/.well-known/openid-configuration")
    assert resp.status_code == 400
    assert resp.json()["error_codes"] == [90002]


def test_jwt_malformed_assertion(idp: EntraEmulator, cca) -> None:
    junk = base64.urlsafe_b64encode(b"not a jwt").decode()
    assert aadsts(_obo(cca, idp, junk)) == 50027


def test_9010010_resource_parameter_at_authorize(idp: EntraEmulator, cca) -> None:
    flow = cca().initiate_auth_code_flow(
        [f"{idp.mcp.app_id_uri}/access_as_user"],
        redirect_uri="http://localhost/callback",
        login_hint="alice",
        response_mode="form_post",
    )
    with httpx.Client(verify=idp.ssl_context()) as http:
        page = http.get(flow["auth_uri"] + "&resource=https%3A%2F%2Fmcp.contoso.com%2Fmcp").text
    assert "AADSTS9010010" in page


def test_700016_single_tenant_app_in_another_tenant(idp: EntraEmulator, cca) -> None:
    authority = f"{idp.url}/{idp.second_tenant_id}"
    blueprint = cca(idp.blueprint.client_id, idp.blueprint.secret, authority=authority)
    result = blueprint.acquire_token_for_client([f"{idp.mcp.app_id_uri}/.default"])
    assert aadsts(result) == 700016
    assert idp.second_tenant_id in result["error_description"]


def test_display_names_are_not_identifiers_on_the_wire(idp: EntraEmulator, cca) -> None:
    # "mcp" is the emulator's name for the app; Entra only knows ids and App ID URIs.
    result = _obo(cca, idp, idp.user_token("alice", audience=idp.agent.client_id), "mcp/.default")
    assert aadsts(result) == 500011


def test_client_secret_basic_is_accepted(idp: EntraEmulator) -> None:
    form = {"grant_type": "client_credentials", "scope": f"{idp.mcp.app_id_uri}/.default"}
    ok = post_token(idp, form, auth=(idp.agent.client_id, idp.agent.secret or ""))
    bad = post_token(idp, form, auth=(idp.agent.client_id, "wrong"))
    assert ok.status_code == 200
    assert bad.json()["error_codes"] == [7000215]
