"""A bearer token over the 16 KiB bound is refused unread (fail closed, nothing sent), and the
reason says its size: it said "no token in the form 'Authorization: Bearer <token>'", which
sent the operator looking at the header's shape (a token with hundreds of group claims is
well formed and only too large)."""

from __future__ import annotations

import pytest

from _support.tokens import unsigned_jwt
from entra_passthrough import Caller
from entra_passthrough._jwt import MAX_TOKEN_BYTES


def _big_token() -> str:
    groups = [f"{index:08d}-0000-0000-0000-000000000000" for index in range(600)]
    token = unsigned_jwt(aud="api://agent", groups=groups)
    assert len(token) > MAX_TOKEN_BYTES + 16
    return token


@pytest.mark.parametrize("headers", ["one", "two"], ids=["authorization", "with-another-header"])
def test_an_oversized_token_is_refused_saying_its_size(headers: str) -> None:
    token = _big_token()
    raw = [(b"authorization", f"Bearer {token}".encode())]
    if headers == "two":
        caller = Caller.from_headers(raw, assertion_headers=("authorization", "x-user-token"))
    else:
        caller = Caller.from_headers(raw)
    assert caller.presented
    assert caller.assertion == ""
    assert caller.claims is None
    assert caller.decode_error is not None
    assert "larger than 16 KiB" in caller.decode_error
    assert "in the form" not in caller.decode_error


def test_a_token_within_the_bound_is_read() -> None:
    token = unsigned_jwt(aud="api://agent")
    caller = Caller.from_headers([(b"authorization", f"Bearer {token}".encode())])
    assert caller.assertion == token
    assert caller.decode_error is None
