"""A certificate client assertion from a client whose clock runs ahead (docs/emulator.md,
"Credentials and request shapes"): correctly signed, with ``iat``/``nbf`` ahead of the
emulator's clock within Entra's five minutes of skew, it is accepted; further ahead it is
AADSTS700024 "not within its valid time range", as an expired one is. Never AADSTS7000274 (a
signature failure): the signature is good, and the library's fix for 7000274 sends the reader
to check the certificate's key instead of the clock. Raw HTTPS requests to the token endpoint,
the assertion built as MSAL builds it (RS256, ``x5t``; certificate-credentials)."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from entra_passthrough._aadsts import describe
from entra_passthrough.testing import EntraEmulator

from .emu_helpers import assert_entra_error, post_token

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _assertion(
    idp: EntraEmulator, shift: dict[str, int], *, key: Any = None, raw: dict[str, Any] | None = None
) -> str:
    agent = idp.agent
    assert agent.certificate_pem is not None
    assert agent.certificate_thumbprint is not None
    if key is None:
        key = serialization.load_pem_private_key(agent.certificate_pem, None)
    x5t = base64.urlsafe_b64encode(binascii.unhexlify(agent.certificate_thumbprint)).decode()
    now = int(time.time())
    claims = {
        "aud": f"{idp.authority}/oauth2/v2.0/token",
        "iss": agent.client_id,
        "sub": agent.client_id,
        "jti": str(uuid.uuid4()),
        "iat": now + shift.get("iat", 0),
        "nbf": now + shift.get("nbf", 0),
        "exp": now + 600 + shift.get("exp", 0),
        **(raw or {}),
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"x5t": x5t})


def _request(idp: EntraEmulator, assertion: str) -> Any:
    return post_token(
        idp,
        {
            "grant_type": "client_credentials",
            "client_id": idp.agent.client_id,
            "scope": f"{idp.mcp.app_id_uri}/.default",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )


@pytest.mark.parametrize(
    "shift",
    [
        {"iat": 30, "nbf": 30},  # the r20 finding: a clock 30 s fast
        {"iat": 240, "nbf": 240},
        {"iat": 290},
        {"nbf": 290},
    ],
    ids=["both+30s", "both+4min", "iat+290s", "nbf+290s"],
)
def test_ahead_within_the_skew_is_accepted(idp: EntraEmulator, shift: dict[str, int]) -> None:
    answer = _request(idp, _assertion(idp, shift))
    assert answer.status_code == 200, answer.text
    assert "access_token" in answer.json()


@pytest.mark.parametrize(
    "shift",
    [
        {"iat": 3600, "nbf": 3600, "exp": 3600},
        {"iat": 400},
        {"nbf": 400},
        {"nbf": 3600, "exp": 3600},
        {"exp": -700},  # expired: as before
    ],
    ids=["both+1h", "iat+400s", "nbf+400s", "nbf+1h", "expired"],
)
def test_beyond_the_skew_is_a_time_range_error_not_a_signature_error(
    idp: EntraEmulator, shift: dict[str, int]
) -> None:
    assertion = _assertion(idp, shift)
    answer = _request(idp, assertion)
    body = assert_entra_error(answer, 700024, "invalid_client", status=401)
    assert "not within its valid time range" in body["error_description"]
    assert assertion not in answer.text


def test_a_bad_signature_is_still_aadsts7000274(idp: EntraEmulator) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    answer = _request(idp, _assertion(idp, {"iat": 30, "nbf": 30}, key=other))
    assert_entra_error(answer, 7000274, "invalid_client", status=401)


def test_a_federated_assertion_ahead_is_judged_by_the_same_skew(idp: EntraEmulator) -> None:
    """A token the emulator signed, presented as a client assertion (the federated path): within
    the skew its time is fine and the credential match decides, as for one stamped now (the
    agent's federated credential names another subject: AADSTS700213); beyond it, AADSTS700024
    first, as for an expired one."""
    now = int(time.time())

    def answer(ahead: int) -> Any:
        token = idp.user_token("alice", extra_claims={"iat": now + ahead, "nbf": now + ahead})
        return _request(idp, token)

    stamped_now = answer(0)
    assert stamped_now.status_code == 401, stamped_now.text
    code = stamped_now.json()["error_codes"][0]
    assert code != 700024
    assert_entra_error(answer(30), code, "invalid_client", status=401)
    assert_entra_error(answer(400), 700024, "invalid_client", status=401)


def test_the_library_fix_for_a_time_range_refusal_names_the_clock() -> None:
    """A certificate assertion refused as not yet valid (a clock more than 5 minutes fast) is
    the clock's to fix; the fix no longer speaks only of a federated token."""
    fix = describe(700024).fix
    assert "clock" in fix
    assert "federated token" in fix


@pytest.mark.parametrize(
    "raw",
    [
        {"nbf": float("inf")},
        {"nbf": float("nan")},
        {"iat": float("-inf")},
        {"iat": "soon"},
        {"nbf": True},
        {"exp": float("inf")},
    ],
    ids=["nbf=Infinity", "nbf=NaN", "iat=-Infinity", "iat=str", "nbf=true", "exp=Infinity"],
)
def test_a_time_claim_that_is_no_finite_number_is_a_time_range_error(
    idp: EntraEmulator, raw: dict[str, Any]
) -> None:
    # Python's JSON reads Infinity and NaN: int() of them was an HTTP 500 (AADSTS90100).
    answer = _request(idp, _assertion(idp, {}, raw=raw))
    assert_entra_error(answer, 700024, "invalid_client", status=401)
