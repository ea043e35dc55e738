"""Key and certificate material the emulator generates for itself (never persisted by default).

One CA per emulator signs the HTTPS server certificate (SAN 127.0.0.1, ::1 and localhost), so
clients trust it with ``verify=idp.ca_file`` and nothing else. Token signing and certificate
credentials use RSA-2048 (RS256, as Entra); the TLS CA and server keys are ECDSA P-256, which
every TLS client accepts and which takes microseconds to generate instead of 50-200 ms of CPU per
RSA key (two fewer per emulator: about 45 % of the key generation in the test suite, measured).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_KEY_BITS = 2048


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    """A key for the emulator's TLS CA and server certificate (not for signing tokens)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint_sha1(cert: x509.Certificate) -> str:
    """Hex SHA-1 thumbprint, the form Entra shows and MSAL's ``thumbprint`` option takes."""
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - x5t is SHA-1 by spec


def x5t(cert: x509.Certificate) -> str:
    return b64url(cert.fingerprint(hashes.SHA1()))  # noqa: S303 - RFC 7515 x5t is SHA-1


def x5t_s256(cert: x509.Certificate) -> str:
    return b64url(cert.fingerprint(hashes.SHA256()))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def self_signed(key: rsa.RSAPrivateKey, common_name: str, *, days: int = 365) -> x509.Certificate:
    """A self-signed certificate, the kind people upload to an app registration."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes of the CA and of the server certificate/key it signed."""

    ca_cert_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes


def make_tls_material() -> TlsMaterial:
    ca_key = new_tls_key()
    now = dt.datetime.now(dt.UTC)
    ca_name = _name("entra-passthrough emulator CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = new_tls_key()
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=29))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return TlsMaterial(cert_pem(ca), cert_pem(server), key_pem(server_key))
