"""A fake TokenChain (the TokenChain contract, in memory) and callers with unsigned tokens."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from _support.tokens import unsigned_jwt
from entra_passthrough import Caller, IdentityKind, TokenResult


def user_caller(oid: str) -> Caller:
    return Caller.from_token(unsigned_jwt(oid=oid, tid="contoso", aud="agent"))


@dataclass
class FakeChain:
    """Hands out ``user-<oid>-<n>`` tokens for active callers, a lifecycle token if set."""

    lifecycle: TokenResult | None = None
    error: Exception | None = None
    headers: dict[str, str] = field(default_factory=dict)
    token_override: str | None = None
    calls: list[tuple[str | None, str | None]] = field(default_factory=list)
    lifecycle_calls: int = 0
    invalidated: list[TokenResult] = field(default_factory=list)

    def _make(self, caller: Caller | None, claims: str | None) -> TokenResult:
        oid = caller.claims.oid if caller is not None and caller.claims is not None else None
        self.calls.append((oid, claims))
        if self.error is not None:
            raise self.error
        token = self.token_override or f"user-{oid}-{len(self.calls)}"
        return TokenResult(
            token=token,
            expires_on=time.time() + 3600,
            kind=IdentityKind.USER,
            source="fake-obo",
            headers=dict(self.headers),
        )

    def get_token(
        self,
        scopes: Sequence[str],
        *,
        caller: Caller | None,
        claims: str | None = None,
        client_capabilities: Sequence[str] = (),
    ) -> TokenResult:
        assert caller is not None
        assert caller.active
        return self._make(caller, claims)

    async def get_token_async(
        self,
        scopes: Sequence[str],
        *,
        caller: Caller | None,
        claims: str | None = None,
        client_capabilities: Sequence[str] = (),
    ) -> TokenResult:
        assert caller is not None
        assert caller.active
        return self._make(caller, claims)

    def invalidate(self, result: TokenResult) -> None:
        self.invalidated.append(result)

    def lifecycle_token(self, scopes: Sequence[str]) -> TokenResult | None:
        self.lifecycle_calls += 1
        return self.lifecycle

    async def lifecycle_token_async(self, scopes: Sequence[str]) -> TokenResult | None:
        return self.lifecycle_token(scopes)


def app_result(token: str = "app-token") -> TokenResult:
    return TokenResult(
        token=token, expires_on=time.time() + 3600, kind=IdentityKind.APP, source="fake-mi"
    )
