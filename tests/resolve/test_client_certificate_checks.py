"""A client certificate Entra cannot accept is refused at start-up, before any request: an
expired one (Entra answers AADSTS700027 "The key used is expired" on every request) and one with
a key that is not RSA (every request failed with PyJWT's ``InvalidKeyError`` and no fix). One
that expires soon is logged. When Entra (the emulator) answers AADSTS700027 for an expired key,
the typed error keeps Entra's reason and says to replace the certificate."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from _support.certificates import pem, rsa_key, self_signed
from entra_passthrough import (
    AppCredential,
    ConfigurationError,
    EntraError,
    OnBehalfOf,
    TokenChain,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator, World

from .conftest import make_obo, mcp_scope, session, token_posts


def _with_certificate(key: rsa.RSAPrivateKey, cert: x509.Certificate) -> World:
    """The default world, with the OBO app's registered certificate replaced by ``cert``."""
    world = World.default()
    agent = world.app("agent")
    assert agent is not None
    return world.with_app(
        replace(
            agent,
            certificate_pem=pem(key, cert),
            certificate_thumbprint=cert.fingerprint(hashes.SHA1()).hex(),
        )
    )


@pytest.mark.parametrize("form", ["pem", "pfx"])
def test_an_expired_certificate_is_refused_before_any_request(
    idp: EntraEmulator, form: str
) -> None:
    key = rsa_key()
    cert = self_signed(key, days_from=-400, days_to=-1)
    data = (
        pem(key, cert)
        if form == "pem"
        else pkcs12.serialize_key_and_certificates(
            b"agent", key, cert, None, serialization.NoEncryption()
        )
    )
    before = token_posts(idp)
    with pytest.raises(ConfigurationError) as info:
        make_obo(idp, client_certificate=data)
    message = str(info.value)
    assert f"expired on {cert.not_valid_after_utc:%Y-%m-%d}" in message
    assert "AADSTS700027" in message
    assert info.value.fix is not None
    assert "upload its public key" in info.value.fix
    assert "PRIVATE KEY" not in message
    assert token_posts(idp) == before


@pytest.mark.parametrize(
    ("key", "named"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), "EC key (secp256r1)"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "EC key (secp384r1)"),
        (ed25519.Ed25519PrivateKey.generate, "Ed25519 key"),
    ],
)
def test_a_certificate_with_a_key_that_is_not_rsa_is_refused_naming_the_key_type(
    idp: EntraEmulator, key: Any, named: str
) -> None:
    private = key()
    cert = self_signed(private, days_from=-1, days_to=30)
    before = token_posts(idp)
    with pytest.raises(ConfigurationError) as info:
        make_obo(idp, client_certificate=pem(private, cert))
    assert named in str(info.value)
    assert "RSA" in str(info.value)
    assert info.value.fix is not None
    assert "RSA key" in info.value.fix
    assert token_posts(idp) == before


@pytest.fixture(scope="module")
def expiring_soon() -> Iterator[tuple[EntraEmulator, bytes]]:
    key = rsa_key()
    cert = self_signed(key, days_from=-300, days_to=5)
    with EntraEmulator(world=_with_certificate(key, cert)) as emulator:
        yield emulator, pem(key, cert)


def test_a_certificate_that_expires_soon_works_and_is_logged(
    expiring_soon: tuple[EntraEmulator, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    idp, pem = expiring_soon
    with caplog.at_level(logging.WARNING, logger="entra_passthrough"):
        obo = OnBehalfOf(
            credential=AppCredential(
                client_id=idp.agent.client_id,
                tenant_id=idp.tenant_id,
                authority_host=idp.url,
                client_certificate=pem,
            ),
            http_client=session(idp),
        )
    warned = [r for r in caplog.records if "client certificate expires" in r.getMessage()]
    assert len(warned) == 1
    assert "PRIVATE KEY" not in warned[0].getMessage()
    chain = TokenChain([obo])
    try:
        with bind_caller(token=idp.user_token("alice")):
            assert chain.get_token(mcp_scope(idp)).token
    finally:
        chain.close()


@pytest.fixture(scope="module")
def expired_registration() -> Iterator[tuple[EntraEmulator, rsa.RSAPrivateKey, x509.Certificate]]:
    key = rsa_key()
    cert = self_signed(key, days_from=-400, days_to=-1)
    with EntraEmulator(world=_with_certificate(key, cert)) as emulator:
        yield emulator, key, cert


def test_entras_expired_key_answer_keeps_its_reason_and_says_to_replace_the_certificate(
    expired_registration: tuple[EntraEmulator, rsa.RSAPrivateKey, x509.Certificate],
) -> None:
    """A certificate that expired while the process ran (the library checked it at start-up):
    a client_assertion callable signs with it, as MSAL would, and Entra answers AADSTS700027
    "[Reason - The key used is expired., ...]"."""
    idp, key, cert = expired_registration
    endpoint = f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/token"
    x5t = jwt.utils.base64url_encode(cert.fingerprint(hashes.SHA1())).decode()
    signed: list[str] = []

    def assertion() -> str:
        now = int(time.time())
        claims = {
            "aud": endpoint,
            "iss": idp.agent.client_id,
            "sub": idp.agent.client_id,
            "jti": str(uuid.uuid4()),
            "nbf": now,
            "exp": now + 600,
        }
        value = jwt.encode(claims, key, algorithm="RS256", headers={"x5t": x5t})
        signed.append(value)
        return value

    obo = make_obo(idp, client_assertion=assertion)
    chain = TokenChain([obo])
    try:
        with bind_caller(token=idp.user_token("alice")), pytest.raises(EntraError) as info:
            chain.get_token(mcp_scope(idp))
    finally:
        chain.close()
    error = info.value
    assert error.code is not None
    assert error.code.code == 700027
    message = str(error)
    assert "[Reason - The key used is expired." in message
    assert cert.fingerprint(hashes.SHA1()).hex().upper() in message  # which certificate
    assert error.fix is not None
    assert "expired" in error.fix
    assert "create a new certificate" in error.fix
    assert signed
    assert all(value not in message for value in signed)
