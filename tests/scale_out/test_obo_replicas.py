"""Real OBO (MSAL against the emulator) in four chains sharing one Redis: one token POST per user
across all of them, however the calls are spread; without the shared cache, one per replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from entra_passthrough import TokenCache, TokenChain
from entra_passthrough._caller import Caller
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore, SharedTokenCache

from ._server import RedisServer, free_port, obo_chain


def _obo_posts(idp: Any) -> int:
    return int(idp.stats()["grants"].get("on_behalf_of", 0))


@pytest.fixture
async def chains(
    consent_env: Any, redis_server: RedisServer, request: pytest.FixtureRequest
) -> AsyncIterator[list[TokenChain]]:
    idp = consent_env.idp
    shared: bool = request.param
    keyring = Keyring.generate()
    namespace = f"obo{free_port()}:"
    stores = [RedisStore.from_url(redis_server.url, namespace=namespace) for _ in range(4)]
    sessions = [idp.msal_http_client() for _ in stores]
    made = [
        obo_chain(
            idp, session, TokenCache(shared=SharedTokenCache(store, keyring) if shared else None)
        )
        for store, session in zip(stores, sessions, strict=True)
    ]
    yield made
    for chain in made:
        chain.close()
    for store in stores:
        await store.aclose()
    for session in sessions:
        session.close()


@pytest.mark.parametrize(
    ("chains", "expected_per_user"), [(True, 1), (False, 4)], indirect=["chains"]
)
async def test_one_post_per_user_across_four_replicas(
    consent_env: Any, chains: list[TokenChain], expected_per_user: int
) -> None:
    idp = consent_env.idp
    names = ["alice", "bob", "alice", "bob"]  # two assertions each: four cache keys
    callers = [Caller.from_token(idp.user_token(n, audience=idp.agent.client_id)) for n in names]
    assert len({c.assertion for c in callers}) == len(names)
    scopes = [f"{idp.mcp.app_id_uri}/.default"]
    before = _obo_posts(idp)
    calls = [
        chains[(u + j) % 4].get_token_async(scopes, caller=caller)
        for u, caller in enumerate(callers)
        for j in range(4)
    ]
    results = await asyncio.gather(*calls)
    assert _obo_posts(idp) - before == len(names) * expected_per_user
    assert len({r.token for r in results}) == len(names) * expected_per_user
