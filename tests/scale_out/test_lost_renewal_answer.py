"""A renewal of a consent grant's refresh lease that Redis ran but whose answer never came back
(the server died, or the command timed out, while answering; on a loaded machine Redis fsyncs
the write before it answers): the lease's version moved on without the replica knowing. Before,
the rotated grant written after the redemption compared with the old version, was refused as
"changed by another replica" and dropped: the grant kept the refresh token Entra had just
redeemed, under a lease that ran out, and the next refresh (this replica's or another's) redeemed
it a second time. Real redis-server, real MSAL against the emulator; the lost answer is made by
letting one write through and raising as the client does when the connection dies."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import pytest

from _support.consent import ConsentEnv
from entra_passthrough import SourceUnavailable, UserKey
from entra_passthrough._jwt import fingerprint
from entra_passthrough._sources import delegated
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._broker import consent
from ._server import RedisServer, free_port

LEASE = 0.6  # renewed every 0.2 s: several renewals during a 1.5 s redemption


class LosesOneAnswer:
    """Wraps a store's ``put``: once armed, the next write of a grant runs in Redis and then
    raises as if the connection had died before its answer."""

    def __init__(self, store: RedisStore, *, then_down: int = 0) -> None:
        self.armed = threading.Event()
        self.lost = 0
        self.then_down = then_down  # grant writes refused after the lost one (Redis down)
        self._put = store.put
        store.put = self.put  # type: ignore[method-assign]

    async def put(self, key: str, value: bytes, **kwargs: Any) -> Any:
        if ":grant:" in key and self.lost and self.then_down:
            self.then_down -= 1
            raise SourceUnavailable("Redis is down (test)")
        written = await self._put(key, value, **kwargs)
        if self.armed.is_set() and ":grant:" in key:
            self.armed.clear()
            self.lost += 1
            raise SourceUnavailable("the connection was closed before the answer (test)")
        return written


def _spy_redemptions(a: Any, b: Any, lossy: LosesOneAnswer) -> Counter[str]:
    """Count each refresh token either replica redeems (by fingerprint); ``a``'s first
    redemption arms ``lossy`` (after the lease was taken and extended: a renewal's answer is
    the one lost)."""
    redeemed: Counter[str] = Counter()
    for source, arm in ((a, True), (b, False)):
        original = source.client.refresh

        def refresh(
            refresh_token: str, *args: Any, _original: Any = original, _arm: bool = arm
        ) -> Any:
            redeemed[fingerprint(refresh_token)] += 1
            if _arm and sum(redeemed.values()) == 1:
                lossy.armed.set()
            return _original(refresh_token, *args)

        source.client.refresh = refresh
    return redeemed


@pytest.mark.parametrize("down", [False, True], ids=["written-at-once", "written-back-later"])
async def test_a_renewal_answer_lost_mid_redemption_keeps_the_rotated_grant(
    consent_env: ConsentEnv,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    down: bool,
) -> None:
    """``written-back-later``: the store is down when the rotated grant is written after the
    redemption (the renewals after the lost one, and that write, fail): the replica keeps it
    and writes it back at its next call for this user, which must not take it for another
    replica's change either."""
    monkeypatch.setattr(delegated, "LEASE_SECONDS", LEASE)
    env = consent_env
    namespace = f"lostrenew{free_port()}:"
    stores = [RedisStore.from_url(redis_server.url, namespace=namespace) for _ in range(2)]
    keyring = Keyring.generate()
    try:
        a = env.make(store=stores[0], keyring=keyring)[0]  # type: ignore[arg-type]
        b = env.make(store=stores[1], keyring=keyring)[0]  # type: ignore[arg-type]
        request = await consent(env, b, "quinn", "chat-quinn-lost-renewal")
        key = UserKey.from_caller(request.caller)
        assert key is not None
        # (down: the renewals after the lost one, at most 3 in 1.5 s at a tenth of the lease
        # once failing, and the write after the redemption)
        lossy = LosesOneAnswer(stores[0], then_down=1_000 if down else 0)
        redeemed = _spy_redemptions(a, b, lossy)
        env.idp.inject_fault("token", status=None, delay=1.5)  # renewals while Entra answers
        assert await a.get_token_async(request) is not None
        assert lossy.lost == 1, "no renewal ran during the redemption"
        if down:
            lossy.then_down = 0  # Redis is back
            await asyncio.sleep(LEASE * 1.5)  # the lease has run out meanwhile
            assert await a.get_token_async(request) is not None  # writes back, then refreshes
        found = await b.grants.get_grant(key.hashed)
        assert found is not None
        held = fingerprint(found[0].refresh_token)  # (never the token itself in a failure)
        assert held not in redeemed, "the grant still holds the refresh token Entra redeemed"
        assert found[0].lease_owner is None
        await asyncio.sleep(LEASE * 1.5)  # any lease left over has run out
        assert await b.get_token_async(request) is not None
        assert max(redeemed.values()) == 1, "a refresh token was redeemed twice"
        assert sum(redeemed.values()) == (3 if down else 2)
    finally:
        env.idp.clear_faults()
        for store in stores:
            await store.aclose()


async def test_after_a_lost_renewal_answer_the_lease_is_still_renewed(
    consent_env: ConsentEnv, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewals after the lost answer compared with the old version, were refused, and the
    replica stopped renewing (as if another had taken the lease): a redemption longer than the
    lease then let another replica take it over and redeem the same refresh token meanwhile."""
    monkeypatch.setattr(delegated, "LEASE_SECONDS", LEASE)
    env = consent_env
    namespace = f"lostrenew{free_port()}:"
    stores = [RedisStore.from_url(redis_server.url, namespace=namespace) for _ in range(2)]
    keyring = Keyring.generate()
    try:
        a = env.make(store=stores[0], keyring=keyring)[0]  # type: ignore[arg-type]
        b = env.make(store=stores[1], keyring=keyring)[0]  # type: ignore[arg-type]
        request = await consent(env, b, "quinn", "chat-quinn-renewed-on")
        lossy = LosesOneAnswer(stores[0])
        redeemed = _spy_redemptions(a, b, lossy)
        env.idp.inject_fault("token", status=None, delay=2.5)  # a's redemption: 4 leases
        from_a = asyncio.ensure_future(a.get_token_async(request))
        for _ in range(500):  # bounded (~5 s)
            if lossy.lost:
                break
            await asyncio.sleep(0.01)
        assert lossy.lost == 1, "no renewal ran during the redemption"
        await asyncio.sleep(LEASE * 1.5)  # past the lease the lost renewal wrote
        from_b = asyncio.ensure_future(b.get_token_async(request))
        results = await asyncio.wait_for(asyncio.gather(from_a, from_b), 60)
        assert all(r is not None for r in results)
        assert max(redeemed.values()) == 1, "a refresh token was redeemed twice"
    finally:
        env.idp.clear_faults()
        for store in stores:
            await store.aclose()
