"""WWW-Authenticate parsing (client side) and building (server side)."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from entra_passthrough._challenge import (
    bearer_challenge,
    decode_claims,
    parse_bearer_challenges,
)

CLAIMS = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'
B64 = base64.b64encode(CLAIMS.encode()).decode()


def test_entra_cae_challenge() -> None:
    value = (
        'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/'
        f'authorize", client_id="00000003-0000-0000-c000-000000000000", '
        f'error="insufficient_claims", claims="{B64}"'
    )
    challenge = parse_bearer_challenges([value])
    assert challenge is not None
    assert challenge.error == "insufficient_claims"
    assert challenge.claims == CLAIMS
    assert challenge.retryable


def test_several_schemes_and_headers() -> None:
    assert parse_bearer_challenges(['Basic realm="x"']) is None
    found = parse_bearer_challenges(['Negotiate abc==, Bearer error="invalid_token"'])
    assert found is not None
    assert found.error == "invalid_token"
    found = parse_bearer_challenges(['Basic realm="a"', "Bearer error=invalid_token"])
    assert found is not None
    assert found.retryable
    found = parse_bearer_challenges(['Bearer error="insufficient_scope", scope="a b"'])
    assert found is not None
    assert not found.retryable


def test_claims_decoding() -> None:
    assert decode_claims(B64) == CLAIMS
    assert decode_claims(B64.rstrip("=")) == CLAIMS  # unpadded
    assert decode_claims(base64.urlsafe_b64encode(CLAIMS.encode()).decode()) == CLAIMS
    assert decode_claims(CLAIMS) == CLAIMS  # raw JSON, as some resources send
    assert decode_claims("not base64!") is None
    assert decode_claims(base64.b64encode(b"[1, 2]").decode()) is None  # not an object
    assert decode_claims("x" * 10000) is None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(max_size=300), max_size=4))
def test_parser_never_raises(values: list[str]) -> None:
    found = parse_bearer_challenges(values)
    assert found is None or isinstance(found.retryable, bool)


@given(st.text(max_size=100), st.text(max_size=100))
def test_built_challenges_cannot_inject(realm: str, description: str) -> None:
    value = bearer_challenge(realm=realm, error="invalid_token", error_description=description)
    assert "\r" not in value
    assert "\n" not in value
    assert value.isascii()
    parsed = parse_bearer_challenges([value])
    assert parsed is not None
    assert parsed.error == "invalid_token"
