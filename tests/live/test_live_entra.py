"""The emulator's checks, run against a real Entra tenant: anyone with a tenant can confirm that
the emulator behaves like Entra where our tests rely on it.

Skipped unless these are set (a test tenant; never production). ``scripts/tenant-setup.sh``
creates every object below from ``scripts/tenant.json`` (the same description the emulator
loads) and prints these variables; docs/tenant-setup.md has the steps:

1. ``az login --tenant <test tenant>`` with an account that may create app registrations;
2. ``scripts/tenant-setup.sh --prefix live`` and export the ``ENTRA_LIVE_*`` lines it prints;
3. create a test user without MFA (or get a user token for the agent app some other way and set
   ``ENTRA_LIVE_USER_ASSERTION``), set ``ENTRA_LIVE_USERNAME`` / ``ENTRA_LIVE_PASSWORD``;
4. ``.venv/bin/pytest tests/live -m live -p no:cacheprovider``.

The variables:

- ``ENTRA_LIVE_TENANT_ID``
- ``ENTRA_LIVE_CLIENT_ID`` / ``ENTRA_LIVE_CLIENT_SECRET``: a confidential "agent" app with an App ID
  URI ``api://<client id>`` that exposes a delegated scope ``access_as_user``, and a delegated
  permission (admin-consented) on the downstream API below.
- ``ENTRA_LIVE_API_SCOPE``: the downstream API's scope, e.g. ``api://<mcp-app>/.default``.
- a user token for the agent app, either ``ENTRA_LIVE_USER_ASSERTION`` (aud = the agent app, not
  expired) or ROPC: ``ENTRA_LIVE_PUBLIC_CLIENT_ID`` (a public client with "allow public client
  flows" and consent to the agent's ``access_as_user``), ``ENTRA_LIVE_USERNAME``,
  ``ENTRA_LIVE_PASSWORD`` (a test account without MFA).
- optional ``ENTRA_LIVE_UNCONSENTED_SCOPE``: a delegated scope the agent has no consent for
  (expects AADSTS65001).

Run: ``pytest tests/live -m live``.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

import httpx
import jwt
import msal
import pytest

pytestmark = pytest.mark.live

ENV = {k: v for k, v in os.environ.items() if k.startswith("ENTRA_LIVE_")}
REQUIRED = (
    "ENTRA_LIVE_TENANT_ID",
    "ENTRA_LIVE_CLIENT_ID",
    "ENTRA_LIVE_CLIENT_SECRET",
    "ENTRA_LIVE_API_SCOPE",
)
if not all(ENV.get(k) for k in REQUIRED):
    pytest.skip(
        "live Entra suite: set " + ", ".join(REQUIRED) + " to run it", allow_module_level=True
    )

TENANT = ENV["ENTRA_LIVE_TENANT_ID"]
CLIENT_ID = ENV["ENTRA_LIVE_CLIENT_ID"]
SECRET = ENV["ENTRA_LIVE_CLIENT_SECRET"]
API_SCOPE = ENV["ENTRA_LIVE_API_SCOPE"]
AUTHORITY = f"https://login.microsoftonline.com/{TENANT}"
TOKEN_URL = f"{AUTHORITY}/oauth2/v2.0/token"


def _nothing_cache() -> dict[str, Any]:
    class Nothing(dict[str, Any]):
        def __setitem__(self, key: str, value: Any) -> None:
            return None

    return Nothing()


def _cca(client_id: str = CLIENT_ID, secret: str = SECRET) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        client_id, client_credential=secret, authority=AUTHORITY, http_cache=_nothing_cache()
    )


def _code(result: dict[str, Any]) -> int | None:
    return (result.get("error_codes") or [None])[0]


def _verify(token: str) -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    unverified = jwt.decode(token, options={"verify_signature": False})
    jwks = jwt.PyJWKClient(
        f"{AUTHORITY}/discovery/v2.0/keys", ssl_context=ssl.create_default_context()
    )
    key = jwks.get_signing_key(header["kid"])
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=["RS256"],
        audience=unverified["aud"],
        issuer=unverified["iss"],
    )
    # access-token-claims-reference "Header claims": x5t is "emitted only in v1.0 access tokens".
    if unverified.get("ver") == "1.0":
        assert header["x5t"] == header["kid"]
    else:
        assert "x5t" not in header
    return claims


@pytest.fixture(scope="module")
def user_assertion() -> str:
    if ENV.get("ENTRA_LIVE_USER_ASSERTION"):
        return ENV["ENTRA_LIVE_USER_ASSERTION"]
    needed = ("ENTRA_LIVE_PUBLIC_CLIENT_ID", "ENTRA_LIVE_USERNAME", "ENTRA_LIVE_PASSWORD")
    if not all(ENV.get(k) for k in needed):
        pytest.skip("no user token: set ENTRA_LIVE_USER_ASSERTION or the ROPC variables")
    app = msal.PublicClientApplication(ENV["ENTRA_LIVE_PUBLIC_CLIENT_ID"], authority=AUTHORITY)
    result = app.acquire_token_by_username_password(
        ENV["ENTRA_LIVE_USERNAME"],
        ENV["ENTRA_LIVE_PASSWORD"],
        [f"api://{CLIENT_ID}/access_as_user"],
    )
    assert "access_token" in result, result.get("error_description")
    return str(result["access_token"])


def test_discovery_has_what_msal_needs() -> None:
    with httpx.Client() as http:
        doc = http.get(f"{AUTHORITY}/v2.0/.well-known/openid-configuration").json()
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri", "issuer"):
        assert key in doc
    assert doc["issuer"] == f"https://login.microsoftonline.com/{TENANT}/v2.0"


def test_client_credentials_claims() -> None:
    result = _cca().acquire_token_for_client([API_SCOPE])
    assert result["token_type"] == "Bearer"
    claims = _verify(result["access_token"])
    assert claims["tid"] == TENANT
    assert claims["oid"] == claims["sub"]
    assert "scp" not in claims
    assert (claims.get("azp") or claims.get("appid")) == CLIENT_ID


def test_wrong_secret_is_7000215() -> None:
    result = _cca(secret="definitely-wrong").acquire_token_for_client([API_SCOPE])
    assert result["error"] == "invalid_client"
    assert _code(result) == 7000215


def test_unknown_client_is_700016() -> None:
    result = _cca(client_id="00000000-0000-0000-0000-00000000dead").acquire_token_for_client(
        [API_SCOPE]
    )
    assert result["error"] == "unauthorized_client"
    assert _code(result) == 700016


def test_client_credentials_without_dot_default_is_1002012() -> None:
    resource = API_SCOPE.rsplit("/", 1)[0]
    result = _cca().acquire_token_for_client([f"{resource}/access_as_user"])
    assert _code(result) == 1002012


def test_unknown_resource_is_500011() -> None:
    result = _cca().acquire_token_for_client(["api://not-a-real-resource-ep/.default"])
    assert _code(result) == 500011


def test_error_body_shape() -> None:
    with httpx.Client() as http:
        resp = http.post(
            TOKEN_URL,
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": "definitely-wrong",
                "scope": API_SCOPE,
            },
            headers={"client-request-id": "11111111-2222-3333-4444-555555555555"},
        )
    body = resp.json()
    assert resp.status_code == 401
    assert body["error_description"].startswith("AADSTS7000215: ")
    for key in ("error_codes", "timestamp", "trace_id", "correlation_id", "error_uri"):
        assert key in body
    assert body["correlation_id"] == "11111111-2222-3333-4444-555555555555"
    assert "\r\nTrace ID: " in body["error_description"]


def test_resource_parameter_mismatch_is_9010010() -> None:
    with httpx.Client() as http:
        resp = http.post(
            TOKEN_URL,
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": SECRET,
                "scope": API_SCOPE,
                "resource": "https://mcp.example.com/mcp",
            },
        )
    assert resp.json()["error_codes"] == [9010010]


def test_obo_claims(user_assertion: str) -> None:
    result = _cca().acquire_token_on_behalf_of(user_assertion, [API_SCOPE])
    assert "access_token" in result, result.get("error_description")
    claims = _verify(result["access_token"])
    user = jwt.decode(user_assertion, options={"verify_signature": False})
    assert claims["oid"] == user["oid"]
    assert claims["tid"] == user["tid"]
    assert "scp" in claims
    assert claims["sub"] != claims["oid"]  # pairwise
    assert (claims.get("azp") or claims.get("appid")) == CLIENT_ID


def test_token_for_itself_needs_the_guid_form() -> None:
    # AADSTS90009: an app asking for a token for itself must name itself by its client id GUID;
    # the App ID URI form (api://<own id>) is refused.
    refused = _cca().acquire_token_for_client([f"api://{CLIENT_ID}/.default"])
    assert _code(refused) == 90009, refused.get("error_description")
    ok = _cca().acquire_token_for_client([f"{CLIENT_ID}/.default"])
    assert "access_token" in ok, ok.get("error_description")
    assert _verify(ok["access_token"])["aud"] == CLIENT_ID


def test_default_mixed_with_named_scopes_is_refused(user_assertion: str) -> None:
    resource = API_SCOPE.rsplit("/", 1)[0]
    result = _cca().acquire_token_on_behalf_of(
        user_assertion, [f"{resource}/.default", f"{resource}/access_as_user"]
    )
    assert "access_token" not in result
    assert result["error"] in ("invalid_scope", "invalid_request"), result


def test_obo_with_app_only_assertion_is_7000114() -> None:
    # The GUID form: api://<own id> would be AADSTS90009 before the OBO is even tried.
    app_token = _cca().acquire_token_for_client([f"{CLIENT_ID}/.default"])
    assert "access_token" in app_token, app_token.get("error_description")
    result = _cca().acquire_token_on_behalf_of(app_token["access_token"], [API_SCOPE])
    assert result["error"] == "unauthorized_client"
    assert _code(result) == 7000114


def test_obo_with_assertion_for_another_audience_is_500131() -> None:
    # A token for the *downstream* API, not for the OBO client: Entra answers AADSTS500131
    # (AssertionAudienceDoesNotMatch), and so does the emulator.
    other = _cca().acquire_token_for_client([API_SCOPE])["access_token"]
    result = _cca().acquire_token_on_behalf_of(other, [API_SCOPE])
    assert _code(result) == 500131, result.get("error_description")


def test_obo_without_consent_is_65001(user_assertion: str) -> None:
    scope = ENV.get("ENTRA_LIVE_UNCONSENTED_SCOPE")
    if not scope:
        pytest.skip("set ENTRA_LIVE_UNCONSENTED_SCOPE")
    result = _cca().acquire_token_on_behalf_of(user_assertion, [scope])
    assert result["error"] == "invalid_grant"
    assert result.get("suberror") == "consent_required"
    assert _code(result) == 65001


def test_ropc_wrong_password_is_50126() -> None:
    needed = ("ENTRA_LIVE_PUBLIC_CLIENT_ID", "ENTRA_LIVE_USERNAME")
    if not all(ENV.get(k) for k in needed):
        pytest.skip("set the ROPC variables")
    app = msal.PublicClientApplication(ENV["ENTRA_LIVE_PUBLIC_CLIENT_ID"], authority=AUTHORITY)
    result = app.acquire_token_by_username_password(
        ENV["ENTRA_LIVE_USERNAME"],
        "definitely-wrong-password",
        [f"api://{CLIENT_ID}/access_as_user"],
    )
    assert _code(result) == 50126
