"""Checks of credentials and request shapes the emulator used to skip, each seen by unmodified
MSAL or, where MSAL cannot build the request, raw HTTPS (docs/emulator.md):

- an OBO user assertion whose ``nbf`` lies more than 5 minutes ahead (Entra's clock skew):
  AADSTS500133, "Assertion is not within its valid time range";
- a wrong ``client_secret`` is AADSTS7000215 even beside a valid ``client_assertion`` (RFC 6749
  section 2.3.1: a client uses one method; a wrong secret is never ignored);
- ``/authorize`` names the response type it refuses: AADSTS700054 for ``id_token``, AADSTS70005
  for ``token``, with ``error_uri`` like every other ``/authorize`` error;
- a client secret past its expiry (``secret_expires`` in the world file): AADSTS7000222.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientSecretCredential
from cryptography.hazmat.primitives import serialization

from entra_passthrough.testing import EntraEmulator, World

from .emu_helpers import aadsts, assert_entra_error, msal_app, post_token

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXPIRED_SECRET = (
    "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create "
    "new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate "
    "credentials for added security: https://aka.ms/certCreds."
)


# ---- 4. OBO assertion not yet valid: AADSTS500133 ------------------------------------------


def test_an_obo_assertion_valid_only_in_the_future_is_aadsts500133(idp: EntraEmulator, cca) -> None:
    scope = [f"{idp.mcp.app_id_uri}/.default"]
    now = int(time.time())
    future = idp.user_token("alice", extra_claims={"nbf": now + 86400})
    result = cca().acquire_token_on_behalf_of(future, scope)
    assert "access_token" not in result, result
    assert result.get("error") == "invalid_grant"
    assert aadsts(result) == 500133
    assert "Assertion is not within its valid time range." in result["error_description"]
    # Within Entra's five minutes of clock skew: accepted.
    skewed = idp.user_token("alice", extra_claims={"nbf": now + 120})
    ok = cca().acquire_token_on_behalf_of(skewed, scope)
    assert "access_token" in ok, ok.get("error_description")


@pytest.mark.parametrize("ahead", [{"iat": 60, "nbf": 60}, {"iat": 60}, {"iat": 240, "nbf": 240}])
def test_an_assertion_from_an_issuer_clock_ahead_within_the_skew_is_accepted(
    idp: EntraEmulator, cca, ahead: dict[str, int]
) -> None:
    """An issuer whose clock runs ahead stamps iat (and nbf) in this machine's future; Entra
    accepts it within its five minutes of skew. The emulator refused it as AADSTS50013 "The key
    was not found" (PyJWT's iat check in its signature verification)."""
    now = int(time.time())
    claims = {name: now + seconds for name, seconds in ahead.items()}
    assertion = idp.user_token("alice", extra_claims=claims)
    ok = cca().acquire_token_on_behalf_of(assertion, [f"{idp.mcp.app_id_uri}/.default"])
    assert "access_token" in ok, ok.get("error_description")


# ---- 5. a wrong secret beside a valid assertion: AADSTS7000215 ------------------------------


def _certificate_assertion(idp: EntraEmulator) -> str:
    """The agent's certificate assertion for the home tenant's token endpoint, as MSAL builds
    it (RS256, ``x5t`` = SHA-1 thumbprint; certificate-credentials)."""
    agent = idp.agent
    assert agent.certificate_pem is not None
    assert agent.certificate_thumbprint is not None
    key: Any = serialization.load_pem_private_key(agent.certificate_pem, None)
    x5t = base64.urlsafe_b64encode(binascii.unhexlify(agent.certificate_thumbprint)).decode()
    now = int(time.time())
    claims = {
        "aud": f"{idp.authority}/oauth2/v2.0/token",
        "iss": agent.client_id,
        "sub": agent.client_id,
        "jti": str(uuid.uuid4()),
        "nbf": now,
        "exp": now + 600,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"x5t": x5t})


def test_a_wrong_secret_beside_a_valid_client_assertion_is_aadsts7000215(
    idp: EntraEmulator,
) -> None:
    agent = idp.agent
    base = {
        "grant_type": "client_credentials",
        "client_id": agent.client_id,
        "scope": f"{idp.mcp.app_id_uri}/.default",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": _certificate_assertion(idp),
    }
    wrong = post_token(idp, {**base, "client_secret": "definitely-wrong"})
    body = assert_entra_error(wrong, 7000215, "invalid_client", status=401)
    assert "definitely-wrong" not in wrong.text
    assert base["client_assertion"] not in wrong.text
    assert agent.client_id in body["error_description"]
    # The same wrong secret in the Basic header: refused too.
    basic = post_token(idp, base, auth=(agent.client_id, "definitely-wrong"))
    assert_entra_error(basic, 7000215, "invalid_client", status=401)
    # The assertion alone works; both methods valid is accepted (Entra's answer unconfirmed,
    # docs/emulator.md "Known differences").
    assert "access_token" in post_token(idp, base).json()
    both = post_token(idp, {**base, "client_secret": agent.secret or ""})
    assert "access_token" in both.json(), both.text


