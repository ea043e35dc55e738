"""A tiny fake TokenSource for pure chain/policy/cache unit tests (no Entra involved)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from _support.tokens import unsigned_jwt
from entra_passthrough import IdentityKind, TokenRequest, TokenResult
from entra_passthrough._errors import TokenAcquisitionError


def make_jwt(**claims: Any) -> str:
    """An unsigned user token of tenant t1, user u1 (the claims given override)."""
    return unsigned_jwt(**{"tid": "t1", "oid": "u1", **claims})


class FakeSource:
    """Counts calls; answers per its mode. ``needs_caller``: applies only with a presented
    assertion (like OBO)."""

    def __init__(
        self,
        name: str,
        kind: IdentityKind,
        *,
        needs_caller: bool = False,
        error: TokenAcquisitionError | None = None,
        lifetime: float = 3600.0,
        delay: float = 0.0,
        returns_none: bool = False,
    ) -> None:
        self.name = name
        self.kind = kind
        self.needs_caller = needs_caller
        self.error = error
        self.lifetime = lifetime
        self.delay = delay
        self.returns_none = returns_none
        self.calls = 0
        self._lock = threading.Lock()
        self.gate: asyncio.Event | None = None

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        if self.needs_caller:
            caller = request.caller
            if caller is None or not caller.presented:
                return None
            return (caller.assertion_sha256 or "-",)
        return ("fixed",)

    def _answer(self, request: TokenRequest) -> TokenResult | None:
        with self._lock:
            self.calls += 1
            n = self.calls
        if self.error is not None:
            raise self.error
        if self.returns_none:
            return None
        who = request.caller.claims.oid if request.caller and request.caller.claims else "app"
        return TokenResult(
            token=f"{self.name}-token-{who}-{n}",
            expires_on=time.time() + self.lifetime,
            kind=self.kind,
            source=self.name,
        )

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        if self.delay:
            time.sleep(self.delay)
        return self._answer(request)

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        if self.gate is not None:
            await self.gate.wait()
        elif self.delay:
            await asyncio.sleep(self.delay)
        return self._answer(request)
