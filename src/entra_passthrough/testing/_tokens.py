"""Signing keys (with rotation) and the claims of the tokens Entra issues.

Claims follow https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference
(v1 vs v2, delegated vs app-only) and https://learn.microsoft.com/entra/identity-platform/
id-token-claims-reference. Headers carry ``kid`` (the certificate's SHA-1 thumbprint); v1 tokens
also carry ``x5t`` with the same value ("a legacy claim emitted only in v1.0 access tokens",
access-token-claims-reference, "Header claims"). The v1 issuer ``https://sts.windows.net/{tid}/``
is emulated as ``{url}/{tid}/`` (docs/emulator.md, "Known differences").
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import Certificate

from . import _ca


@dataclass(frozen=True)
class SigningKey:
    key: rsa.RSAPrivateKey = field(repr=False)
    cert: Certificate = field(repr=False)
    kid: str

    def jwk(self, issuer: str | None = None) -> dict[str, Any]:
        nums = self.key.public_key().public_numbers()

        def b64int(n: int) -> str:
            return _ca.b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

        der = base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()
        out: dict[str, Any] = {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": b64int(nums.n),
            "e": b64int(nums.e),
            "x5c": [der],
        }
        if issuer:
            out["issuer"] = issuer
        return out


def new_signing_key() -> SigningKey:
    key = _ca.new_rsa_key()
    cert = _ca.self_signed(key, "entra-passthrough emulator token signing")
    return SigningKey(key=key, cert=cert, kid=_ca.x5t(cert))


class KeyRing:
    """Signing keys as Entra rolls them over: the JWKS always publishes the *next* key before
    anything is signed with it (https://learn.microsoft.com/entra/identity-platform/
    signing-key-rollover), so a verifier that cached the key set needs no refetch at a
    rollover. Published order: the current key, the next key, then previous keys until
    retired."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current = new_signing_key()
        #: made when first published or used (``_published_next``): an RSA key costs ~50 ms of
        #: CPU, and an emulator whose keys nobody fetches never needs it
        self._next_key: SigningKey | None = None
        self._previous: list[SigningKey] = []

    def _published_next(self) -> SigningKey:
        """The next key, made on first need (call with ``_lock`` held)."""
        if self._next_key is None:
            self._next_key = new_signing_key()
        return self._next_key

    @property
    def current(self) -> SigningKey:
        with self._lock:
            return self._current

    @property
    def next(self) -> SigningKey:
        """Published, not yet signing."""
        with self._lock:
            return self._published_next()

    @property
    def published(self) -> tuple[SigningKey, ...]:
        with self._lock:
            return (self._current, self._published_next(), *self._previous)

    def rotate(self, *, retire_old: bool = False) -> SigningKey:
        """``retire_old=False``: sign with the key published as next (already in every JWKS
        fetched since), publish a new next key and keep the old one published.
        ``retire_old=True``: stop publishing previous keys (no new key). Returns the current
        signing key."""
        with self._lock:
            if retire_old:
                self._previous = []
            else:
                self._previous.insert(0, self._current)
                self._current = self._published_next()
                self._next_key = None  # a new next key, made when first published
            return self._current

    def find(self, kid: str) -> SigningKey | None:
        with self._lock:
            # A next key not made yet signed nothing and was never published.
            keys = (self._current, self._next_key, *self._previous)
        return next((k for k in keys if k is not None and k.kid == kid), None)


def sign(ring: KeyRing, claims: Mapping[str, Any]) -> str:
    key = ring.current
    headers = {"kid": key.kid}
    if claims.get("ver") == "1.0":
        # x5t is "emitted only in v1.0 access tokens" (access-token-claims-reference).
        headers["x5t"] = key.kid
    return jwt.encode(dict(claims), key.key, algorithm="RS256", headers=headers)


def verify(ring: KeyRing, token: str) -> dict[str, Any]:
    """Signature only (callers check iss/aud/exp with Entra's own error codes)."""
    header = jwt.get_unverified_header(token)
    key = ring.find(str(header.get("kid", "")))
    if key is None:
        raise jwt.InvalidSignatureError("unknown kid")
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key.public_key(),
        algorithms=["RS256"],
        # No time claim checked here: the token endpoint checks nbf (with Entra's clock skew)
        # and exp with Entra's own codes. PyJWT's iat check refused an assertion from an issuer
        # whose clock runs ahead, as a signature failure that Entra does not give.
        options={
            "verify_aud": False,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
        },
    )
    return claims


#: What ``numeric_claim`` gives an ``nbf``/``iat`` that is not a finite number: never reached,
#: so that the "not yet valid" check refuses it (as an ``exp`` of 0 is refused as expired).
NOT_A_TIME = 2**53


