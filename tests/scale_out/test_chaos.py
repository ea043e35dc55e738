"""Redis killed and restarted while four replicas (real OBO, MSAL, the emulator) take calls:
no call is lost, one POST per new assertion while Redis is up, at most one per replica while it
is down, and the replicas use Redis again once it is back (no restart, no rebuild)."""

from __future__ import annotations

import asyncio
from typing import Any

from entra_passthrough import TokenCache
from entra_passthrough._caller import Caller
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore, SharedTokenCache

from ._server import RedisServer, obo_chain

ASSERTIONS_PER_WAVE = 3
REPLICAS = 4


async def test_killed_and_restarted_under_load_loses_no_call(
    consent_env: Any, fresh_redis: RedisServer
) -> None:
    idp = consent_env.idp
    fresh_redis.start()
    keyring = Keyring.generate()
    # A killed Redis refuses connections at once, so the timeout only bounds a slow answer: a
    # short one (0.5 s) made a loaded machine's slow reads count as Redis down (9 POSTs for 3).
    stores = [RedisStore.from_url(fresh_redis.url, timeout=5.0) for _ in range(REPLICAS)]
    shared = [SharedTokenCache(s, keyring, retry_after=0.0) for s in stores]
    sessions = [idp.msal_http_client() for _ in stores]
    chains = [
        obo_chain(idp, session, TokenCache(shared=cache))
        for cache, session in zip(shared, sessions, strict=True)
    ]
    scopes = [f"{idp.mcp.app_id_uri}/.default"]
    posts: list[int] = []
    lost: list[BaseException] = []
    try:
        for wave in range(6):
            if wave == 2:
                fresh_redis.kill()
            if wave == 4:
                fresh_redis.start()  # data kept
            callers = [
                Caller.from_token(idp.user_token(name, audience=idp.agent.client_id))
                for name in ("alice", "bob", "alice")[:ASSERTIONS_PER_WAVE]
            ]
            before = idp.stats()["grants"].get("on_behalf_of", 0)
            results = await asyncio.gather(
                *(
                    chain.get_token_async(scopes, caller=caller)
                    for caller in callers
                    for chain in chains
                    for _ in range(3)
                ),
                return_exceptions=True,
            )
            lost += [r for r in results if isinstance(r, BaseException)]
            posts.append(idp.stats()["grants"].get("on_behalf_of", 0) - before)
    finally:
        for chain in chains:
            chain.close()
        for store in stores:
            await store.aclose()
        for session in sessions:
            session.close()
    assert lost == []
    assert posts[0] == posts[1] == ASSERTIONS_PER_WAVE  # Redis up: one per assertion
    assert all(p <= ASSERTIONS_PER_WAVE * REPLICAS for p in posts[2:4])  # down: one per replica
    assert posts[4] == posts[5] == ASSERTIONS_PER_WAVE  # back: shared again, by itself
    assert sum(c.failures for c in shared) >= REPLICAS  # each replica saw Redis go
