"""Bad input gets an Entra-shaped 4xx answer, never a 500 or a hang."""

from __future__ import annotations

import base64
import json

import httpx
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entra_passthrough.testing import EntraEmulator

from .emu_helpers import obo_form, post_token

GRANTS = st.sampled_from(
    [
        "client_credentials",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "authorization_code",
        "refresh_token",
        "password",
        "implicit",
        "",
    ]
)
FIELDS = st.sampled_from(
    [
        "client_id",
        "client_secret",
        "client_assertion",
        "client_assertion_type",
        "assertion",
        "requested_token_use",
        "scope",
        "code",
        "code_verifier",
        "redirect_uri",
        "refresh_token",
        "username",
        "password",
        "resource",
        "fmi_path",
    ]
)


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _forged(header: dict, claims: dict) -> str:
    return f"{_b64(header)}.{_b64(claims)}.{_b64({'x': 1})}"


JUNK_JWTS = st.sampled_from(
    [
        _forged({"alg": "RS256", "kid": {"a": 1}}, {"exp": "soon", "aud": ["a", 1]}),
        _forged({"alg": "none"}, {"sub": None}),
        _forged({"alg": "RS256", "x5t": 5}, {"iss": 7, "exp": 1e30}),
        "a.b.c",
        "...",
        "\u0000\u00ff",
    ]
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    grant=GRANTS,
    fields=st.dictionaries(FIELDS, st.one_of(st.text(max_size=40), JUNK_JWTS), max_size=8),
)
def test_token_endpoint_never_fails_with_500(
    entra_emulator: EntraEmulator, grant: str, fields: dict[str, str]
) -> None:
    idp = entra_emulator
    data = {"grant_type": grant, **fields}
    resp = post_token(idp, data)
    if resp.status_code == 200:
        return  # a random combination may be valid (e.g. a real client id with no secret)
    assert resp.status_code in (400, 401), resp.text
    body = resp.json()
    assert body["error_description"].startswith(f"AADSTS{body['error_codes'][0]}: ")


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe\x00", b'{"grant_type": "client_credentials"}', b"grant_type=%ZZ", b"=" * 5000],
)
def test_token_endpoint_odd_bodies(idp: EntraEmulator, body: bytes) -> None:
    resp = post_token(idp, content=body)
    assert resp.status_code == 400
    assert resp.json()["error"] in ("invalid_request", "unsupported_grant_type")


def test_forged_assertion_signed_with_another_key(idp: EntraEmulator) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = jwt.decode(
        idp.user_token("alice", audience=idp.agent.client_id), options={"verify_signature": False}
    )
    forged = jwt.encode(claims, key, algorithm="RS256", headers={"kid": idp.signing_kid})
    resp = post_token(idp, obo_form(idp, forged))
    assert resp.json()["error_codes"] == [50013]


def test_authorize_with_junk_parameters(idp: EntraEmulator) -> None:
    with httpx.Client(verify=idp.ssl_context()) as http:
        resp = http.get(
            f"{idp.authority}/oauth2/v2.0/authorize",
            params={"client_id": "\u00ff" * 3, "redirect_uri": "javascript:alert(1)"},
        )
    assert resp.status_code == 400
    assert "AADSTS700016" in resp.text
    assert "<script" not in resp.text


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": 5, "iss": None, "sub": {"x": 1}, "exp": "never"},
        {"aud": {"a": 1}, "exp": 1e300, "iss": 3},
        {"aud": ["api://AzureADTokenExchange"], "sub": [], "exp": None},
        {},
    ],
)
@pytest.mark.parametrize("signed_by_emulator", [True, False])
def test_client_assertions_with_odd_claims(
    idp: EntraEmulator, claims: dict, signed_by_emulator: bool
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    payload = json.dumps(claims).encode()
    if signed_by_emulator:
        # Junk claims under the emulator's own signature (PyJWS signs bytes without checks).
        current = idp._rt.keys.current
        key, headers = current.key, {"kid": current.kid, "x5t": current.kid}
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        headers = {"x5t": "AAAA"}
    assertion = jwt.api_jws.PyJWS().encode(payload, key, algorithm="RS256", headers=headers)
    resp = post_token(
        idp,
        {
            "grant_type": "client_credentials",
            "client_id": idp.agent.client_id,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
            "scope": f"{idp.mcp.app_id_uri}/.default",
        },
    )
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    "override",
    [
        {"amr": 5},
        {"amr": "mfa"},
        {"tid": 7},
        {"oid": {"x": 1}},
        {"aud": ["a", "b"]},
        {"scp": ["access_as_user"]},
        {"iss": None},
        {"exp": "later"},
        {"idtyp": ["app"]},
    ],
)
def test_obo_assertions_with_odd_claims(idp: EntraEmulator, override: dict) -> None:
    base = jwt.decode(
        idp.user_token("alice", audience=idp.agent.client_id), options={"verify_signature": False}
    )
    current = idp._rt.keys.current
    assertion = jwt.api_jws.PyJWS().encode(
        json.dumps({**base, **override}).encode(),
        current.key,
        algorithm="RS256",
        headers={"kid": current.kid, "x5t": current.kid},
    )
    resp = post_token(idp, obo_form(idp, assertion))
    assert resp.status_code in (200, 400), resp.text
    if resp.status_code == 400:
        assert resp.json()["error"] in ("invalid_grant", "unauthorized_client", "invalid_request")


@pytest.mark.parametrize(
    "body", [b"[]", b"null", b'{"user": ["alice"]}', b'{"user": "alice", "tenant": ["x"]}', b"{"]
)
def test_az_endpoint_junk(idp: EntraEmulator, body: bytes) -> None:
    key = idp.az_env()["ENTRA_EMULATOR_AZ_KEY"]
    with httpx.Client(verify=idp.ssl_context()) as http:
        resp = http.post(
            f"{idp.url}/_emulator/az", content=body, headers={"Authorization": f"Emulator {key}"}
        )
    assert resp.status_code == 400


def test_az_endpoint_needs_the_key(idp: EntraEmulator) -> None:
    with httpx.Client(verify=idp.ssl_context()) as http:
        resp = http.post(f"{idp.url}/_emulator/az", json={"user": "alice", "resource": "x"})
    assert resp.status_code == 401


def test_a_value_too_short_to_be_a_secret_is_not_recorded_as_issued(idp: EntraEmulator) -> None:
    # "e30.e30." is an 8-character JWT with empty claims: the emulator decodes it and remembers
    # client assertions for leak scans. A short fuzzed value in issued() made every later scan
    # (tests/resolve/test_no_leaks.py after this module) find it in unrelated text.
    short = "e30.e30."
    resp = post_token(
        idp,
        {
            "grant_type": "client_credentials",
            "client_id": idp.agent.client_id,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": short,
            "scope": f"{idp.mcp.app_id_uri}/.default",
        },
    )
    assert resp.status_code == 401, resp.text
    assert short not in idp.issued()
    assert all(len(value) >= 16 for value in idp._rt.issued)
