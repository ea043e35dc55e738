"""Fidelity of flows and side endpoints, against Microsoft's documentation (raw HTTP, httpx2).

PKCE and authorization codes, refresh tokens, certificate client assertions, the App Service
managed identity endpoint, the ``az`` output, discovery, and the server certificate the emulator
hands to other loopback servers. Each check names the page it follows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import ssl
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from _support.tokens import b64url
from entra_passthrough.testing import EntraEmulator, Lifetimes, World

from .emu_helpers import assert_entra_error, token_url

AUTH_CODE_DOC = "https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow"
REDIRECT = "http://localhost/callback"


@pytest.fixture
def http(idp: EntraEmulator) -> Iterator[httpx2.Client]:
    with httpx2.Client(verify=ssl.create_default_context(cafile=idp.ca_file)) as client:
        yield client


def authorize(http: httpx2.Client, idp: EntraEmulator, **params: str) -> dict[str, str]:
    """GET /authorize for alice (login_hint) and read the redirect's query."""
    query = {
        "client_id": idp.agent.client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "scope": f"openid offline_access {idp.mcp.app_id_uri}/access_as_user",
        "login_hint": "alice",
        "state": "s1",
        **params,
    }
    resp = http.get(f"{idp.authority}/oauth2/v2.0/authorize?{urlencode(query)}")
    assert resp.status_code == 302, resp.text
    location = resp.headers["location"]
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def redeem(
    http: httpx2.Client, idp: EntraEmulator, code: str, verifier: str | None
) -> httpx2.Response:
    data = {
        "grant_type": "authorization_code",
        "client_id": idp.agent.client_id,
        "client_secret": idp.agent.secret or "",
        "code": code,
        "redirect_uri": REDIRECT,
    }
    if verifier is not None:
        data["code_verifier"] = verifier
    return http.post(token_url(idp), data=data)


# ---- PKCE and codes -------------------------------------------------------------------------


def test_pkce_s256_and_single_use_code(idp: EntraEmulator, http: httpx2.Client) -> None:
    # AUTH_CODE_DOC "Request an authorization code" (code_challenge, S256) and "Redeem a code"
    # (codes are single use: AADSTS54005 on reuse, reference-error-codes).
    verifier = b64url(os.urandom(32))  # 43 chars of the RFC 7636 4.1 unreserved set
    challenge = b64url(hashlib.sha256(verifier.encode()).digest())
    got = authorize(http, idp, code_challenge=challenge, code_challenge_method="S256")
    assert got["state"] == "s1"
    assert "code" in got
    wrong = redeem(http, idp, got["code"], b64url(os.urandom(32)))
    assert_entra_error(wrong, 501481, "invalid_grant")
    ok = redeem(http, idp, got["code"], verifier)
    body = ok.json()
    assert ok.status_code == 200, body
    assert {"access_token", "refresh_token", "id_token", "scope", "expires_in"} <= set(body)
    again = redeem(http, idp, got["code"], verifier)
    assert_entra_error(again, 54005, "invalid_grant")


def test_pkce_plain_and_missing_verifier(idp: EntraEmulator, http: httpx2.Client) -> None:
    # AUTH_CODE_DOC: code_challenge_method defaults to plain; a code issued with a challenge needs
    # the verifier at redemption (AADSTS501481 otherwise).
    verifier = "v" * 43
    got = authorize(http, idp, code_challenge=verifier)
    assert_entra_error(redeem(http, idp, got["code"], None), 501481, "invalid_grant")
    got = authorize(http, idp, code_challenge=verifier, code_challenge_method="plain")
    assert redeem(http, idp, got["code"], verifier).status_code == 200


@pytest.mark.parametrize(
    ("params", "code"),
    [
        # reference-error-codes: AADSTS50149 "Invalid Code_Challenge_method parameter."
        ({"code_challenge": "c" * 43, "code_challenge_method": "S512"}, 50149),
        # reference-error-codes: AADSTS501491 "Invalid size of Code_Challenge parameter."
        # (RFC 7636 4.1: 43-128 characters)
        ({"code_challenge": "c" * 42, "code_challenge_method": "plain"}, 501491),
        ({"code_challenge": "c" * 129, "code_challenge_method": "plain"}, 501491),
    ],
)
def test_pkce_parameter_errors_go_to_the_redirect_uri(
    idp: EntraEmulator, http: httpx2.Client, params: dict[str, str], code: int
) -> None:
    # AUTH_CODE_DOC "Error response": error, error_description and state on the redirect URI.
    got = authorize(http, idp, **params)
    assert got["error"] == "invalid_request"
    assert got["error_description"].startswith(f"AADSTS{code}: ")
    assert got["error_uri"] == f"https://login.microsoftonline.com/error?code={code}"
    assert got["state"] == "s1"
    assert "code" not in got


