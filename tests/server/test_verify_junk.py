"""Junk input never crashes the verifier: it always gets a typed TokenVerificationError."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from _support.tokens import API, TENANT, Issuer, unsigned
from _support.tokens import b64url as _seg
from entra_passthrough import JwtVerifier, TokenVerificationError, VerifiedToken

_ISSUER = Issuer()


def _verifier() -> JwtVerifier:
    return JwtVerifier(audiences=[API], tenants=[TENANT], sync_http_client=_ISSUER.sync_client())


VERIFIER = _verifier()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)

junk_tokens = st.one_of(
    st.text(max_size=200),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.=+/", max_size=300),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
    st.tuples(st.binary(max_size=60), st.binary(max_size=60), st.binary(max_size=60)).map(
        lambda t: ".".join(_seg(x) for x in t)
    ),
    st.tuples(
        st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "jku"]), json_values),
        st.dictionaries(
            st.sampled_from(["aud", "iss", "tid", "exp", "nbf", "iat", "ver", "scp", "oid"]),
            json_values,
        ),
    ).map(lambda hp: unsigned(hp[0], hp[1])),
    st.tuples(json_values, json_values).map(
        lambda hp: ".".join(
            [_seg(json.dumps(hp[0]).encode()), _seg(json.dumps(hp[1]).encode()), "sig"]
        )
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk_tokens)
def test_junk_gets_a_typed_error(token: str) -> None:
    with pytest.raises(TokenVerificationError):
        VERIFIER.verify(token)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_signed_junk_claims_get_a_typed_error(extra: dict[str, object]) -> None:
    # correctly signed, but arbitrary claim values mixed in: typed error or a valid token
    claims = {
        k: v for k, v in extra.items() if k not in ("version", "tenant", "headers", "key_index")
    }
    try:
        token = _ISSUER.token(**claims)
    except (TypeError, ValueError):  # PyJWT refuses to *encode* some junk (e.g. a list iss)
        assume(False)
    outcome: object
    try:
        outcome = VERIFIER.verify(token)
    except TokenVerificationError as exc:
        outcome = exc
    if isinstance(outcome, TokenVerificationError):
        assert token not in str(outcome)
    else:
        assert isinstance(outcome, VerifiedToken)
        assert isinstance(outcome.oid, str)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a" * 100_000,
        "a.b.c" + "." * 10,
        "Bearer x.y.z",
        "\x00\x01.\x02.\x03",
        "eyJhbGciOiJSUzI1NiJ9.e30.",
        "eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ.bm90IGpzb24.c2ln",
        "é.é.é",
    ],
)
async def test_junk_async(token: str) -> None:
    verifier = JwtVerifier(audiences=[API], tenants=[TENANT], http_client=_ISSUER.async_client())
    with pytest.raises(TokenVerificationError):
        await verifier.verify_async(token)


async def test_non_string_input() -> None:
    with pytest.raises(TokenVerificationError):
        await VERIFIER.verify_async(None)  # type: ignore[arg-type]
