"""A capped token is shared for as long as it is served: to its cap, not its last tenth off.

The in-process cache serves a token capped at the user's assertion to the cap ("nothing fresher
can be had"). The shared cache wrote it to Redis with the skew of an uncapped token taken off
(``min(30 s, life / 10)``), so a replica that first saw the user in that tail (a new replica, a
restart, a request routed elsewhere) found nothing and made a second OBO POST for the same
assertion. Both caches now follow one rule (``_types.entry_timing``).

Real OBO (MSAL against the emulator over HTTPS), a real redis-server; the second replica reads at
a clock moved to one second before the assertion expires.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from entra_passthrough import TokenCache
from entra_passthrough._caller import Caller
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore, SharedTokenCache

from ._server import RedisServer, free_port, obo_chain


def _obo_posts(idp: Any) -> int:
    return int(idp.stats()["grants"].get("on_behalf_of", 0))


async def test_a_capped_entry_lives_in_redis_to_its_cap(
    consent_env: Any, redis_server: RedisServer
) -> None:
    idp = consent_env.idp
    keyring = Keyring.generate()
    namespace = f"tail{free_port()}:"
    offset = [0.0]

    def clock() -> float:
        return time.time() + offset[0]

    stores = [RedisStore.from_url(redis_server.url, namespace=namespace) for _ in range(2)]
    sessions = [idp.msal_http_client() for _ in stores]
    chains = [
        obo_chain(
            idp,
            session,
            TokenCache(clock=clock, shared=SharedTokenCache(store, keyring, clock=clock)),
        )
        for store, session in zip(stores, sessions, strict=True)
    ]
    raw = redis.Redis.from_url(redis_server.url)
    try:
        # A user token of ten minutes: the downstream token (an hour) is capped at its exp.
        token = idp.user_token("alice", audience=idp.agent.client_id, lifetime=600)
        caller = Caller.from_token(token)
        assert caller.claims is not None
        assert caller.claims.exp is not None
        exp = caller.claims.exp
        scopes = [f"{idp.mcp.app_id_uri}/.default"]
        before = _obo_posts(idp)
        first = await chains[0].get_token_async(scopes, caller=caller)
        assert first.expires_on == exp  # capped

        keys = [k for k in raw.scan_iter(f"{namespace}ep:v1:tok:*")]
        assert len(keys) == 1, keys
        left = exp - time.time()
        ttl = raw.pttl(keys[0]) / 1000
        # Shared to the cap (less the time the write took), not 30 s short of it.
        assert ttl > left - 5.0, (ttl, left)
        assert ttl <= left + 1.0, (ttl, left)

        # The other replica, first seeing the user a second before the assertion expires,
        # serves the shared token: no second POST.
        offset[0] = exp - 1.0 - time.time()
        second = await chains[1].get_token_async(scopes, caller=Caller.from_token(token))
        assert second.token == first.token
        assert _obo_posts(idp) - before == 1
    finally:
        for chain in chains:
            chain.close()
        for store in stores:
            await store.aclose()
        for session in sessions:
            session.close()
        raw.close()
