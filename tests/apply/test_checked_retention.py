"""The apply stage keeps no token alive: the header check is remembered on the result only."""

from __future__ import annotations

import gc
import sys
import time

import httpx2

from _support.tokens import unsigned_jwt
from entra_passthrough import EntraAuth, IdentityKind, TokenResult, bind_caller

from ._fakes import FakeChain

ORIGIN = "https://mcp.contoso.com"


def _client(auth: EntraAuth) -> httpx2.Client:
    return httpx2.Client(auth=auth, transport=httpx2.MockTransport(lambda r: httpx2.Response(200)))


class OneResult(FakeChain):
    """Hands out one given result (as a cache hit would: the same object every time)."""

    def __init__(self, result: TokenResult) -> None:
        super().__init__()
        self.result: TokenResult | None = result

    def _make(self, caller: object, claims: str | None) -> TokenResult:
        assert self.result is not None
        return self.result


def test_a_token_leaves_memory_with_its_result() -> None:
    token = "".join(["retained-", "x" * 1500])  # a str object of its own
    result = TokenResult(
        token=token, expires_on=time.time() + 3600, kind=IdentityKind.USER, source="fake"
    )
    chain = OneResult(result)
    auth = EntraAuth(chain, scopes=["api://mcp/.default"], origins=[ORIGIN])
    del result
    gc.collect()
    baseline = sys.getrefcount(token)
    with _client(auth) as client, bind_caller(token=unsigned_jwt(oid="u1", aud="agent")):
        for _ in range(5):
            sent = client.get(f"{ORIGIN}/mcp")
            assert sent.request.headers["authorization"] == "Bearer " + token
        del sent
    gc.collect()
    assert sys.getrefcount(token) == baseline  # the auth holds no reference of its own
    chain.result = None  # the cache drops the entry (evicted, or invalidated after a 401)
    gc.collect()
    assert sys.getrefcount(token) == baseline - 1  # only this test's own name is left


def test_the_check_runs_once_per_result_and_an_unsafe_token_is_never_sent() -> None:
    ok = TokenResult(
        token="good.token", expires_on=time.time() + 3600, kind=IdentityKind.USER, source="f"
    )
    auth = EntraAuth(OneResult(ok), scopes=["api://mcp/.default"], origins=[ORIGIN])
    with _client(auth) as client, bind_caller(token=unsigned_jwt(oid="u1", aud="agent")):
        assert client.get(f"{ORIGIN}/a").request.headers["authorization"] == "Bearer good.token"
        assert ok._header_safe  # remembered on the result itself
        assert client.get(f"{ORIGIN}/b").request.headers["authorization"] == "Bearer good.token"
    bad = TokenResult(
        token="bad\r\ntoken", expires_on=time.time() + 3600, kind=IdentityKind.USER, source="f"
    )
    auth = EntraAuth(
        OneResult(bad), scopes=["api://mcp/.default"], origins=[ORIGIN], on_error="record"
    )
    with _client(auth) as client, bind_caller(token=unsigned_jwt(oid="u1", aud="agent")):
        for _ in range(2):
            assert "authorization" not in client.get(f"{ORIGIN}/a").request.headers
    assert not bad._header_safe
