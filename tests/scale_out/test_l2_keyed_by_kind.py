"""Replicas sharing Redis, whose sources of one name declare different kinds (a configuration
rolled out to some replicas first): one replica's refresh ahead took the other's newer entry from
the shared cache and served the app's token to a platform-identified user. Entries are keyed by
the source's kind, so neither replica ever reads the other's. Real ``redis-server``."""

from __future__ import annotations

import time
from typing import Any

from entra_passthrough import Caller, IdentityKind, Policy, TokenCache, TokenChain, TokenResult
from entra_passthrough._l2 import SharedTokenCache
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._server import RedisServer

USER, APP = IdentityKind.USER, IdentityKind.APP
SCOPES = ["api://x/.default"]


class Source:
    name = "custom"

    def __init__(self, kind: IdentityKind, life: float) -> None:
        self.kind, self.life, self.calls = kind, life, 0

    def cache_partition(self, request: Any) -> tuple[str, ...] | None:
        caller = request.caller
        return ("u", caller.user_id) if caller is not None and caller.user_id else None

    def get_token(self, request: Any) -> TokenResult:
        raise NotImplementedError

    async def get_token_async(self, request: Any) -> TokenResult:
        self.calls += 1
        return TokenResult(
            token=f"eyJ.{self.kind.value}-{self.calls}.sig",
            expires_on=time.time() + self.life,
            kind=self.kind,
            source=self.name,
        )


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_a_refresh_ahead_never_adopts_another_replicas_kind(
    redis_server: RedisServer,
) -> None:
    ring = Keyring.generate()
    namespace = f"kind{time.monotonic_ns()}:"
    clock = Clock()
    user_source, app_source = Source(USER, 3600), Source(APP, 7200)
    a = TokenChain(
        [user_source],
        policy=Policy.USER_OR_APP,
        cache=TokenCache(
            clock=clock,
            shared=SharedTokenCache(
                RedisStore.from_url(redis_server.url, namespace=namespace), ring
            ),
        ),
    )
    b = TokenChain(
        [app_source],
        policy=Policy.USER_OR_APP,
        cache=TokenCache(
            shared=SharedTokenCache(
                RedisStore.from_url(redis_server.url, namespace=namespace), ring
            )
        ),
    )
    caller = Caller(user_id="platform-user-1")
    assert (await a.get_token_async(SCOPES, caller=caller)).kind is USER
    assert (await b.get_token_async(SCOPES, caller=caller)).kind is APP  # its own, not A's
    await b.cache.wait_refreshes_async()
    clock.offset = 3400  # A's token is due for a refresh ahead
    for _ in range(3):
        got = await a.get_token_async(SCOPES, caller=caller)
        await a.cache.wait_refreshes_async()
        assert got.kind is USER, got.token
    assert "app" not in (await a.get_token_async(SCOPES, caller=caller)).token
