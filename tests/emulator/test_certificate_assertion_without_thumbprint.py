"""A client assertion whose ``iss`` = ``sub`` = the client id is the app's own certificate
assertion (certificate-credentials), whatever its header carries. Signed with the app's
registered certificate but naming it only by ``kid`` (no ``x5t``/``x5t#S256``: Keycloak,
hand-written signers, Key Vault ``sign`` callers), Entra answers AADSTS700027 "The certificate
with identifier used to sign the client assertion is not registered on application. [Reason -
The key was not found., ...]" (keycloak/keycloak#19425, #25439), never the federated
credential's AADSTS700211, whose fix would send the operator to add a federated credential the
app does not need. Raw HTTPS requests to the emulator and the library's ``OnBehalfOf`` with a
``client_assertion`` callable and real MSAL."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from entra_passthrough import AppCredential, EntraError, OnBehalfOf, TokenChain, bind_caller
from entra_passthrough.testing import EntraEmulator

from .emu_helpers import assert_entra_error, post_token

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _signed(idp: EntraEmulator, headers: dict[str, Any]) -> str:
    """A certificate assertion of the agent app, signed with its registered certificate's key,
    with ``headers`` as its only JOSE header fields (besides ``alg``/``typ``)."""
    pem = idp.agent.certificate_pem
    assert pem is not None
    now = int(time.time())
    claims = {
        "aud": f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/token",
        "iss": idp.agent.client_id,
        "sub": idp.agent.client_id,
        "jti": str(uuid.uuid4()),
        "nbf": now,
        "iat": now,
        "exp": now + 600,
    }
    key = serialization.load_pem_private_key(pem, password=None)
    return jwt.encode(claims, key, algorithm="RS256", headers=headers)  # type: ignore[arg-type]


def _sha1(idp: EntraEmulator) -> bytes:
    pem = idp.agent.certificate_pem
    assert pem is not None
    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA1())


def _client_credentials(idp: EntraEmulator, assertion: str) -> Any:
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
    "headers",
    [
        pytest.param({"kid": "thumbprint"}, id="kid-sha1-hex"),
        pytest.param({"kid": "random"}, id="kid-random"),
        pytest.param({}, id="no-key-id"),
    ],
)
def test_an_own_assertion_naming_no_thumbprint_is_aadsts700027_key_not_found(
    idp: EntraEmulator, headers: dict[str, str]
) -> None:
    if headers.get("kid") == "thumbprint":
        headers = {"kid": _sha1(idp).hex().upper()}  # what Keycloak puts there
    elif headers.get("kid") == "random":
        headers = {"kid": uuid.uuid4().hex}
    assertion = _signed(idp, headers)
    answer = _client_credentials(idp, assertion)
    body = assert_entra_error(answer, 700027, "invalid_client", status=401)
    text = body["error_description"]
    assert "is not registered on application" in text
    assert "[Reason - The key was not found." in text
    assert idp.agent.client_id in text  # "configured keys for app Id '...'"
    assert "Thumbprint of key used by client" not in text  # the header named none
    assert "federated" not in text.lower()
    assert assertion not in answer.text


def test_the_same_assertion_with_x5t_is_accepted(idp: EntraEmulator) -> None:
    """The control: the same key and claims, the certificate named by ``x5t``."""
    x5t = jwt.utils.base64url_encode(_sha1(idp)).decode()
    answer = _client_credentials(idp, _signed(idp, {"x5t": x5t}))
    assert answer.status_code == 200, answer.text


def test_an_unknown_x5t_names_the_thumbprint_entra_read(idp: EntraEmulator) -> None:
    other = bytes(range(20))
    x5t = jwt.utils.base64url_encode(other).decode()
    body = assert_entra_error(
        _client_credentials(idp, _signed(idp, {"x5t": x5t})), 700027, "invalid_client", 401
    )
    text = body["error_description"]
    assert "[Reason - The key was not found., Thumbprint of key used by client: " in text
    assert f"'{other.hex().upper()}'" in text


def test_the_library_names_the_certificate_not_a_federated_credential(
    idp: EntraEmulator,
) -> None:
    """``AppCredential(client_assertion=callable)`` -> ``OnBehalfOf``: the decoded error is
    AADSTS700027 with Entra's reason, and its fix says the header must carry the certificate's
    x5t, never to add a federated credential."""
    signed: list[str] = []

    def assertion() -> str:
        value = _signed(idp, {"kid": _sha1(idp).hex().upper()})
        signed.append(value)
        return value

    credential = AppCredential(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        client_assertion=assertion,
        authority_host=idp.url,
    )
    chain = TokenChain([OnBehalfOf(credential=credential, http_client=idp.msal_http_client())])
    try:
        with bind_caller(token=idp.user_token("alice")), pytest.raises(EntraError) as info:
            chain.get_token([f"{idp.mcp.app_id_uri}/.default"])
    finally:
        chain.close()
    err = info.value
    assert err.code is not None
    assert err.code.code == 700027
    text, fix = str(err), err.fix or ""
    assert "The key was not found" in text
    assert "x5t" in fix
    assert "registered on the app" in fix
    assert "add a federated credential" not in fix.lower()
    assert "700211" not in text
    assert signed
    assert not any(value in text or value in repr(err) for value in signed)
