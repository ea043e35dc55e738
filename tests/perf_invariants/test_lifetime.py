"""One token round trip per user per token lifetime, over several lifetimes (small CI size).

A real emulator with short token lifetimes, real MSAL: users call every few tens of ms and renew
their own token shortly before it expires (as their client would). The invariants are counts,
never times: token POSTs per user token == 1, no refresh ahead of a capped entry, exactly one
request per user token that did not hit the cache (its first), and for an app token (no cap)
refreshes run in the background: no request after the first ever misses.
``PERF_INVARIANTS_LIFETIMES`` (default 2) sets how many lifetimes the run covers.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Iterator

import jwt
import pytest

from entra_passthrough import ManagedIdentity, OnBehalfOf, TokenChain, bind_caller
from entra_passthrough._cache import CacheStats
from entra_passthrough.testing import EntraEmulator, Lifetimes, World

LIFETIME = 3  # seconds: the emulator's access-token lifetime (user and downstream tokens)
LIFETIMES = int(os.environ.get("PERF_INVARIANTS_LIFETIMES", "2"))
PERIOD = 0.05  # seconds between two calls of one user
RENEW_BEFORE = 0.4  # a user's client renews its token this long before it expires


@pytest.fixture(scope="module")
def short_idp() -> Iterator[EntraEmulator]:
    world = World.default().with_lifetimes(Lifetimes(access_token=LIFETIME))
    with EntraEmulator(world=world) as idp:
        yield idp


def _obo(idp: EntraEmulator) -> OnBehalfOf:
    return OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        authority_host=idp.url,
        client_secret=idp.agent.secret,
        http_client=idp.msal_http_client(),
    )


def _exp(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


async def test_round_trips_per_token_lifetime(short_idp: EntraEmulator) -> None:
    """Both cases in one run (they share the wall time): users on the OBO path, and the app."""
    idp = short_idp
    idp.token_latency = 0.02
    end = time.time() + LIFETIMES * LIFETIME
    obo, app = await asyncio.gather(_users_on_obo(idp, end), _app_token(idp, end))

    posts, assertions, calls, stats = obo
    assert len(assertions) >= 2 * LIFETIMES  # the run did cover several lifetimes
    assert posts == len(assertions)  # exactly one round trip per user token
    assert stats.refreshes == 0  # nothing fresher than a capped token can be had
    assert stats.misses == len(assertions)  # only each token's first request waited
    assert stats.hits == calls - len(assertions)

    posts, calls, stats = app
    assert stats.misses == 1  # the first request; every later one was served from the cache
    assert stats.hits == calls - 1
    # At most one refresh per half lifetime. A token's own life is up to a second shorter than
    # LIFETIME: its exp is whole seconds from a truncated iat, and the cache never serves it
    # past that exp (a third of these 3 s tokens; nothing for hour-long ones).
    assert 1 <= stats.refreshes <= math.ceil(2 * LIFETIMES * LIFETIME / (LIFETIME - 1))
    assert posts == 1 + stats.refreshes


async def _users_on_obo(
    idp: EntraEmulator, end: float
) -> tuple[int, dict[str, int], int, CacheStats]:
    chain = TokenChain([_obo(idp)])
    scopes = [f"{idp.mcp.app_id_uri}/.default"]
    before = idp.stats()["grants"]["on_behalf_of"]
    assertions: dict[str, int] = {}  # user token -> calls made with it

    async def user(name: str) -> None:
        token = ""
        while time.time() < end:
            if not token or _exp(token) - time.time() < RENEW_BEFORE:
                token = idp.user_token(name, lifetime=LIFETIME)
                assertions[token] = 0
            with bind_caller(token=token):  # a new Caller per request, as the middleware does
                result = await chain.get_token_async(scopes)
            assert result.expires_on <= _exp(token)  # never outlives the assertion
            assertions[token] += 1
            await asyncio.sleep(PERIOD)

    try:
        await asyncio.gather(user("alice"), user("bob"))
        await chain.cache.wait_refreshes_async()
    finally:
        chain.close()
    posts = idp.stats()["grants"]["on_behalf_of"] - before
    return posts, assertions, sum(assertions.values()), chain.cache.stats()


async def _app_token(idp: EntraEmulator, end: float) -> tuple[int, int, CacheStats]:
    env = idp.mi_env()
    mi = ManagedIdentity(
        client_id=idp.managed_identity.client_id,
        endpoint=env["IDENTITY_ENDPOINT"],
        header=env["IDENTITY_HEADER"],
    )
    chain = TokenChain([mi], policy="app_only")
    scopes = [f"{idp.mcp.app_id_uri}/.default"]
    before = idp.stats()["endpoints"]["msi"]
    calls = 0
    try:
        while time.time() < end:
            result = await chain.get_token_async(scopes)
            assert result.expires_on > time.time()
            calls += 1
            await asyncio.sleep(PERIOD)
        await chain.cache.wait_refreshes_async()
    finally:
        chain.close()
    posts = idp.stats()["endpoints"]["msi"] - before
    return posts, calls, chain.cache.stats()
