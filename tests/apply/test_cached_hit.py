"""At a cache hit the auth flow takes the token straight from the chain's cache (no
acquisition step, no coroutine); anything else still goes through the full acquisition."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx2
import pytest

from _support.tokens import unsigned_jwt
from entra_passthrough import (
    Caller,
    EntraAuth,
    IdentityKind,
    TokenChain,
    TokenRequest,
    TokenResult,
    bind_caller,
)

ORIGIN = "https://mcp.contoso.com"


class Source:
    name = "obo"
    kind = IdentityKind.USER

    def __init__(self) -> None:
        self.calls = 0

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        caller = request.caller
        return None if caller is None else (caller.assertion_sha256 or "-",)

    def get_token(self, request: TokenRequest) -> TokenResult:
        self.calls += 1
        return TokenResult(
            token=f"t{self.calls}",
            expires_on=time.time() + 3600,
            kind=IdentityKind.USER,
            source=self.name,
        )

    async def get_token_async(self, request: TokenRequest) -> TokenResult:
        return self.get_token(request)


class CountingChain(TokenChain):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquisitions = 0

    async def get_token_async(self, scopes: Sequence[str], **kwargs: Any) -> TokenResult:
        self.acquisitions += 1
        return await super().get_token_async(scopes, **kwargs)


async def test_hits_skip_the_acquisition_step_and_a_401_still_reacquires() -> None:
    source = Source()
    chain = CountingChain([source])
    auth = EntraAuth(chain, scopes=["api://mcp/.default"], origins=[ORIGIN])
    statuses = iter([200] * 10 + [401, 200])

    def answer(request: httpx2.Request) -> httpx2.Response:
        status = next(statuses)
        headers = {"www-authenticate": 'Bearer error="invalid_token"'} if status == 401 else {}
        return httpx2.Response(status, headers=headers)

    transport = httpx2.MockTransport(answer)
    async with httpx2.AsyncClient(auth=auth, transport=transport) as client:
        with bind_caller(Caller.from_token(unsigned_jwt(oid="u1", aud="agent"))):
            sent = [(await client.get(f"{ORIGIN}/mcp")).request for _ in range(10)]
            assert {r.headers["authorization"] for r in sent} == {"Bearer t1"}
            assert chain.acquisitions == 1  # the first (a miss); nine hits took the fast path
            retried = await client.get(f"{ORIGIN}/mcp")  # 401 invalid_token: drop, re-acquire
    assert retried.status_code == 200
    assert retried.request.headers["authorization"] == "Bearer t2"
    assert chain.acquisitions == 2
    assert source.calls == 2


class CountingSyncChain(TokenChain):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquisitions = 0

    def get_token(self, scopes: Sequence[str], **kwargs: Any) -> TokenResult:
        self.acquisitions += 1
        return super().get_token(scopes, **kwargs)


def test_sync_hits_skip_the_acquisition_step_and_a_met_claims_challenge_is_kept() -> None:
    source = Source()
    chain = CountingSyncChain([source])
    auth = EntraAuth(chain, scopes=["api://mcp/.default"], origins=[ORIGIN], on_error="record")
    statuses = iter([200] * 5 + [401, 200, 200])
    challenge = 'Bearer error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnt9fQ=="'

    def answer(request: httpx2.Request) -> httpx2.Response:
        status = next(statuses)
        return httpx2.Response(status, headers={"www-authenticate": challenge} if status else {})

    with (
        httpx2.Client(auth=auth, transport=httpx2.MockTransport(answer)) as client,
        bind_caller(Caller.from_token(unsigned_jwt(oid="u1", aud="agent"))),
    ):
        sent = [client.get(f"{ORIGIN}/mcp").request for _ in range(5)]
        assert {r.headers["authorization"] for r in sent} == {"Bearer t1"}
        assert chain.acquisitions == 1
        retried = client.get(f"{ORIGIN}/mcp")  # 401 with a claims challenge: one retry
        assert retried.status_code == 200
        assert retried.request.headers["authorization"] == "Bearer t2"
        # The claims were met with t2: the next plain request carries t2 (a cache hit), not a
        # token without the claims that the resource would refuse again.
        after = client.get(f"{ORIGIN}/mcp")
    assert chain.acquisitions == 2
    assert after.request.headers["authorization"] == "Bearer t2"
    assert source.calls == 2


class OwnChain:
    """A chain of the application's own: the protocol's methods and ``cached_token``, no
    ``hit_lookup`` (``TokenChain``'s bound form of it)."""

    def __init__(self) -> None:
        self._inner = TokenChain([Source()])
        self.acquisitions = 0
        self.lookups = 0

    async def get_token_async(self, scopes: Sequence[str], **kwargs: Any) -> TokenResult:
        self.acquisitions += 1
        return await self._inner.get_token_async(scopes, **kwargs)

    def get_token(self, scopes: Sequence[str], **kwargs: Any) -> TokenResult:
        self.acquisitions += 1
        return self._inner.get_token(scopes, **kwargs)

    def cached_token(self, scopes: Sequence[str], **kwargs: Any) -> TokenResult | None:
        self.lookups += 1
        return self._inner.cached_token(scopes, **kwargs)

    def invalidate(self, result: TokenResult) -> None:
        self._inner.invalidate(result)

    async def lifecycle_token_async(self, scopes: Sequence[str]) -> TokenResult | None:
        return None

    def lifecycle_token(self, scopes: Sequence[str]) -> TokenResult | None:
        return None


async def test_a_chain_with_cached_token_alone_takes_the_hit_path_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its hits skip the decision generator (``FlowCore.flow``) as ``TokenChain``'s do, and
    each user is served their own token. (With a tracer provider every request takes the full
    flow, for its span: the hygiene run configures one, so none is set here.)"""
    from entra_passthrough import _otel
    from entra_passthrough._flow import FlowCore

    monkeypatch.setattr(_otel, "tracing", lambda: False)

    full_flows = 0
    real_flow = FlowCore.flow

    def counting(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal full_flows
        full_flows += 1
        return real_flow(self, request, *args, **kwargs)

    monkeypatch.setattr(FlowCore, "flow", counting)
    chain = OwnChain()
    auth = EntraAuth(chain, scopes=["api://mcp/.default"], origins=[ORIGIN])
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200))
    async with httpx2.AsyncClient(auth=auth, transport=transport) as client:
        with bind_caller(Caller.from_token(unsigned_jwt(oid="u1", aud="agent"))):
            sent = [(await client.get(f"{ORIGIN}/mcp")).request for _ in range(5)]
        with bind_caller(Caller.from_token(unsigned_jwt(oid="u2", aud="agent"))):
            other = (await client.get(f"{ORIGIN}/mcp")).request
    assert {r.headers["authorization"] for r in sent} == {"Bearer t1"}
    assert other.headers["authorization"] == "Bearer t2"  # its own user's token
    assert chain.acquisitions == 2  # a miss per user
    assert full_flows == 2  # the misses; the four hits took the hot path
    assert chain.lookups >= 4
