"""Consent recorded at the authorize endpoint, the HTML flow, stats, faults, the fixture."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from entra_passthrough.testing import EntraEmulator

from .emu_helpers import aadsts, msal_app


def _hidden(page: str) -> dict[str, str]:
    return dict(re.findall(r"name='([^']+)' value='([^']*)'", page))


def _query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_consent_through_the_html_pages_then_obo_succeeds(
    entra_emulator_fresh: EntraEmulator,
) -> None:
    idp = entra_emulator_fresh
    app = msal_app(idp)
    scope = f"{idp.mcp.app_id_uri}/.default"
    carol = idp.users["carol"]
    assertion = idp.user_token("carol", audience=idp.agent.client_id)
    assert aadsts(app.acquire_token_on_behalf_of(assertion, [scope])) == 65001

    flow = app.initiate_auth_code_flow(
        [scope],
        redirect_uri="http://localhost/callback",
        prompt="consent",
        response_mode="form_post",
    )
    with httpx.Client(verify=idp.ssl_context()) as browser:
        signin = browser.get(flow["auth_uri"])
        assert "Sign in" in signin.text  # no login_hint: the user picker
        fields = _hidden(signin.text) | {"username": carol.upn, "password": carol.password}
        consent = browser.post(flow["auth_uri"].split("?")[0], data=fields)
        assert "Permissions requested" in consent.text
        assert "access_as_user" in consent.text
        fields = _hidden(consent.text) | {"decision": "accept"}
        done = browser.post(flow["auth_uri"].split("?")[0], data=fields)
    result = app.acquire_token_by_auth_code_flow(flow, _hidden(done.text))
    assert "access_token" in result, result.get("error_description")
    assert result["id_token_claims"]["preferred_username"] == carol.upn
    # The consent is recorded: the same OBO now succeeds.
    again = app.acquire_token_on_behalf_of(assertion, [scope])
    assert "access_token" in again, again.get("error_description")
    idp.revoke_consent("carol", idp.agent.client_id)
    assert aadsts(app.acquire_token_on_behalf_of(assertion, [scope])) == 65001


def test_consent_declined_redirects_with_access_denied(
    entra_emulator_fresh: EntraEmulator,
) -> None:
    idp = entra_emulator_fresh
    flow = msal_app(idp).initiate_auth_code_flow(
        [f"{idp.mcp.app_id_uri}/access_as_user"],
        redirect_uri="http://localhost/callback",
        login_hint="carol",
        response_mode="form_post",
    )
    with httpx.Client(verify=idp.ssl_context()) as browser:
        consent = browser.get(flow["auth_uri"])
        fields = _hidden(consent.text) | {"decision": "cancel"}
        done = browser.post(flow["auth_uri"].split("?")[0], data=fields)
    answer = _hidden(done.text)
    assert answer["error"] == "access_denied"
    assert answer["error_description"].startswith("AADSTS65004")
    assert answer["state"] == flow["state"]


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")
def test_headless_consent_flag_and_prompt_none(entra_emulator_fresh: EntraEmulator) -> None:
    idp = entra_emulator_fresh
    app = msal_app(idp)
    scopes = [f"{idp.mcp.app_id_uri}/access_as_user"]
    silent = app.initiate_auth_code_flow(
        scopes, redirect_uri="http://localhost/callback", login_hint="carol", prompt="none"
    )
    with httpx.Client(verify=idp.ssl_context()) as http:
        answer = _query(http.get(silent["auth_uri"]).headers["location"])
        # OIDC Core 3.1.2.6 / v2-oauth2-auth-code-flow: /authorize answers consent_required.
        assert answer["error"] == "consent_required"
        assert answer["error_description"].startswith("AADSTS65001")
        flow = app.initiate_auth_code_flow(
            scopes, redirect_uri="http://localhost/callback", login_hint="carol"
        )
        resp = http.get(flow["auth_uri"] + "&emulator_consent=accept")
    result = app.acquire_token_by_auth_code_flow(flow, _query(resp.headers["location"]))
    assert result["scope"].startswith(scopes[0])


def test_grant_consent_api(entra_emulator_fresh: EntraEmulator) -> None:
    idp = entra_emulator_fresh
    app = msal_app(idp)
    assertion = idp.user_token("carol", audience=idp.agent.client_id)
    idp.grant_consent("carol", idp.agent.client_id, [f"{idp.mcp.app_id_uri}/access_as_user"])
    assert "access_token" in app.acquire_token_on_behalf_of(
        assertion, [f"{idp.mcp.app_id_uri}/.default"]
    )


def test_stats_count_endpoints_and_grants(idp: EntraEmulator) -> None:
    before = idp.stats()
    app = msal_app(idp)
    app.acquire_token_for_client([f"{idp.mcp.app_id_uri}/.default"])
    app.acquire_token_on_behalf_of(
        idp.user_token("alice", audience=idp.agent.client_id), [f"{idp.mcp.app_id_uri}/.default"]
    )
    after = idp.stats()
    assert after["endpoints"]["token"] - before["endpoints"]["token"] == 2
    assert after["endpoints"]["discovery"] - before["endpoints"]["discovery"] == 1
    assert after["grants"]["client_credentials"] - before["grants"]["client_credentials"] == 1
    assert after["grants"]["on_behalf_of"] - before["grants"]["on_behalf_of"] == 1
    idp.reset_stats()
    assert idp.stats()["endpoints"]["token"] == 0


def test_injected_fault_status_and_retry_after(idp: EntraEmulator) -> None:
    idp.inject_fault("token", status=429, retry_after=7, count=2)
    url = f"{idp.authority}/oauth2/v2.0/token"
    data = {
        "grant_type": "client_credentials",
        "client_id": idp.agent.client_id,
        "client_secret": idp.agent.secret,
        "scope": f"{idp.mcp.app_id_uri}/.default",
    }
    with httpx.Client(verify=idp.ssl_context()) as http:
        first, second, third = (http.post(url, data=data) for _ in range(3))
    assert first.status_code == second.status_code == 429
    assert first.headers["retry-after"] == "7"
    assert third.status_code == 200


def test_injected_dropped_connection(idp: EntraEmulator) -> None:
    idp.inject_fault("discovery", drop=True)
    with (
        httpx.Client(verify=idp.ssl_context()) as http,
        pytest.raises(httpx.TransportError),
    ):
        http.get(f"{idp.authority}/v2.0/.well-known/openid-configuration")


def test_injected_fault_reaches_msal_as_error(idp: EntraEmulator) -> None:
    app = msal_app(idp)
    app.acquire_token_for_client([f"{idp.mcp.app_id_uri}/.default"])  # discovery done
    idp.inject_fault("token", status=400, count=1)
    # OBO never reads MSAL's cache, so this goes to the token endpoint.
    result = app.acquire_token_on_behalf_of(
        idp.user_token("alice", audience=idp.agent.client_id), [f"{idp.mcp.app_id_uri}/.default"]
    )
    assert result["error"] == "invalid_request"
    assert "Injected fault" in result["error_description"]


def test_issued_contains_every_token_and_secret(idp: EntraEmulator) -> None:
    result = msal_app(idp).acquire_token_on_behalf_of(
        idp.user_token("bob", audience=idp.agent.client_id), [f"{idp.mcp.app_id_uri}/.default"]
    )
    issued = idp.issued()
    for key in ("access_token", "refresh_token", "id_token"):
        assert result[key] in issued
    assert idp.agent.secret in issued
    assert repr(idp.agent).count(idp.agent.secret or "x") == 0


def test_logout_clears_the_session(entra_emulator_fresh: EntraEmulator) -> None:
    idp = entra_emulator_fresh
    app = msal_app(idp)
    scopes = [f"{idp.mcp.app_id_uri}/access_as_user"]
    first = app.initiate_auth_code_flow(
        scopes,
        redirect_uri="http://localhost/callback",
        login_hint="alice",
        response_mode="form_post",
    )
    with httpx.Client(verify=idp.ssl_context()) as browser:
        browser.get(first["auth_uri"])
        second = app.initiate_auth_code_flow(
            scopes, redirect_uri="http://localhost/callback", response_mode="form_post"
        )
        assert "code" in _hidden(browser.get(second["auth_uri"]).text)  # session cookie
        out = browser.get(
            f"{idp.authority}/oauth2/v2.0/logout",
            params={"post_logout_redirect_uri": "http://localhost/callback"},
        )
        assert out.headers["location"] == "http://localhost/callback"  # registered: followed
        assert "Sign in" in browser.get(second["auth_uri"]).text


@pytest.mark.parametrize(
    "params",
    [
        {"post_logout_redirect_uri": "https://evil.example/phish"},
        {"post_logout_redirect_uri": "https://evil.example/phish", "client_id": "agent"},
        # Registered for an app, but not for the one named.
        {"post_logout_redirect_uri": "http://localhost/callback", "client_id": "unknown-app"},
        {"post_logout_redirect_uri": "http://localhost/elsewhere"},
    ],
    ids=["unregistered", "unregistered-for-the-app", "unknown-app", "another-path"],
)
def test_logout_redirects_only_to_a_registered_uri(
    entra_emulator_fresh: EntraEmulator, params: dict[str, str]
) -> None:
    """Entra follows ``post_logout_redirect_uri`` only when it is registered as a redirect URI of
    the application; the emulator redirected anywhere (an open redirect Entra is not)."""
    idp = entra_emulator_fresh
    if params.get("client_id") == "agent":
        params = {**params, "client_id": idp.agent.client_id}
    with httpx.Client(verify=idp.ssl_context()) as browser:
        out = browser.get(f"{idp.authority}/oauth2/v2.0/logout", params=params)
    assert out.status_code == 200
    assert "location" not in out.headers
    assert "signed out" in out.text


def test_http_control_endpoints(entra_emulator_fresh: EntraEmulator) -> None:
    idp = entra_emulator_fresh
    with httpx.Client(verify=idp.ssl_context()) as http:
        assert http.get(f"{idp.url}/_emulator/stats").json() == idp.stats()
        http.post(f"{idp.url}/_emulator/faults", json={"endpoint": "jwks", "status": 500})
        assert http.get(idp.jwks_uri()).status_code == 500
        old = idp.signing_kid
        # Entra publishes the next key before it signs with it (signing-key-rollover).
        before = [k["kid"] for k in http.get(idp.jwks_uri()).json()["keys"]]
        assert before[0] == old
        upcoming = before[1]
        kid = http.post(f"{idp.url}/_emulator/rotate").json()["kid"]
        assert kid == idp.signing_kid == upcoming != old
        kids = [k["kid"] for k in http.get(idp.jwks_uri()).json()["keys"]]
        assert kids[0] == kid
        assert kids[2] == old
        assert kids[1] not in before  # a new next key


def test_delay_only_fault_then_normal_answer(idp: EntraEmulator) -> None:
    idp.inject_fault("jwks", status=None, delay=0.05)
    with httpx.Client(verify=idp.ssl_context()) as http:
        first = http.get(idp.jwks_uri())
    assert first.status_code == 200
    assert first.json()["keys"]
    assert idp._rt.faults.get("jwks") == []  # consumed


def test_token_latency_keeps_answers_correct(idp: EntraEmulator) -> None:
    idp.token_latency = 0.01
    result = msal_app(idp).acquire_token_for_client([f"{idp.legacy_api.app_id_uri}/.default"])
    assert result["token_type"] == "Bearer"
