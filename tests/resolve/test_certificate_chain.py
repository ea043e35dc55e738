"""A client certificate with its chain (subject name/issuer authentication): the assertion's
``x5c`` carries every certificate of the chain, leaf first, and Entra (the emulator) accepts it.
MSAL 1.39 sends only the leaf when it is given the chain as ``public_certificate`` alone."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import replace

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from entra_passthrough import AppCredential, OnBehalfOf, TokenChain, bind_caller
from entra_passthrough.testing import EntraEmulator, World

from .conftest import session


def _certificate(
    name: str, issuer: x509.Certificate | None = None, issuer_key: rsa.RSAPrivateKey | None = None
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    return key, builder.sign(issuer_key or key, hashes.SHA256())


def _pem(*items: object) -> bytes:
    out = b""
    for item in items:
        if isinstance(item, rsa.RSAPrivateKey):
            out += item.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        else:
            assert isinstance(item, x509.Certificate)
            out += item.public_bytes(serialization.Encoding.PEM)
    return out


@pytest.fixture(scope="module")
def chained() -> Iterator[tuple[EntraEmulator, bytes, x509.Certificate, x509.Certificate]]:
    ca_key, ca = _certificate("contoso issuing CA")
    key, leaf = _certificate("agent.contoso.com", ca, ca_key)
    world = World.default()
    agent = world.app("agent")
    assert agent is not None
    thumbprint = leaf.fingerprint(hashes.SHA1()).hex()  # Entra's x5t is SHA-1
    world = world.with_app(
        replace(agent, certificate_pem=_pem(key, leaf), certificate_thumbprint=thumbprint)
    )
    with EntraEmulator(world=world) as idp:
        yield idp, _pem(key, leaf, ca), leaf, ca


def _assertion_headers(idp: EntraEmulator, before: set[str]) -> list[dict]:
    headers = []
    for value in set(idp.issued()) - before:
        if value.count(".") == 2:
            try:
                header = jwt.get_unverified_header(value)
            except jwt.PyJWTError:
                continue
            if "x5c" in header:
                headers.append(header)
    return headers


def _x5c(cert: x509.Certificate) -> str:
    text = cert.public_bytes(serialization.Encoding.PEM).decode()
    return "".join(text.splitlines()[1:-1])


@pytest.mark.parametrize("send_chain", [True, False])
def test_the_chain_is_sent_only_when_asked(
    chained: tuple[EntraEmulator, bytes, x509.Certificate, x509.Certificate], send_chain: bool
) -> None:
    idp, pem, leaf, ca = chained
    credential = AppCredential(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        authority_host=idp.url,
        client_certificate=pem,
        send_certificate_chain=send_chain,
    )
    chain = TokenChain([OnBehalfOf(credential=credential, http_client=session(idp))])
    before = set(idp.issued())
    with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
        chain.get_token([f"{idp.mcp.app_id_uri}/.default"])
    chain.close()
    (header,) = _assertion_headers(idp, before)
    sent = ["".join(c.split()) for c in header["x5c"]]
    if send_chain:
        assert sent == [_x5c(leaf), _x5c(ca)]
    else:
        assert sent == [_x5c(leaf)]
        assert header["alg"] == "PS256"
        assert "x5t#S256" in header
