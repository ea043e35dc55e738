"""A user token source in memory for the auth flow's unit tests: ``user-<oid>-<n>``, one more
each acquisition, counted (``made``)."""

from __future__ import annotations

import threading
import time
from typing import Any

from entra_passthrough import IdentityKind, TokenRequest, TokenResult


class Users:
    """A user source: ``user-<oid>-<n>``, one more each acquisition."""

    name = "users"
    kind = IdentityKind.USER

    def __init__(self) -> None:
        self.made = 0
        self._lock = threading.Lock()

    def cache_partition(self, request: TokenRequest) -> Any:
        caller = request.caller
        return None if caller is None or not caller.presented else caller.assertion_sha256

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        caller = request.caller
        if caller is None or not caller.presented or caller.claims is None:
            return None
        with self._lock:
            self.made += 1
            made = self.made
        return TokenResult(
            token=f"user-{caller.claims.oid}-{made}",
            expires_on=time.time() + 3600,
            kind=IdentityKind.USER,
            source=self.name,
        )

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        return self.get_token(request)
