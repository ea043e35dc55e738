"""Caller.from_headers and Caller.from_token at the edges (the capture stage's security review):
ambiguous or junk platform headers, bearer detection, user keys only from verified claims."""

from __future__ import annotations

import pytest

from entra_passthrough import Caller, UserKey


@pytest.mark.parametrize(
    ("name", "attr"),
    [(b"x-agent-user-id", "user_id"), (b"x-agent-foundry-call-id", "call_id")],
)
def test_a_duplicated_platform_header_is_ambiguous_and_ignored(name: bytes, attr: str) -> None:
    # x-agent-user-id keys delegated consent grants: when a client's own copy of the header
    # reaches the app beside the platform's, neither copy may win.
    for pair in ((b"victim", b"attacker"), (b"attacker", b"victim"), (b"same", b"same")):
        caller = Caller.from_headers([(name, pair[0]), (name.upper(), pair[1])])
        assert getattr(caller, attr) is None
    single = Caller.from_headers([(name, b"u-1")])
    assert getattr(single, attr) == "u-1"


@pytest.mark.parametrize("raw", [b"   ", b"\t", b"a\x00b", b"x" * 257])
def test_blank_or_junk_platform_values_are_none(raw: bytes) -> None:
    caller = Caller.from_headers([(b"x-agent-user-id", raw), (b"x-agent-foundry-call-id", raw)])
    assert caller.user_id is None
    assert caller.call_id is None
    assert UserKey.from_caller(caller) is None


@pytest.mark.parametrize(
    "value",
    [b"Bearer\teyJ.a.b", b"bearer\t\teyJ.a.b", b"BEARER\x0beyJ.a.b", b" Bearer\t eyJ.a.b"],
)
def test_a_bearer_with_other_whitespace_still_counts_as_presented(value: bytes) -> None:
    # A bearer the parser does not like must still be *presented*: otherwise user_or_app would
    # let the app identity stand in for a request that did carry a user's token.
    caller = Caller.from_headers([(b"authorization", value)])
    assert caller.presented


@pytest.mark.parametrize(
    "value",
    [
        b"Basic dXNlcjpwYXNz",
        b"Negotiate abc",
        b"NTLM abc",
        b"Digest a=b",
        b"ApiKey 0123456789abcdef",  # an API key, a signature: no user token either
        b"SharedKey acct:c2ln",
        b"Token 9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b",  # Django REST framework's API key
        b"token ghp_16C7e42F292c6912E7710c838347Ae178B4a",  # a GitHub personal access token
        b'OAuth oauth_consumer_key="k", oauth_signature="s%3D"',  # OAuth 1.0a
        b"",
        b"  ",
    ],
)
def test_schemes_that_carry_no_user_token_are_not_assertions(value: bytes) -> None:
    assert not Caller.from_headers([(b"authorization", value)]).presented


@pytest.mark.parametrize(
    "value",
    [
        b"Bearerx abc",
        b"eyJ.a.b",
        b"Bearer:eyJ.a.b",
        b"DPoP eyJ.a.b",
        b'"eyJhbGciOiJub25lIn0.e30.sig"',
        b"Token:eyJhbGciOiJub25lIn0.e30.sig",
        b"JWT=eyJhbGciOiJub25lIn0.e30.sig",
        b"access_token=eyJhbGciOiJub25lIn0.e30.sig",
    ],
)
def test_any_other_authorization_is_a_presented_malformed_bearer(value: bytes) -> None:
    # A token behind a malformed scheme is the user's all the same: never "no assertion"
    # (tests/capture/test_schemeless_bearer.py has the policy side, with real servers).
    caller = Caller.from_headers([(b"authorization", value)])
    assert caller.presented
    assert caller.claims is None
    assert caller.decode_error == "no token in the form 'Authorization: Bearer <token>'"


def test_user_key_never_comes_from_unverified_claims() -> None:
    # Anyone can mint an unsigned token naming a victim's tid/oid: a key built from it would
    # let a custom source's cache (docs: partition by UserKey.from_caller) serve the victim's
    # token.
    from _support.tokens import unsigned_jwt

    forged = Caller.from_token(unsigned_jwt(oid="victim-oid", tid="victim-tid"))
    assert forged.claims is not None
    assert forged.claims.oid == "victim-oid"  # still there for routing
    assert UserKey.from_caller(forged) is None
    with_platform = Caller.from_token(unsigned_jwt(oid="victim-oid", tid="t"), user_id="u-1")
    assert UserKey.from_caller(with_platform) == UserKey.for_platform_user("u-1")
    verified = Caller.from_token(unsigned_jwt(oid="x", tid="t"))
    verified.verified = {"tid": "t", "oid": "alice"}
    assert UserKey.from_caller(verified) == UserKey.for_entra_user("t", "alice")