# ---- 6. /authorize names the response type it refuses --------------------------------------


@pytest.mark.parametrize(
    ("response_type", "code", "named"),
    [
        ("id_token", 700054, "id_token"),
        ("token", 70005, "token"),
        ("id_token token", 70005, "token"),
    ],
)
def test_authorize_names_the_response_type_it_refuses(
    idp: EntraEmulator, response_type: str, code: int, named: str
) -> None:
    query = {
        "client_id": idp.agent.client_id,
        "response_type": response_type,
        "redirect_uri": "http://localhost/callback",
        "scope": "openid",
        "nonce": "n",
        "login_hint": "alice",
        "state": "s1",
    }
    with httpx.Client(verify=idp.ssl_context()) as http:
        resp = http.get(f"{idp.authority}/oauth2/v2.0/authorize?{urlencode(query)}")
    assert resp.status_code == 302, resp.text
    answer = {k: v[0] for k, v in parse_qs(urlsplit(resp.headers["location"]).query).items()}
    assert answer["error"] == "unsupported_response_type"
    assert answer["error_description"].startswith(
        f"AADSTS{code}: response_type '{named}' is not enabled for the application."
    )
    assert answer["error_uri"] == f"https://login.microsoftonline.com/error?code={code}"
    assert answer["state"] == "s1"
    assert "code" not in answer


# ---- 7. an expired client secret: AADSTS7000222 --------------------------------------------


@pytest.fixture(scope="module")
def expiring() -> Iterator[EntraEmulator]:
    """Two apps with fixed secrets: ``stale`` expired yesterday, ``fresh`` expires in a year."""
    now = dt.datetime.now(dt.UTC)
    world = World.from_dict(
        {
            "apps": [
                {
                    "name": "stale",
                    "secret": "stale-secret-value",
                    "secret_expires": (now - dt.timedelta(days=1)).isoformat(),
                },
                {
                    "name": "fresh",
                    "secret": "fresh-secret-value",
                    "secret_expires": (now + dt.timedelta(days=365)).isoformat(),
                },
            ],
        }
    )
    with EntraEmulator(world=world) as emulator:
        yield emulator


def test_an_expired_client_secret_is_aadsts7000222(expiring: EntraEmulator) -> None:
    idp = expiring
    stale, fresh = idp.app("stale"), idp.app("fresh")
    scope = [f"{idp.mcp.app_id_uri}/.default"]
    result = msal_app(
        idp, client_id=stale.client_id, credential=stale.secret
    ).acquire_token_for_client(scope)
    assert "access_token" not in result, result
    assert result.get("error") == "invalid_client"
    assert aadsts(result) == 7000222
    assert EXPIRED_SECRET.format(stale.client_id) in result["error_description"]
    raw = post_token(
        idp,
        {
            "grant_type": "client_credentials",
            "client_id": stale.client_id,
            "client_secret": stale.secret or "",
            "scope": scope[0],
        },
    )
    assert_entra_error(raw, 7000222, "invalid_client", status=401)
    assert "stale-secret-value" not in raw.text
    # azure-identity sees the same.
    cred = ClientSecretCredential(
        idp.tenant_id,
        stale.client_id,
        stale.secret or "",
        authority=idp.url,
        disable_instance_discovery=True,
        connection_verify=idp.ca_file,
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000222"):
        cred.get_token(scope[0])
    # A wrong secret for that app is still a wrong secret; a secret not yet expired works.
    wrong = msal_app(idp, client_id=stale.client_id, credential="nope").acquire_token_for_client(
        scope
    )
    assert aadsts(wrong) == 7000215, wrong
    ok = msal_app(idp, client_id=fresh.client_id, credential=fresh.secret).acquire_token_for_client(
        scope
    )
    assert "access_token" in ok, ok.get("error_description")


def test_secret_expires_loads_from_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "world.toml"
    toml.write_text(
        '[[apps]]\nname = "a"\nsecret = "s"\nsecret_expires = 2020-01-02T03:04:05Z\n'
        '[[apps]]\nname = "b"\nsecret = "s"\nsecret_expires = 2020-01-02\n'
        '[[apps]]\nname = "c"\nsecret = "s"\n',
        encoding="utf-8",
    )
    world = World.from_file(toml)
    a, b, c = (world.app(n) for n in "abc")
    assert a is not None
    assert b is not None
    assert c is not None
    assert a.secret_expires == dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert b.secret_expires == dt.datetime(2020, 1, 2, tzinfo=dt.UTC)
    assert c.secret_expires is None
    data = World.from_dict(
        {"apps": [{"name": "d", "secret": "s", "secret_expires": "2020-01-02T03:04:05"}]}
    )
    d = data.app("d")
    assert d is not None
    assert d.secret_expires == dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="secret_expires"):
        World.from_dict({"apps": [{"name": "e", "secret": "s", "secret_expires": "soon"}]})
