"""A user signs out through the broker (``POST /revoke``: the grant is deleted, nothing else),
over a real redis-server shared by replicas for grants and for the shared (L2) token cache,
with the emulator over HTTPS. A replica that never held the user's token is not given it from
L2 any more: it gets ``ConsentRequired``, and the entry is dropped. After a new consent, L2
serves a token of the new grant, never the one issued before the sign-out. While the grant
stands, an L2 hit serves the entry (one read of the grant, no token request). A replica's own
in-memory copy (L1) stays until it expires, as docs/consent.md says.

Each replica is a ``TokenChain`` with a ``DelegatedConsent``, a ``RedisStore`` and a
``TokenCache(shared=SharedTokenCache(...))`` of its own (several in one process; a fresh one
has an empty L1, as a new replica process has)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from _support.consent import (
    ConsentEnv,
    follow_link,
    platform_caller,
    revoke_ticket,
    submit_form_post,
)
from entra_passthrough import (
    Caller,
    ConsentRequired,
    Policy,
    SourceUnavailable,
    TokenCache,
    TokenChain,
    TokenResult,
    UserKey,
)
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Entry, Keyring
from entra_passthrough.redis import RedisStore, SharedTokenCache

from ._server import RedisServer, free_port


@dataclass
class Replica:
    source: DelegatedConsent
    shared: SharedTokenCache
    chain: TokenChain


class _FailingGets:
    """A grant store's backend whose reads fail while ``failing`` is set (a Redis that stalls
    for this replica's grant reads only); everything else is the real ``RedisStore``."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.failing = False

    def __getattr__(self, name: str) -> Any:
        if name == "sync":
            raise AttributeError(name)  # async only: GrantStore uses this object as is
        return getattr(self.store, name)

    async def get(self, key: str) -> Entry | None:
        if self.failing:
            raise SourceUnavailable("the grant store did not answer (this test's fault)")
        return await self.store.get(key)


class Fleet:
    def __init__(self, env: ConsentEnv, server: RedisServer, *, sync: bool) -> None:
        self.env = env
        self.server = server
        self.sync = sync
        self.namespace = f"signout-l2-{free_port()}:"
        self.keyring = Keyring.generate()
        self.stores: list[RedisStore] = []
        self.replicas: list[Replica] = []

    def replica(self, wrap: Callable[[RedisStore], Any] | None = None) -> Replica:
        """A new replica (an empty L1), sharing grants and L2 through the Redis namespace."""
        store = RedisStore.from_url(self.server.url, namespace=self.namespace)
        self.stores.append(store)
        grants = store if wrap is None else wrap(store)
        source, _ = self.env.make(store=grants, keyring=self.keyring)  # type: ignore[arg-type]
        shared = SharedTokenCache(store, self.keyring, sync_store=store.sync())
        chain = TokenChain([source], policy=Policy.USER_ONLY, cache=TokenCache(shared=shared))
        made = Replica(source, shared, chain)
        self.replicas.append(made)
        return made

    async def ask(self, replica: Replica, caller: Caller) -> TokenResult:
        if self.sync:  # the sync API, on a thread of its own (no event loop there)
            return await asyncio.to_thread(
                replica.chain.get_token, [self.env.mcp_scope], caller=caller
            )
        return await replica.chain.get_token_async([self.env.mcp_scope], caller=caller)

    def tokens_in_l2(self) -> int:
        client = self.server.client()
        try:
            return len(list(client.scan_iter(f"{self.namespace}ep:v1:tok:*")))
        finally:
            client.close()

    def redemptions(self) -> int:
        assert self.env.idp.wait_idle(10)
        count: int = self.env.idp.stats()["grants"].get("refresh_token", 0)
        return count

    async def close(self) -> None:
        for replica in self.replicas:
            replica.chain.close()
        for store in self.stores:
            await store.aclose()


@pytest.fixture(params=[False, True], ids=["async", "sync"])
async def fleet(
    request: pytest.FixtureRequest, consent_env: ConsentEnv, redis_server: RedisServer
) -> AsyncIterator[Fleet]:
    made = Fleet(consent_env, redis_server, sync=request.param)
    try:
        yield made
    finally:
        await made.close()


async def _consent(fleet: Fleet, replica: Replica, caller: Caller) -> str:
    """The user consents through the broker (the link a first request gets); the sign-out
    ticket of the success page."""
    with pytest.raises(ConsentRequired) as info:
        await fleet.ask(replica, caller)
    assert info.value.link is not None
    async with fleet.env.browser() as browser:
        page = await browser.get(info.value.link)
        done = await submit_form_post(browser, page)
        assert done.status_code == 200, done.text[:300]
        return revoke_ticket(done.text)


