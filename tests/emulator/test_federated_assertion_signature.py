"""A federated client assertion (a managed identity's token for api://AzureADTokenExchange, a
workload identity's token file) whose issuer, subject and audience match a federated credential
of the app, but whose signature is bad, is refused for its signature: never AADSTS700211 "no
credential names the issuer", whose fix sends the operator to add a credential that exists
(docs/emulator.md, "Federated credential matching"). Damaged in transit (the key is the issuer's,
the signature does not verify): AADSTS700027, the documented code for a client assertion that
fails signature validation (reference-error-codes; Entra's exact code for this case is not
documented). Signed by a key its issuer does not publish: AADSTS7000272, Entra's answer quoted in
Azure/azure-workload-identity#1232. Raw HTTPS requests to the emulator and the library's own
``OnBehalfOf`` with real MSAL."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from entra_passthrough import AppCredential, EntraError, OnBehalfOf, TokenChain, bind_caller
from entra_passthrough._aadsts import describe
from entra_passthrough.testing import EntraEmulator

from .emu_helpers import assert_entra_error, post_token

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _mi_assertion(idp: EntraEmulator) -> str:
    """The user-assigned identity's token for the token exchange audience: the agent app's
    federated credential names its issuer, subject and audience."""
    return idp.app_token(
        client_id=idp.managed_identity.client_id, audience="api://AzureADTokenExchange"
    )


def _damaged(token: str) -> str:
    """The same token with its signature's last bytes changed (a file damaged in transit)."""
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[-4:] = bytes(b ^ 0xFF for b in raw[-4:])
    return f"{head}.{body}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def _resigned(token: str) -> tuple[str, str]:
    """The same claims signed by another RSA key under another ``kid``: (token, kid)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    kid = uuid.uuid4().hex
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, other, algorithm="RS256", headers={"kid": kid}), kid


def _client_credentials(idp: EntraEmulator, client_id: str, assertion: str) -> Any:
    return post_token(
        idp,
        {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "scope": f"{idp.mcp.app_id_uri}/.default",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )


def test_the_intact_assertion_is_accepted(idp: EntraEmulator) -> None:
    answer = _client_credentials(idp, idp.agent.client_id, _mi_assertion(idp))
    assert answer.status_code == 200, answer.text


def test_a_damaged_signature_is_a_signature_error_not_an_unknown_issuer(
    idp: EntraEmulator,
) -> None:
    bad = _damaged(_mi_assertion(idp))
    answer = _client_credentials(idp, idp.agent.client_id, bad)
    body = assert_entra_error(answer, 700027, "invalid_client", status=401)
    assert "failed signature validation" in body["error_description"]
    assert "No matching federated identity record" not in body["error_description"]
    assert bad not in answer.text


def test_a_token_signed_by_another_key_is_aadsts7000272_naming_key_and_issuer(
    idp: EntraEmulator,
) -> None:
    good = _mi_assertion(idp)
    forged, kid = _resigned(good)
    answer = _client_credentials(idp, idp.agent.client_id, forged)
    body = assert_entra_error(answer, 7000272, "invalid_client", status=401)
    issuer = jwt.decode(good, options={"verify_signature": False})["iss"]
    assert kid in body["error_description"]
    assert issuer in body["error_description"]
    assert forged not in answer.text


@pytest.mark.parametrize("tamper", [_damaged, lambda t: _resigned(t)[0]], ids=["damaged", "key"])
def test_a_bad_signature_matching_no_credential_keeps_the_field_error(
    idp: EntraEmulator, tamper: Any
) -> None:
    """With no credential to match, the field that matches none is still named: legacy_api
    trusts no issuer (700211); the system-assigned identity is a subject no credential of the
    agent names (700213)."""
    bad = tamper(_mi_assertion(idp))
    assert_entra_error(
        _client_credentials(idp, idp.legacy_api.client_id, bad), 700211, "invalid_client", 401
    )
    system = idp.app_token(
        client_id=idp.system_identity.client_id, audience="api://AzureADTokenExchange"
    )
    assert_entra_error(
        _client_credentials(idp, idp.agent.client_id, tamper(system)),
        700213,
        "invalid_client",
        401,
    )


def test_a_damaged_agent_identity_t1_is_a_signature_error(idp: EntraEmulator) -> None:
    """An agent identity authenticates with T1, its blueprint's token with ``fmi_path``."""
    answer = post_token(
        idp,
        {
            "grant_type": "client_credentials",
            "client_id": idp.blueprint.client_id,
            "client_secret": idp.blueprint.secret or "",
            "scope": "api://AzureADTokenExchange/.default",
            "fmi_path": idp.agent_identity.client_id,
        },
    )
    assert answer.status_code == 200, answer.text
    t1 = answer.json()["access_token"]
    ok = _client_credentials(idp, idp.agent_identity.client_id, t1)
    assert ok.status_code == 200, ok.text
    refused = _client_credentials(idp, idp.agent_identity.client_id, _damaged(t1))
    assert_entra_error(refused, 700027, "invalid_client", status=401)


def test_the_library_says_the_signature_failed_not_add_a_credential(idp: EntraEmulator) -> None:
    """OnBehalfOf with a damaged federated token as its client assertion (a token file damaged
    in transit): the EntraError names the signature and the token, and its fix does not ask
    for a federated credential (the one the assertion matched exists)."""
    bad = _damaged(_mi_assertion(idp))
    credential = AppCredential(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        authority_host=idp.url,
        client_assertion=lambda: bad,
    )
    chain = TokenChain([OnBehalfOf(credential=credential, http_client=idp.msal_http_client())])
    try:
        with (
            bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)),
            pytest.raises(EntraError) as info,
        ):
            chain.get_token([f"{idp.mcp.app_id_uri}/.default"])
    finally:
        chain.close()
    err = info.value
    assert err.code is not None
    assert err.code.code == 700027
    text = str(err)
    fix = err.fix or ""
    assert "signature" in text
    assert "federated token" in text
    assert "damaged" in text
    assert "exactly as its issuer wrote it" in fix
    assert "add a federated credential" not in fix.lower()
    assert "add none" in fix
    assert bad not in text
    assert bad not in fix
    assert bad not in repr(err)


def test_the_decoded_codes_name_the_signature_and_the_key() -> None:
    damaged = describe(700027)
    assert damaged.name != "Unknown"
    assert "federated token" in damaged.meaning
    assert "another key" in damaged.meaning
    assert "certificate" in damaged.fix
    assert "federated" in damaged.fix
    other_key = describe(7000272)
    assert other_key.name != "Unknown"
    assert "not among the keys its issuer publishes" in other_key.meaning
    assert "jwks_uri" in other_key.fix
