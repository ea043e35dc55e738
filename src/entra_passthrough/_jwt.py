"""Unverified JWT decoding for routing decisions, and safe fingerprints of secrets.

Nothing here verifies a signature: claims decoded here are used to *route* (which tenant, is the
audience right, has it expired) and never as a trusted identity. Verification is in ``_verify``.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Bearer tokens larger than this are not decoded (Entra tokens are a few KiB; headers are
#: bounded by servers at 8-16 KiB anyway).
MAX_TOKEN_BYTES = 16 * 1024

_ROUTING_CLAIMS = (
    "iss",
    "ver",
    "aud",
    "tid",
    "oid",
    "sub",
    "upn",
    "preferred_username",
    "azp",
    "appid",
    "scp",
    "roles",
    "exp",
    "nbf",
    "idtyp",
    "name",
)


#: Bounds on what a decoded segment may hold. Entra's claims are shallow objects of short
#: strings and epoch-second numbers; anything beyond these bounds is refused as not a JWT, so no
#: caller of ``decode_unverified`` meets a number ``float()`` cannot hold (``OverflowError``), an
#: integer Python refuses to parse (``ValueError``, over 4300 digits), NaN/Infinity (which
#: compare false with everything, e.g. an expiry check), or nesting that exhausts the stack.
MAX_INT_DIGITS = 20
MAX_DEPTH = 16
#: The time claims must be epoch seconds a ``datetime`` can hold (up to the year 9999).
TIME_CLAIMS = ("exp", "nbf", "iat")
MAX_TIMESTAMP = 253402300799.0


class JwtDecodeError(ValueError):
    """The value is not a decodable JWT. The message never contains the value."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JwtDecodeError(f"a number has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > 64:
        raise JwtDecodeError("a number is longer than 64 characters")
    value = float(text)
    if not math.isfinite(value):  # "1e999" parses to inf
        raise JwtDecodeError("a number is not finite")
    return value


def _parse_constant(text: str) -> Any:
    raise JwtDecodeError("NaN/Infinity are not JSON numbers")


#: One decoder for every segment: ``json.loads`` with hooks builds a new decoder (and scanner)
#: per call, a third of a small segment's decode.
_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
)


def _loads(data: bytes) -> Any:
    """Strict, bounded JSON: numbers within range, no NaN/Infinity, nesting within MAX_DEPTH."""
    try:
        # RFC 7515: the segments are UTF-8 (no UTF-16/32 guessing, no byte order mark)
        value = _DECODER.decode(data.decode("utf-8"))
    except JwtDecodeError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError, OverflowError) as exc:
        # JSONDecodeError is a ValueError
        raise JwtDecodeError("a segment is not JSON") from exc
    if data.count(b"{") + data.count(b"[") < MAX_DEPTH:
        return value  # fewer openers than the bound: it cannot nest deeper (the usual token)
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise JwtDecodeError(f"a segment nests deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return value


def check_time_claims(payload: Mapping[str, Any]) -> None:
    """Each present time claim is a number of epoch seconds in [0, year 9999]."""
    for name in TIME_CLAIMS:
        if name not in payload:
            continue
        value = payload[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= MAX_TIMESTAMP
        ):
            raise JwtDecodeError(f"the {name!r} claim is not a time in epoch seconds")


def _utf8(secret: str) -> bytes:
    # surrogatepass: a str can hold lone surrogates (json.loads accepts "\\ud800"); a plain
    # encode() would raise UnicodeEncodeError, whose ``.object`` is the whole secret.
    return secret.encode("utf-8", "surrogatepass")


def fingerprint(secret: str | bytes) -> str:
    """A short, non-reversible tag for a token or secret, safe for logs and reprs."""
    data = _utf8(secret) if isinstance(secret, str) else secret
    return "sha256:" + hashlib.sha256(data).hexdigest()[:12]


#: An empty sha256 that ``sha256_hex`` copies: ``hashlib.sha256()`` looks the digest up in
#: OpenSSL 3 on every call, and a copy does not (~0.3 us of the ~2 us a 1.2 KB assertion
#: costs through a client, measured). ``copy()`` only reads the original: safe from any thread.
_SHA256_EMPTY = hashlib.sha256()


def sha256_hex(secret: str) -> str:
    # ``_utf8`` inlined: once per new caller that calls out (the cache key)
    return sha256_hex_of(secret.encode("utf-8", "surrogatepass"))


def sha256_hex_of(data: bytes) -> str:
    """``sha256_hex`` of a str whose UTF-8 is ``data``."""
    digest = _SHA256_EMPTY.copy()
    digest.update(data)
    return digest.hexdigest()


#: A JWS signature segment (never verified here, but a bearer whose signature is no base64url is
#: no token Entra issued, and Entra refuses it as malformed).
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]*")


