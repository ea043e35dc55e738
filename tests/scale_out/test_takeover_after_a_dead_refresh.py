"""A replica dies mid-refresh holding both leases (the shared cache's and the consent grant's):
the survivors make one token POST between them, over a real redis-server with real MSAL
against the emulator. One of them takes the shared cache's lease once it lapses and waits out
the grant's; the other stops waiting for the shared cache (``wait`` is shorter than the
grant's lease, as with the defaults 15 s and 20 s), waits out the grant's lease too, and then
takes the first one's token from the shared cache instead of redeeming the rotated refresh
token for a second token. Leases are shortened through their parameters; the dead replica is
one whose store refuses its renewals (an ACL user without scripts) while its POST hangs."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from _support.consent import ConsentEnv
from entra_passthrough import EntraPassthroughError, Policy, TokenCache, TokenChain, UserKey
from entra_passthrough._jwt import fingerprint
from entra_passthrough._sources import delegated
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore, SharedTokenCache

from ._broker import consent
from ._server import AclUser, RedisServer, free_port

GRANT_LEASE = 6.0  # delegated.LEASE_SECONDS (20 s by default)
L2_LEASE = 1.0  # SharedTokenCache(lease=...) (10 s by default)
# SharedTokenCache(wait=...) (15 s by default): shorter than the grant's lease, and long enough
# for the survivor holding the shared lease to redeem and write on a loaded CI machine with every
# logger at DEBUG (at 1.5 s the other survivor stopped waiting for it there and redeemed too).
L2_WAIT = 4.0


class _Hang:
    """The dead replica's POST: it never reaches Entra (held until the test ends, then
    fails)."""

    def __init__(self, source: DelegatedConsent) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

        def refresh(*_: Any, **__: Any) -> Any:
            self.entered.set()
            self.gate.wait(60)  # bounded
            raise OSError("the replica is gone")

        source.client.refresh = refresh  # type: ignore[method-assign]


def _count(source: DelegatedConsent, redeemed: Counter[str]) -> None:
    original = source.client.refresh

    def refresh(refresh_token: str, *args: Any, **kwargs: Any) -> Any:
        redeemed[fingerprint(refresh_token)] += 1
        return original(refresh_token, *args, **kwargs)

    source.client.refresh = refresh  # type: ignore[method-assign]


async def _poll(done: Callable[[], bool], *, tries: int = 1000) -> None:
    for _ in range(tries):  # bounded (~10 s)
        if done():
            return
        await asyncio.sleep(0.01)
    pytest.fail("the dead replica never reached its POST")


@pytest.fixture
def acl_user(redis_server: RedisServer) -> Any:
    user = AclUser(redis_server)
    yield user
    user.close()


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_the_survivors_of_a_replica_dead_mid_refresh_post_once(
    consent_env: ConsentEnv,
    redis_server: RedisServer,
    acl_user: AclUser,
    monkeypatch: pytest.MonkeyPatch,
    sync: bool,
) -> None:
    monkeypatch.setattr(delegated, "LEASE_SECONDS", GRANT_LEASE)
    env = consent_env
    namespace = f"dead{free_port()}:"
    keyring = Keyring.generate()
    urls = [acl_user.url, redis_server.url, redis_server.url]  # the dead one, A, B
    stores = [RedisStore.from_url(url, namespace=namespace, timeout=1) for url in urls]
    hang: _Hang | None = None
    chains: list[TokenChain] = []
    try:
        sources = [env.make(store=store, keyring=keyring)[0] for store in stores]  # type: ignore[arg-type]
        request = await consent(env, sources[1], "rita", f"chat-rita-dead-{sync}")
        key = UserKey.from_caller(request.caller)
        assert key is not None
        chains = [
            TokenChain(
                [source],
                policy=Policy.USER_ONLY,
                cache=TokenCache(
                    shared=SharedTokenCache(
                        store, keyring, lease=L2_LEASE, wait=L2_WAIT, sync_store=store.sync()
                    )
                ),
            )
            for source, store in zip(sources, stores, strict=True)
        ]
        hang = _Hang(sources[0])
        redeemed: Counter[str] = Counter()
        for survivor in sources[1:]:
            _count(survivor, redeemed)
        dead = asyncio.ensure_future(
            chains[0].get_token_async([env.mcp_scope], caller=request.caller)
        )
        await _poll(hang.entered.is_set)  # both leases held, the POST under way...
        acl_user.refuse_scripts()  # ...and the replica dies: no renewal reaches Redis

        async def ask(chain: TokenChain) -> Any:
            if sync:
                return await asyncio.to_thread(
                    chain.get_token, [env.mcp_scope], caller=request.caller
                )
            return await chain.get_token_async([env.mcp_scope], caller=request.caller)

        results = await asyncio.wait_for(asyncio.gather(*(ask(c) for c in chains[1:])), 60)
        assert sum(redeemed.values()) == 1, f"{sum(redeemed.values())} token POSTs by survivors"
        assert results[0].token == results[1].token
        found = await sources[1].grants.get_grant(key.hashed)
        assert found is not None
        assert found[0].lease_owner is None  # released
        hang.gate.set()
        with pytest.raises(EntraPassthroughError):  # the dead replica's call: failed, typed
            await asyncio.wait_for(dead, 30)
    finally:
        acl_user.allow_scripts()
        if hang is not None:
            hang.gate.set()
        for chain in chains:
            chain.close()
        for store in stores:
            await store.aclose()
