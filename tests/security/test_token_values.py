"""A token that cannot be sent in a header is refused where the source returns it, never cached.

A token containing CR/LF used to be cached, then refused on every request until it expired:
one bad answer locked the user out for the token's lifetime. Now the chain refuses it with a
typed error and the next request asks the source again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from entra_passthrough import (
    Caller,
    IdentityKind,
    TokenAcquisitionError,
    TokenChain,
    TokenRequest,
    TokenResult,
)

GOOD = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


class Scripted:
    """A TokenSource (the public protocol) answering from a script, counting its calls."""

    name = "scripted"
    kind = IdentityKind.USER

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.calls = 0

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        return ("user-1",)

    def _next(self) -> TokenResult:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return TokenResult(
            token=answer.get("token", GOOD),
            expires_on=answer.get("expires_on", time.time() + 3600),
            kind=IdentityKind.USER,
            source=self.name,
            headers=answer.get("headers", {}),
        )

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        return self._next()

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        return self._next()


BAD_VALUES: dict[str, dict[str, Any]] = {
    "crlf": {"token": GOOD + "\r\nX-Injected: 1"},
    "lf": {"token": GOOD + "\n"},
    "space": {"token": "abc def"},
    "nul": {"token": "abc\x00"},
    "non-ascii": {"token": "abc\u00e9"},
    "empty": {"token": ""},
    "nan-expiry": {"expires_on": float("nan")},
    "header-crlf": {"headers": {"x-ms-call-id": "a\r\nb"}},
    "header-name": {"headers": {"bad name": "v"}},
}


def _caller() -> Caller:
    return Caller.from_token("eyJhbGciOiJub25lIn0.eyJ0aWQiOiJ0In0.")


@pytest.mark.parametrize("bad", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_bad_value_is_typed_not_cached_and_the_next_call_reacquires(
    bad: dict[str, Any], mode: str
) -> None:
    source = Scripted([bad, {}])
    chain = TokenChain([source])

    def get() -> TokenResult:
        if mode == "async":
            return asyncio.run(chain.get_token_async(["api://x/.default"], caller=_caller()))
        return chain.get_token(["api://x/.default"], caller=_caller())

    with pytest.raises(TokenAcquisitionError) as info:
        get()
    assert "\r" not in str(info.value)
    assert "not cached" in str(info.value)
    assert source.calls == 1
    result = get()  # not locked out: the source is asked again
    assert result.token == GOOD
    assert source.calls == 2
    assert get().token == GOOD  # and the good one is cached
    assert source.calls == 2


def test_a_good_value_with_padding_and_headers_passes() -> None:
    source = Scripted([{"token": "abc/+_-.~==", "headers": {"x-ms-call-id": "a b\tc"}}])
    result = TokenChain([source]).get_token(["api://x/.default"], caller=_caller())
    assert result.token == "abc/+_-.~=="
