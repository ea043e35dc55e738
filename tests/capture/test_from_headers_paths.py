"""``Caller.from_headers`` has a fast path for the usual single assertion header; it must decide
exactly as the general path does (which runs whenever more than one header name is configured).
The bearer parsing has a fast path too ("Bearer <token>"); the general split must agree."""

from __future__ import annotations

import itertools

import pytest

from entra_passthrough import Caller
from entra_passthrough._caller import _bearer
from entra_passthrough._www_auth import presents_token

TOKEN = b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.sig"

SCHEMES = [b"Bearer ", b"bearer ", b"BEARER ", b"Bearer\t", b"Bearer  ", b"Basic ", b"Bearer", b""]
TAILS = [TOKEN, b" " + TOKEN + b" ", TOKEN + b"\x85", b"\xa0" + TOKEN, b"", b"\x1c", b"caf\xe9"]

HEADER_SETS = [
    [],
    [(b"authorization", b"Bearer " + TOKEN)],
    [(b"Authorization", b"Bearer " + TOKEN), (b"x-agent-user-id", b"u1")],
    [(b"authorization", b"Bearer " + TOKEN), (b"AUTHORIZATION", b"Bearer " + TOKEN)],
    [(b"authorization", b"Basic dXNlcjpwdw==")],
    [(b"x-agent-user-id", b"u1"), (b"x-agent-user-id", b"u2")],
    [(b"x-agent-foundry-call-id", b"c1"), (b"authorization", b"Bearer ")],
    [(b"host", b"a"), (b"authorization", b"Bearer\t" + TOKEN)],
]


def _fields(caller: Caller) -> tuple[object, ...]:
    return (
        caller.assertion,
        dict(caller.assertions),
        caller.presented,
        caller.decode_error,
        caller.user_id,
        caller.call_id,
    )


@pytest.mark.parametrize("headers", HEADER_SETS)
def test_single_header_fast_path_matches_general_path(headers: list[tuple[bytes, bytes]]) -> None:
    fast = Caller.from_headers(headers)
    general = Caller.from_headers(headers, assertion_headers=("authorization", "x-never-sent"))
    assert _fields(fast) == _fields(general)


def test_bearer_fast_path_matches_general_split() -> None:
    def general(raw: bytes) -> str | None:
        value = raw.decode("latin-1").strip()
        if value[:7].lower() == "bearer ":  # RFC 6750 2.1: "Bearer" 1*SP token
            return value[7:].strip()
        parts = value.split(None, 1)
        if not parts:
            return None
        # a scheme that carries no user token is no assertion; any other value ("Bearer<TAB>
        # <token>", "Bearer" alone, the raw token) is a token presented in a malformed header
        # ("" : presented, unusable)
        return "" if presents_token(parts[0].lower(), value) else None

    checked = 0
    for scheme, tail in itertools.product(SCHEMES, TAILS):
        raw = scheme + tail
        assert _bearer("authorization", raw) == general(raw), raw
        checked += 1
    assert checked == len(SCHEMES) * len(TAILS)


@pytest.mark.parametrize(("scheme", "tail"), list(itertools.product(SCHEMES, TAILS)))
def test_the_reads_inline_bearer_matches_the_general_path(scheme: bytes, tail: bytes) -> None:
    """The one-header read decodes the usual ``Bearer `` value inline (and hashes its bytes):
    every scheme and tail above gives the fields, and the cache key, the general path gives."""
    headers = [(b"authorization", scheme + tail)]
    fast = Caller.from_headers(headers)
    general = Caller.from_headers(headers, assertion_headers=("authorization", "x-never-sent"))
    fast.read_headers()
    assert _fields(fast) == _fields(general)
    assert fast.assertion_sha256 == general.assertion_sha256