def test_code_lifetime() -> None:
    # AUTH_CODE_DOC: "Authorization codes are short lived"; an expired code is AADSTS70008.
    world = World.default().with_lifetimes(Lifetimes(code=-1))
    with EntraEmulator(world=world) as idp:
        ctx = ssl.create_default_context(cafile=idp.ca_file)
        with httpx2.Client(verify=ctx) as client:
            got = authorize(client, idp)
            assert_entra_error(redeem(client, idp, got["code"], None), 70008, "invalid_grant")


def test_code_redemption_needs_the_same_redirect_uri(
    idp: EntraEmulator, http: httpx2.Client
) -> None:
    # AUTH_CODE_DOC "Redeem a code": redirect_uri "must be the same redirect_uri value that was
    # used to acquire the authorization_code" (70000 is our reading, docs/emulator.md).
    got = authorize(http, idp)
    data = {
        "grant_type": "authorization_code",
        "client_id": idp.agent.client_id,
        "client_secret": idp.agent.secret or "",
        "code": got["code"],
        "redirect_uri": "http://127.0.0.1/callback",
    }
    assert_entra_error(http.post(token_url(idp), data=data), 70000, "invalid_grant")


# ---- refresh tokens -------------------------------------------------------------------------


def test_refresh_returns_a_new_token_and_keeps_the_old_one(
    idp: EntraEmulator, http: httpx2.Client
) -> None:
    # https://learn.microsoft.com/entra/identity-platform/refresh-tokens: a new refresh token on
    # each redemption; the platform "doesn't revoke old refresh tokens when used to fetch new
    # access tokens"; refresh tokens are multi-resource.
    got = authorize(http, idp)
    first = redeem(http, idp, got["code"], None).json()["refresh_token"]

    def refresh(rt: str, scope: str) -> httpx2.Response:
        return http.post(
            token_url(idp),
            data={
                "grant_type": "refresh_token",
                "client_id": idp.agent.client_id,
                "client_secret": idp.agent.secret or "",
                "refresh_token": rt,
                "scope": scope,
            },
        )

    second = refresh(first, f"{idp.mcp.app_id_uri}/access_as_user offline_access").json()
    assert second["refresh_token"] != first
    legacy = refresh(first, f"{idp.legacy_api.app_id_uri}/user_impersonation").json()
    claims = jwt.decode(legacy["access_token"], options={"verify_signature": False})
    assert claims["aud"] == idp.legacy_api.app_id_uri
    assert claims["ver"] == "1.0"
    # Revocation (revokeSignInSessions) invalidates them: AADSTS50173 (reference-error-codes).
    idp.revoke_refresh_tokens("alice")
    gone = refresh(second["refresh_token"], f"{idp.mcp.app_id_uri}/access_as_user")
    assert_entra_error(gone, 50173, "invalid_grant")


# ---- certificate client assertions ----------------------------------------------------------


def client_assertion(idp: EntraEmulator, **override: Any) -> str:
    """https://learn.microsoft.com/entra/identity-platform/certificate-credentials#assertion-format"""
    pem = idp.agent.certificate_pem
    assert pem is not None
    key = serialization.load_pem_private_key(pem, password=None)
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    headers = override.pop(
        "headers", {"x5t#S256": b64url(hashlib.sha256(der).digest()), "typ": "JWT"}
    )
    now = int(time.time())
    claims = {
        "aud": token_url(idp),
        "iss": idp.agent.client_id,
        "sub": idp.agent.client_id,
        "jti": str(uuid.uuid4()),
        "nbf": now,
        "exp": now + 300,
        **override,
    }
    return jwt.encode(claims, key, algorithm="PS256", headers=headers)  # type: ignore[arg-type]


def with_assertion(http: httpx2.Client, idp: EntraEmulator, assertion: str) -> httpx2.Response:
    return http.post(
        token_url(idp),
        data={
            "grant_type": "client_credentials",
            "client_id": idp.agent.client_id,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
            "scope": f"{idp.mcp.app_id_uri}/.default",
        },
    )


def test_certificate_assertion_accepted(idp: EntraEmulator, http: httpx2.Client) -> None:
    # certificate-credentials: PS256 + x5t#S256 (current page) and RS256 + x5t (older page).
    resp = with_assertion(http, idp, client_assertion(idp))
    assert resp.status_code == 200, resp.text
    claims = jwt.decode(resp.json()["access_token"], options={"verify_signature": False})
    assert claims["azpacr"] == "2"  # certificate
    pem = idp.agent.certificate_pem
    assert pem is not None
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    sha1 = b64url(hashlib.sha1(der).digest())
    assert sha1 == b64url(x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA1()))
    rs256 = jwt.encode(
        jwt.decode(client_assertion(idp), options={"verify_signature": False}),
        serialization.load_pem_private_key(pem, password=None),  # type: ignore[arg-type]
        algorithm="RS256",
        headers={"x5t": sha1},
    )
    assert with_assertion(http, idp, rs256).status_code == 200


