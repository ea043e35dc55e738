"""Tokens signed by keys the tests generate: a stand-in issuer for unit tests of the verifier."""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

AUTHORITY = "https://login.microsoftonline.com"
TENANT = "11111111-1111-1111-1111-111111111111"
OTHER_TENANT = "22222222-2222-2222-2222-222222222222"
API = "33333333-3333-3333-3333-333333333333"
API_URI = f"api://{API}"
CLIENT = "44444444-4444-4444-4444-444444444444"
USER_OID = "55555555-5555-5555-5555-555555555555"


def b64url_int(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Issuer:
    """Signing keys (current first) and the JWKS document an issuer publishes."""

    keys: list[tuple[str, rsa.RSAPrivateKey]] = field(default_factory=list)
    jwks_requests: int = 0

    def __post_init__(self) -> None:
        if not self.keys:
            self.rotate()

    def rotate(self, *, retire_old: bool = False) -> str:
        kid = uuid.uuid4().hex
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys = [(kid, key)] if retire_old else [(kid, key), *self.keys]
        return kid

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid, key in self.keys:
            nums = key.public_key().public_numbers()
            out.append(
                {
                    "kty": "RSA",
                    "use": "sig",
                    "kid": kid,
                    "n": b64url_int(nums.n),
                    "e": b64url_int(nums.e),
                }
            )
        return {"keys": out}

    def claims(self, *, version: str = "2.0", tenant: str = TENANT, **over: Any) -> dict[str, Any]:
        now = int(time.time())
        c: dict[str, Any] = {
            "aud": API if version == "2.0" else API_URI,
            "iss": f"{AUTHORITY}/{tenant}/v2.0"
            if version == "2.0"
            else f"https://sts.windows.net/{tenant}/",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "tid": tenant,
            "oid": USER_OID,
            "sub": "pairwise-sub",
            "scp": "access_as_user",
            "name": "Alice",
            "ver": version,
        }
        if version == "2.0":
            c["azp"] = CLIENT
            c["preferred_username"] = "alice@contoso.com"
        else:
            c["appid"] = CLIENT
            c["upn"] = "alice@contoso.com"
        c.update(over)
        return {k: v for k, v in c.items() if v is not None}

    def token(
        self, *, headers: dict[str, Any] | None = None, key_index: int = 0, **claims: Any
    ) -> str:
        kid, key = self.keys[key_index]
        hdr = {"kid": kid, **(headers or {})}
        return jwt.encode(self.claims(**claims), key, algorithm="RS256", headers=hdr)

    def _handler(self, request: Any) -> tuple[int, bytes]:
        if request.url.path.endswith("/discovery/v2.0/keys"):
            self.jwks_requests += 1
            return 200, json.dumps(self.jwks()).encode()
        return 404, b"{}"

    def async_client(self) -> httpx2.AsyncClient:
        def handle(request: httpx2.Request) -> httpx2.Response:
            status, body = self._handler(request)
            return httpx2.Response(status, content=body)

        return httpx2.AsyncClient(transport=httpx2.MockTransport(handle))

    def sync_client(self) -> httpx.Client:
        def handle(request: httpx.Request) -> httpx.Response:
            status, body = self._handler(request)
            return httpx.Response(status, content=body)

        return httpx.Client(transport=httpx.MockTransport(handle))


def b64url(data: bytes) -> str:
    """base64url without padding, as in a JWT."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A JWT-shaped string with this header and payload, and ``signature`` as its third part
    (nothing signs it): for code that only decodes, or must refuse it."""
    return ".".join(
        [
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(payload).encode()),
            b64url(signature),
        ]
    )


def unsigned_jwt(**claims: Any) -> str:
    """An unsigned user token for capture and routing tests (the middleware only decodes): valid
    for an hour, ``scp`` access_as_user, then these claims (which override)."""
    body = {"exp": time.time() + 3600, "scp": "access_as_user", **claims}
    return unsigned({"alg": "RS256", "typ": "JWT"}, body, b"signature")


def bare_jwt(**claims: Any) -> str:
    """An unsigned JWT-shaped string with exactly these claims (none added)."""
    return unsigned({"alg": "RS256", "typ": "JWT"}, claims, b"signature")


def encrypted_pem_with_chain() -> tuple[bytes, str]:
    """A client key encrypted with a password (returned) followed by its certificate and the
    certificate of the CA that signed it: what ``AZURE_CLIENT_CERTIFICATE_PASSWORD`` and
    ``AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`` apply to."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def cert(
        subject: str, issuer: str, key: rsa.RSAPrivateKey, signer: rsa.RSAPrivateKey
    ) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(signer, hashes.SHA256())
        )

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    password = "pem-password-1"
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode()),
    )
    for c in (cert("client", "ca", key, ca_key), cert("ca", "ca", ca_key, ca_key)):
        pem += c.public_bytes(serialization.Encoding.PEM)
    return pem, password
