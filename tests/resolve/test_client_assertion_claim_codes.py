"""A certificate client assertion with the wrong ``aud`` is AADSTS700023, one whose ``iss``/``sub``
is not the client id AADSTS700021, as Entra answers them (the Azure SDK identity troubleshooting
guides' ClientAssertionCredential table: 700021 "Client assertion application identifier doesn't
match 'client_id' parameter.", 700023 "Client assertion audience claim does not match Realm
issuer."). Before, the emulator had the two the other way round, and the library's decoder told
a user whose ``aud`` was wrong to fix ``iss``/``sub``.

Real parts: the HTTPS emulator, unmodified MSAL, and the library's ``OnBehalfOf``."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from typing import Any

import jwt
import msal
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from entra_passthrough import EntraError, TokenChain, bind_caller
from entra_passthrough._aadsts import describe
from entra_passthrough.testing import EntraEmulator

from .conftest import make_obo, mcp_scope, session


def _assertion(idp: EntraEmulator, **claims: Any) -> str:
    """The agent's registered certificate signs it; ``claims`` override the right ones."""
    pem = idp.agent.certificate_pem
    assert pem is not None
    key = serialization.load_pem_private_key(pem, password=None)
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    x5t = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode()
    now = int(time.time())
    body = {
        "aud": f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/token",
        "iss": idp.agent.client_id,
        "sub": idp.agent.client_id,
        "jti": str(uuid.uuid4()),
        "nbf": now,
        "iat": now,
        "exp": now + 600,
        **claims,
    }
    return jwt.encode(body, key, algorithm="RS256", headers={"x5t": x5t})  # type: ignore[arg-type]


def _wrong_aud(idp: EntraEmulator) -> dict[str, Any]:
    # Another tenant's token endpoint at the same host.
    return {"aud": f"{idp.url}/{idp.second_tenant_id}/oauth2/v2.0/token"}


def _wrong_issuer(idp: EntraEmulator) -> dict[str, Any]:
    other = str(uuid.uuid4())
    return {"iss": other, "sub": other}


CASES = [
    pytest.param(
        _wrong_aud, 700023, "Client assertion audience claim does not match Realm issuer.", id="aud"
    ),
    pytest.param(
        _wrong_issuer,
        700021,
        "Client assertion application identifier doesn't match 'client_id' parameter.",
        id="iss-sub",
    ),
]


@pytest.fixture
def user_token(idp: EntraEmulator) -> str:
    return idp.user_token("alice", audience=idp.agent.client_id)


@pytest.mark.parametrize(("claims", "code", "text"), CASES)
def test_msal_gets_entras_code_and_text(
    idp: EntraEmulator, user_token: str, claims: Any, code: int, text: str
) -> None:
    assertion = _assertion(idp, **claims(idp))
    app = msal.ConfidentialClientApplication(
        idp.agent.client_id,
        client_credential={"client_assertion": lambda: assertion},
        authority=idp.authority,
        instance_discovery=False,
        http_client=session(idp),
    )
    result = app.acquire_token_on_behalf_of(user_token, mcp_scope(idp))
    assert "access_token" not in result
    assert result.get("error") == "invalid_client"
    assert result.get("error_codes") == [code], result
    assert str(result.get("error_description")).startswith(f"AADSTS{code}: {text}")


@pytest.mark.parametrize(("claims", "code", "text"), CASES)
def test_the_library_names_the_claim_that_is_wrong(
    idp: EntraEmulator, user_token: str, claims: Any, code: int, text: str
) -> None:
    assertion = _assertion(idp, **claims(idp))
    obo = make_obo(idp, client_assertion=lambda: assertion)
    chain = TokenChain([obo])
    try:
        with bind_caller(token=user_token), pytest.raises(EntraError) as info:
            chain.get_token(mcp_scope(idp))
    finally:
        chain.close()
    err = info.value
    assert err.code is not None
    assert err.code.code == code
    fix = str(err.fix)
    if code == 700023:
        assert "aud" in fix
        assert "token endpoint" in fix
        assert "iss" not in fix  # before: "sign the assertion with iss = sub = ..."
    else:
        assert "iss = sub = the app's client id" in fix
        assert "aud" not in fix


def test_the_decoder_reads_entras_700023_as_the_audience() -> None:
    """What production Entra sends for a wrong ``aud``: the decoder's meaning and fix speak of
    the audience (the token endpoint), never of iss/sub."""
    entry = describe(700023)
    assert "aud" in entry.meaning
    assert "token endpoint" in entry.fix
    assert "iss" not in entry.meaning + entry.fix
    other = describe(700021)
    assert "iss" in other.meaning
    assert "aud" not in other.meaning + other.fix