def numeric_claim(claims: Mapping[str, Any], name: str, *, bad: int = 0) -> int:
    """A NumericDate claim: 0 when absent; ``bad`` when present but not a finite number (0, the
    default, fails an ``exp`` check; pass ``NOT_A_TIME`` for ``nbf``/``iat``). A non-finite
    number (``Infinity``, ``NaN``: Python's JSON reads both) is refused like any other bad
    value, never an ``int()`` crash (HTTP 500)."""
    if name not in claims:
        return 0
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return bad
    return int(value)


def opaque(n: int = 16) -> str:
    return secrets.token_urlsafe(n)


#: Marks an ``aio`` (Entra's opaque session claim) whose sign-in performed MFA. v2 access
#: tokens carry no ``amr``; in Entra the session's MFA travels in opaque claims, so an OBO
#: assertion from a stepped-up sign-in satisfies the MFA policy. ``!`` never occurs in
#: ``opaque()`` (URL-safe base64), so an ordinary ``aio`` never carries the mark.
MFA_AIO_MARK = "!m"


def session_aio(amr: Sequence[str]) -> str:
    """An ``aio`` value: opaque, with ``MFA_AIO_MARK`` when ``amr`` has ``mfa``."""
    return opaque(24) + (MFA_AIO_MARK if "mfa" in amr else "")


def performed_mfa(claims: Mapping[str, Any]) -> bool:
    """Whether a (signature-verified) token's sign-in performed MFA: ``amr`` (v1, ID tokens) or
    the emulator's ``aio`` mark (v2 access tokens)."""
    amr = claims.get("amr")
    if isinstance(amr, list) and "mfa" in amr:
        return True
    aio = claims.get("aio")
    return isinstance(aio, str) and aio.endswith(MFA_AIO_MARK)


def pairwise_sub(oid: str, client_id: str) -> str:
    """``sub`` is pairwise: unique per user per application (access-token-claims-reference)."""
    return _ca.b64url(hashlib.sha256(f"{oid}|{client_id}".encode()).digest())


def client_info(oid: str, tid: str) -> str:
    """MSAL parses ``client_info`` (base64url JSON with uid/utid) to build its account ids."""
    return _ca.b64url(json.dumps({"uid": oid, "utid": tid}).encode())


@dataclass(frozen=True)
class Subject:
    """Who a token is about: a user (delegated) or an app/managed identity (app-only)."""

    oid: str
    tid: str
    upn: str | None = None
    name: str | None = None
    home_tid: str | None = None  # a guest's home tenant: adds `idp`, `acct` = 1
    amr: tuple[str, ...] = ("pwd",)


def access_token_claims(
    *,
    issuer: str,
    version: int,
    audience: str,
    client_id: str,
    client_acr: str,
    subject: Subject,
    scopes: Sequence[str] = (),
    roles: Sequence[str] = (),
    app_only: bool,
    lifetime: int,
    optional_claims: Sequence[str] = (),
    home_issuer: str | None = None,
    now: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    now = int(time.time()) if now is None else now
    c: dict[str, Any] = {
        "aud": audience,
        "iss": issuer,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "aio": opaque(24) if app_only else session_aio(subject.amr),
        "oid": subject.oid,
        "rh": "0." + opaque(24),
        "sub": subject.oid if app_only else pairwise_sub(subject.oid, client_id),
        "tid": subject.tid,
        "uti": opaque(16),
        "ver": "2.0" if version == 2 else "1.0",
    }
    if version == 2:
        c["azp"], c["azpacr"] = client_id, client_acr
    else:
        c["appid"], c["appidacr"] = client_id, client_acr
    if app_only:
        if roles:
            c["roles"] = list(roles)
        if "idtyp" in optional_claims:
            c["idtyp"] = "app"
    else:
        c["scp"] = " ".join(scopes)
        c["name"] = subject.name
        if version == 2:
            c["preferred_username"] = subject.upn
        else:
            c["unique_name"] = subject.upn
            c["upn"] = subject.upn
            c["amr"] = list(subject.amr)
            c["acr"] = "1"
        if roles:
            c["roles"] = list(roles)
        if "idtyp" in optional_claims:
            c["idtyp"] = "user"
        if subject.home_tid and subject.home_tid != subject.tid and home_issuer:
            c["idp"] = home_issuer
            c["acct"] = 1
    if extra:
        c.update(extra)
    return c


def id_token_claims(
    *, issuer: str, client_id: str, subject: Subject, nonce: str | None, lifetime: int = 3600
) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {
        "aud": client_id,
        "iss": issuer,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "aio": opaque(24),
        "name": subject.name,
        "oid": subject.oid,
        "preferred_username": subject.upn,
        "rh": "0." + opaque(24),
        "sub": pairwise_sub(subject.oid, client_id),
        "tid": subject.tid,
        "uti": opaque(16),
        "ver": "2.0",
    }
    if nonce:
        c["nonce"] = nonce
    return c