async def _sign_out(fleet: Fleet, ticket: str) -> None:
    """The broker's sign-out form, as the user's browser posts it."""
    env = fleet.env
    async with env.browser() as browser:
        answer = await browser.post(
            f"{env.base}/revoke",
            data={"t": ticket},
            headers={"Origin": env.base.rsplit("/", 1)[0]},
        )
    assert answer.status_code == 200, answer.text[:300]


async def test_after_sign_out_no_new_replica_is_served_the_token_from_l2(fleet: Fleet) -> None:
    user = fleet.env.idp.users["quinn"]
    caller = platform_caller(f"chat-quinn-signout-l2-{fleet.sync}", upn=user.upn)
    a, c, b = fleet.replica(), fleet.replica(), fleet.replica()
    ticket = await _consent(fleet, a, caller)

    before = fleet.redemptions()
    first = await fleet.ask(a, caller)  # A redeems the grant and writes L2
    assert fleet.redemptions() - before == 1
    assert fleet.tokens_in_l2() == 1
    # While the grant stands, a new replica is served the entry (no token request).
    assert (await fleet.ask(c, caller)).fingerprint == first.fingerprint
    assert fleet.redemptions() - before == 1
    assert c.shared.hits == 1

    await _sign_out(fleet, ticket)

    # B never held the token: L2's entry is not served, and B needs consent like anyone.
    with pytest.raises(ConsentRequired) as info:
        await fleet.ask(b, caller)
    assert info.value.link is not None
    assert (b.shared.hits, b.shared.revoked, b.shared.unconfirmed) == (0, 1, 0)
    assert (c.shared.revoked, c.shared.unconfirmed) == (0, 0)
    assert fleet.tokens_in_l2() == 0  # dropped (compare-and-delete)
    with pytest.raises(ConsentRequired):  # and again: nothing to serve
        await fleet.ask(fleet.replica(), caller)
    assert fleet.redemptions() - before == 1
    # A's own in-memory copy is documented to stay valid until it expires (docs/consent.md).
    assert (await fleet.ask(a, caller)).fingerprint == first.fingerprint


async def test_after_sign_out_and_a_new_consent_l2_serves_a_new_token(fleet: Fleet) -> None:
    user = fleet.env.idp.users["quinn"]
    caller = platform_caller(f"chat-quinn-reconsent-l2-{fleet.sync}", upn=user.upn)
    a, b, c = fleet.replica(), fleet.replica(), fleet.replica()
    ticket = await _consent(fleet, a, caller)
    first = await fleet.ask(a, caller)
    assert fleet.tokens_in_l2() == 1

    await _sign_out(fleet, ticket)
    # The user consents again before any replica asked: the old grant's entry is still in L2.
    key = UserKey.from_caller(caller)
    assert key is not None
    page = await follow_link(fleet.env, a.source.consent_link(key, [fleet.env.mcp_scope]))
    assert page.status_code == 200, page.text[:300]
    assert fleet.tokens_in_l2() == 1

    before = fleet.redemptions()
    second = await fleet.ask(b, caller)
    assert (
        second.fingerprint != first.fingerprint
    )  # a token of the new grant, never the signed-out one
    assert fleet.redemptions() - before == 1
    assert b.shared.revoked == 1
    # The new grant's token is what L2 holds now, and a new replica is served it.
    assert fleet.tokens_in_l2() == 1
    assert (await fleet.ask(c, caller)).fingerprint == second.fingerprint
    assert fleet.redemptions() - before == 1
    assert (c.shared.hits, c.shared.revoked) == (1, 0)


async def test_an_l2_hit_whose_grant_cannot_be_read_is_not_served(
    consent_env: ConsentEnv, redis_server: RedisServer
) -> None:
    """Fail closed: when the grant store fails the check's read, the entry is not served (the
    source acquires as usual: it fails typed on the same store), and it is not dropped."""
    fleet = Fleet(consent_env, redis_server, sync=False)
    try:
        user = fleet.env.idp.users["quinn"]
        caller = platform_caller("chat-quinn-check-fails", upn=user.upn)
        a = fleet.replica()
        failing: list[_FailingGets] = []

        def wrap(store: RedisStore) -> _FailingGets:
            failing.append(_FailingGets(store))
            return failing[-1]

        b = fleet.replica(wrap)
        await _consent(fleet, a, caller)
        first = await fleet.ask(a, caller)

        failing[0].failing = True
        with pytest.raises(SourceUnavailable):
            await fleet.ask(b, caller)
        assert (b.shared.hits, b.shared.unconfirmed, b.shared.revoked) == (0, 1, 0)
        assert fleet.tokens_in_l2() == 1  # unknown is not "signed out": kept

        failing[0].failing = False
        assert (await fleet.ask(b, caller)).fingerprint == first.fingerprint
        assert b.shared.hits == 1
    finally:
        await fleet.close()