#: base64url to base64 for ``binascii``'s strict decoder, which then refuses anything outside
#: the base64url alphabet: '+' and '/' (base64, not base64url: Entra refuses it, AADSTS50027)
#: and '=' (JWS segments carry no padding) are mapped to '!', which it refuses like a space,
#: a tab, '*' or '~'. The lenient decoder skipped those, so a segment with one inserted decoded
#: as the clean token.
_TO_BASE64 = bytes.maketrans(b"-_+/=", b"+/!!!")
#: The padding for a segment's length modulo 4 (one character more than a multiple of 4 is no
#: base64 at all: refused, padded or not).
_PADDING = (b"", b"===", b"==", b"=")


def _b64url_decode(segment: str) -> bytes:
    try:
        data = segment.encode("ascii").translate(_TO_BASE64)
        return binascii.a2b_base64(data + _PADDING[len(data) % 4], strict_mode=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise JwtDecodeError("a segment is not base64url") from exc


def decode_unverified(token: str) -> dict[str, Any]:
    """Decode a JWT's payload without verifying it. Raises ``JwtDecodeError``."""
    if len(token) > MAX_TOKEN_BYTES:
        raise JwtDecodeError("token larger than 16 KiB")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtDecodeError("not three dot-separated segments")
    if not _SIGNATURE.fullmatch(parts[2]):
        raise JwtDecodeError("the signature segment is not base64url")
    header = _loads(_b64url_decode(parts[0]))
    payload = _loads(_b64url_decode(parts[1]))
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise JwtDecodeError("header or payload is not a JSON object")
    check_time_claims(payload)
    return payload


def _text_claim(value: Any) -> str | None:
    return value if isinstance(value, str) and len(value) <= 1024 else None


def _number_claim(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class UnverifiedClaims:
    """The routing claims of a token, *not verified*. Never trust them as identity."""

    iss: str | None = None
    ver: str | None = None
    aud: str | None = None
    tid: str | None = None
    oid: str | None = None
    sub: str | None = None
    upn: str | None = None
    azp: str | None = None
    scp: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    exp: float | None = None
    nbf: float | None = None
    idtyp: str | None = None
    name: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_app_only(self) -> bool:
        """An app-only token: delegated tokens always carry ``scp``; ``idtyp`` is optional in
        Entra tokens, so it can confirm a user token but the decision never rests on it alone."""
        return not self.scp and self.idtyp != "user"

    @property
    def is_id_token(self) -> bool:
        """An ID token (a sign-in's ``id_token``), not an access token: every Entra access
        token names its client (``azp`` in v2, ``appid`` in v1), an app's as well as a user's,
        and a delegated one its scopes; an ID token has neither (it may carry the user's
        ``roles``, and no ``name`` when the sign-in asked for ``openid`` alone)."""
        return not self.scp and self.azp is None and self.idtyp != "app"

    @classmethod
    def from_token(cls, token: str) -> UnverifiedClaims:
        return cls.from_payload(decode_unverified(token))

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> UnverifiedClaims:
        """Raises ``JwtDecodeError`` for a time claim that is not epoch seconds in range."""
        check_time_claims(payload)
        text = _text_claim
        number = _number_claim
        get = payload.get
        aud = get("aud")
        if isinstance(aud, list):  # RFC 7519 allows a list; Entra sends a string
            aud = aud[0] if len(aud) == 1 and isinstance(aud[0], str) else None
        scp = text(get("scp"))
        roles = get("roles")
        return cls(
            iss=text(get("iss")),
            ver=text(get("ver")),
            aud=aud if isinstance(aud, str) else None,
            tid=text(get("tid")),
            oid=text(get("oid")),
            sub=text(get("sub")),
            upn=text(get("upn")) or text(get("preferred_username")) or text(get("unique_name")),
            azp=text(get("azp")) or text(get("appid")),
            scp=tuple(scp.split()) if scp else (),
            roles=tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else (),
            exp=number(get("exp")),
            nbf=number(get("nbf")),
            idtyp=text(get("idtyp")),
            name=text(get("name")),
            raw={k: payload[k] for k in _ROUTING_CLAIMS if k in payload},
        )