@pytest.mark.parametrize(
    ("override", "code"),
    [
        # aud = the token endpoint, else 700023 "Client assertion audience claim does not match
        # Realm issuer."; iss = sub = the client id, else 700021 "Client assertion application
        # identifier doesn't match 'client_id' parameter." (Azure SDK identity troubleshooting).
        ({"aud": "https://elsewhere.example/token"}, 700023),
        ({"aud": 5}, 700023),  # an aud of the wrong type is a bad audience, not a server error
        ({"aud": [{"x": 1}]}, 700023),
        ({"exp": int(time.time()) - 60}, 700024),  # not within its valid time range
        ({"iss": "someone-else"}, 700021),
        ({"sub": "someone-else"}, 700021),
        ({"headers": {"x5t": b64url(b"\0" * 20)}}, 700027),  # unregistered certificate
    ],
)
def test_certificate_assertion_rejected(
    idp: EntraEmulator, http: httpx2.Client, override: dict[str, Any], code: int
) -> None:
    # certificate-credentials (claims and header), reference-error-codes (7000xx, invalid_client).
    resp = with_assertion(http, idp, client_assertion(idp, **override))
    assert_entra_error(resp, code, "invalid_client", status=401)


# ---- managed identity (App Service) and az ---------------------------------------------------


def test_app_service_managed_identity_response(idp: EntraEmulator, http: httpx2.Client) -> None:
    # https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference
    env = idp.mi_env()
    resource = idp.mcp.app_id_uri or ""
    resp = http.get(
        env["IDENTITY_ENDPOINT"],
        params={"api-version": "2019-08-01", "resource": resource},
        headers={"X-IDENTITY-HEADER": env["IDENTITY_HEADER"]},
    )
    body = resp.json()
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert isinstance(body["expires_on"], str)
    assert body["expires_on"].isdigit()
    assert int(body["expires_on"]) > time.time()
    assert body["resource"] == resource
    assert body["token_type"] == "Bearer"
    # No selector: the host's system-assigned identity, never a user-assigned one.
    assert body["client_id"] == idp.system_identity.client_id
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["azp"] == idp.system_identity.client_id
    assert "scp" not in claims
    missing = http.get(
        env["IDENTITY_ENDPOINT"], params={"api-version": "2019-08-01", "resource": resource}
    )
    assert missing.status_code == 401


def test_az_account_get_access_token_output(idp: EntraEmulator) -> None:
    # `az account get-access-token --output json` keys as azure-identity 1.27 parses them
    # (azure/identity/_credentials/azure_cli.py: accessToken, expires_on, else expiresOn).
    env = {**os.environ, **idp.az_env("alice")}
    resource = idp.legacy_api.app_id_uri or ""
    out = subprocess.run(
        ["az", "account", "get-access-token", "--output", "json", "--resource", resource],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    body = json.loads(out)
    assert set(body) == {
        "accessToken",
        "expiresOn",
        "expires_on",
        "subscription",
        "tenant",
        "tokenType",
    }
    assert isinstance(body["expires_on"], int)
    assert body["tokenType"] == "Bearer"
    assert dt.datetime.strptime(body["expiresOn"], "%Y-%m-%d %H:%M:%S.%f")
    assert body["tenant"] == idp.tenant_id


# ---- discovery ------------------------------------------------------------------------------


def test_openid_configuration(idp: EntraEmulator, http: httpx2.Client) -> None:
    # https://learn.microsoft.com/entra/identity-platform/v2-protocols-oidc#find-your-apps-openid-configuration-document-uri
    config = http.get(f"{idp.authority}/v2.0/.well-known/openid-configuration").json()
    assert config["issuer"] == idp.issuer()
    assert config["token_endpoint"] == token_url(idp)
    assert config["authorization_endpoint"] == f"{idp.authority}/oauth2/v2.0/authorize"
    assert config["jwks_uri"] == idp.jwks_uri()
    assert config["id_token_signing_alg_values_supported"] == ["RS256"]
    # Multi-tenant discovery publishes a templated issuer ({tenantid}).
    common = http.get(f"{idp.url}/organizations/v2.0/.well-known/openid-configuration").json()
    assert common["issuer"] == f"{idp.url}/{{tenantid}}/v2.0"


# ---- the server certificate for other loopback servers ---------------------------------------


def test_server_cert_file_is_trusted_by_the_ca(idp: EntraEmulator) -> None:
    key_file = Path(idp.server_key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(idp.server_cert_file, idp.server_key_file)

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()  # the socket is already listening: no readiness wait needed
    try:
        port = server.server_address[1]
        for host in ("127.0.0.1", "localhost"):
            with httpx2.Client(verify=ssl.create_default_context(cafile=idp.ca_file)) as c:
                resp = c.get(f"https://{host}:{port}/")
            assert resp.status_code == 200
            assert resp.text == "hello"
        # Trust comes from the emulator's CA only: the system store does not know it.
        with (
            httpx2.Client(verify=ssl.create_default_context()) as c,
            pytest.raises(httpx2.ConnectError),
        ):
            c.get(f"https://127.0.0.1:{port}/")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert re.search(r"BEGIN CERTIFICATE", Path(idp.server_cert_file).read_text())
