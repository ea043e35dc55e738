"""``WWW-Authenticate: Bearer`` challenges: read them (client side) and write them (server side).

Client side, only two answers matter to ``EntraAuth``: an Entra claims challenge (CAE,
conditional access: ``error="insufficient_claims", claims="<base64 JSON>"``) and
``error="invalid_token"``. Both mean "drop this token and get another one, once".
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

_MAX_HEADER = 16 * 1024
# auth-param = token BWS "=" BWS ( token / quoted-string )   (RFC 9110 section 11.2)
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")
_EQUALS = re.compile(r"[ \t]*=(?!=)[ \t]*")
_VALUE = re.compile(r'"(?:[^"\\]|\\.)*"|[^\s,"]+')
_TOKEN68 = re.compile(r"[ \t]+[A-Za-z0-9\-._~+/]+=*(?=[ \t]*(?:,|$))")
_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


@dataclass(frozen=True, slots=True)
class BearerChallenge:
    """The parameters of a ``Bearer`` challenge. ``claims`` is already base64-decoded JSON."""

    error: str | None = None
    claims: str | None = None

    @property
    def retryable(self) -> bool:
        return self.claims is not None or self.error == "invalid_token"


def bearer_parameters(values: Iterable[str]) -> dict[str, str] | None:
    """The parameters (names lower-cased, values unquoted) of the first ``Bearer`` challenge in
    these ``WWW-Authenticate`` values, or ``None``. Never raises; bounded as below."""
    for value in values:
        if not isinstance(value, str) or len(value) > _MAX_HEADER:
            continue
        for scheme, params in _challenges(value):
            if scheme.lower() == "bearer":
                return params
    return None


def parse_bearer_challenges(values: Iterable[str]) -> BearerChallenge | None:
    """The first ``Bearer`` challenge in these ``WWW-Authenticate`` values, or ``None``.

    Never raises: a value that is too large or not understood is ignored. A ``claims``
    parameter that is not base64 of a JSON object is dropped (no retry on garbage).
    """
    params = bearer_parameters(values)
    if params is None:
        return None
    claims = decode_claims(params["claims"]) if "claims" in params else None
    return BearerChallenge(error=params.get("error"), claims=claims)


def _challenges(value: str) -> list[tuple[str, dict[str, str]]]:
    """Split ``Scheme a=b, c="d", Other e=f`` into challenges (RFC 9110 section 11.6.1).

    A bare token starts a new challenge; ``name=value`` pairs belong to the current one.
    Each step consumes input, so the loop is bounded by the header's length.
    """
    found: list[tuple[str, dict[str, str]]] = []
    pos, n = 0, len(value)
    while pos < n:
        while pos < n and value[pos] in " \t,":
            pos += 1
        m = _TOKEN.match(value, pos)
        if m is None:
            break  # junk: stop here, keep what was understood
        name, pos = m.group(), m.end()
        eq = _EQUALS.match(value, pos)
        if eq is not None and found:
            q = _VALUE.match(value, eq.end())
            if q is None:
                break
            pos = q.end()
            found[-1][1].setdefault(name.lower(), _unquote(q.group()))
        elif eq is not None:
            break  # a parameter before any scheme
        else:
            found.append((name, {}))
            t68 = _TOKEN68.match(value, pos)  # "Negotiate abc==": skip the token68
            if t68 is not None and not _EQUALS.match(value, t68.end()):
                pos = t68.end()
    return found


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    return raw


def decode_claims(value: str) -> str | None:
    """Decode a challenge's base64 ``claims`` to JSON text; ``None`` if it is not valid."""
    text = value.strip()
    if not text or len(text) > 8192:
        return None
    if text.startswith("{"):
        decoded = text  # some resources send the JSON itself; accept it if it parses
    else:
        padded = text + "=" * (-len(text) % 4)
        try:
            raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
            decoded = raw.decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return None
    try:
        parsed = json.loads(decoded)
    except (ValueError, RecursionError):
        return None
    return decoded if isinstance(parsed, dict) else None


def bearer_challenge(
    *,
    realm: str | None = None,
    resource_metadata: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
    scope: str | None = None,
    claims: str | None = None,
) -> str:
    """Build a ``WWW-Authenticate`` value (RFC 6750 section 3, RFC 9728 section 5.1).

    Values are cleaned of quotes, backslashes and non-printable characters so that nothing
    taken from a request can inject a header. ``claims`` is a claims challenge already in
    base64 (``encode_claims``): kept whole (a cut challenge asks for nothing).
    """
    parts: list[str] = []
    for name, value in (
        ("realm", realm),
        ("resource_metadata", resource_metadata),
        ("error", error),
        ("error_description", error_description),
        ("scope", scope),
    ):
        if value:
            parts.append(f'{name}="{_UNSAFE.sub("", value)[:300]}"')
    if claims:
        parts.append(f'claims="{_UNSAFE.sub("", claims)}"')
    return "Bearer " + ", ".join(parts) if parts else "Bearer"


def encode_claims(claims: str) -> str | None:
    """A claims challenge (JSON text, as Entra's ``claims``) as a ``WWW-Authenticate`` carries
    it: standard base64 (what MSAL's ``claims_challenge`` clients decode); ``None`` when it is
    not a JSON object of at most 8 KB (``decode_claims``' bound), which no client could use."""
    raw = claims.encode("utf-8")
    if len(raw) > 6144 or decode_claims(claims) is None:  # base64 of 6144 bytes: 8192 chars
        return None
    return base64.b64encode(raw).decode("ascii")
