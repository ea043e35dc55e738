"""A conditional write whose reply is lost or late (Redis ran it; the connection dropped, or the
answer came after the command timeout): redis-py re-sends it, and the re-sent write must find
this replica's own write and say "written", not leave the replica waiting on its own lease
(the shared cache's, or a consent grant's refresh lease). Through ``_dropproxy.DropProxy``, a
real redis-server behind a proxy that loses one reply."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from _support.consent import ConsentEnv
from entra_passthrough import IdentityKind, SourceUnavailable, TokenCache, TokenResult
from entra_passthrough._l2 import SharedTokenCache
from entra_passthrough._sources import delegated
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._broker import StandaloneBroker, consent
from ._dropproxy import DropProxy
from ._server import RedisServer

WARM = ("obo", ("client", "tenant", "warm-up"), ("api://mcp/.default",), None, ())
KEY = ("obo", ("client", "tenant", "sha256-of-assertion"), ("api://mcp/.default",), None, ())
#: Short, so that the code before the fix (which waited for its own lease to run out) ends
#: soon; a lease still long enough for an acquisition on a loaded machine.
LEASE = 3.0


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[DropProxy]:
    made = await DropProxy(redis_server.port).start()
    yield made
    await made.close()


class Acquisitions:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> TokenResult:
        self.count += 1
        return TokenResult(f"token-{self.count}", time.time() + 3600, IdentityKind.USER, "obo")


def _counting_gets(store: RedisStore, wanted: Callable[[str], bool]) -> list[str]:
    """Spy on ``store.get``: the keys read that ``wanted`` selects, in order."""
    seen: list[str] = []
    get = store.get

    async def spied(key: str) -> Any:
        if wanted(key):
            seen.append(key)
        return await get(key)

    store.get = spied  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("how", ["lost", "late"])
async def test_a_lost_or_late_reply_to_the_lease_write_is_recognised_as_ours(
    redis_server: RedisServer, proxy: DropProxy, how: str
) -> None:
    """The reply to the L2 lease's write-if-absent is lost (the connection reset) or comes
    after the command timeout. The replica holds the lease (Redis ran its write), so it
    acquires at once: it never waits on its own lease nor takes it over as another's."""
    store = RedisStore.from_url(proxy.url(redis_server.url), namespace=f"lost-{how}:", timeout=0.5)
    if how == "late":
        proxy.delay = 1.5  # > the 0.5 s command timeout: redis-py gives up on it and re-sends
    shared = SharedTokenCache(store, Keyring.generate(), lease=LEASE)
    cache = TokenCache(shared=shared)
    acquire = Acquisitions()
    try:
        assert await cache.get_or_acquire_async(WARM, acquire) is not None  # connections made
        proxy.arm(b"tokl:")  # the next lease write: Redis runs it, its reply is lost or late
        result = await cache.get_or_acquire_async(KEY, acquire)
        assert result is not None
        assert proxy.matched == [(b"tokl:",)]
        assert acquire.count == 2  # one per key
        assert shared.waits == 0  # never waited on its own lease
        assert shared.takeovers == 0
        assert shared.failures == 0
        assert shared.fenced == 0
        # and it shared its token: another replica is served from L2
        direct = RedisStore.from_url(redis_server.url, namespace=f"lost-{how}:")
        other = TokenCache(shared=SharedTokenCache(direct, shared.keyring))

        async def refuse() -> TokenResult:
            raise AssertionError("another replica must be served from L2")

        try:
            from_other = await other.get_or_acquire_async(KEY, refuse)
        finally:
            await direct.aclose()
        assert from_other is not None
        assert from_other.token == result.token
    finally:
        await store.aclose()


def _grant_reads(key: str) -> bool:
    return ":grant:" in key


async def test_a_lost_reply_to_the_grant_lease_write_is_recognised_as_ours(
    consent_env: ConsentEnv,
    redis_server: RedisServer,
    proxy: DropProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reply to the compare-and-set that takes a consent grant's refresh lease is lost:
    the re-sent script finds its own write, so the replica refreshes at once (one read of the
    grant), not after polling its own lease until it runs out."""
    monkeypatch.setattr(delegated, "LEASE_SECONDS", LEASE)
    env = consent_env
    keyring = Keyring.generate()
    store = RedisStore.from_url(proxy.url(redis_server.url), namespace="lost-grant:")
    broker: StandaloneBroker | None = None
    try:
        source = env.make(store=store, keyring=keyring)[0]  # type: ignore[arg-type]
        # the broker (after ``make``, which mounts its own app) with a direct connection
        broker = StandaloneBroker(
            env, RedisStore.from_url(redis_server.url, namespace="lost-grant:"), keyring
        )
        request = await consent(env, source, "quinn", "chat-quinn-lost-reply")
        assert await source.get_token_async(request) is not None  # scripts loaded, warm
        before = env.idp.stats()["grants"].get("refresh_token", 0)
        reads = _counting_gets(store, _grant_reads)
        proxy.arm(b"EVALSHA", b":grant:")  # the lease's compare-and-set: reply lost
        assert await source.get_token_async(request) is not None
        assert proxy.matched == [(b"EVALSHA", b":grant:")]
        assert len(reads) == 1  # read once, leased, refreshed: no polling of its own lease
        assert env.idp.stats()["grants"].get("refresh_token", 0) - before == 1
    finally:
        await store.aclose()
        if broker is not None:
            await broker.aclose()


async def test_a_grant_lease_whose_write_failed_after_landing_is_not_waited_out(
    consent_env: ConsentEnv,
    redis_server: RedisServer,
    proxy: DropProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lease's compare-and-set lands but both its replies are lost (the write and
    redis-py's re-send): the call fails typed, with the grant holding this replica's lease.
    The next call recognises the lease as its own (nothing of ours runs under it) and takes
    it over at once rather than waiting for it to run out."""
    monkeypatch.setattr(delegated, "LEASE_SECONDS", LEASE)
    env = consent_env
    keyring = Keyring.generate()
    store = RedisStore.from_url(proxy.url(redis_server.url), namespace="lost-twice:")
    broker: StandaloneBroker | None = None
    try:
        source = env.make(store=store, keyring=keyring)[0]  # type: ignore[arg-type]
        # the broker (after ``make``, which mounts its own app) with a direct connection
        broker = StandaloneBroker(
            env, RedisStore.from_url(redis_server.url, namespace="lost-twice:"), keyring
        )
        request = await consent(env, source, "pat", "chat-pat-lost-twice")
        assert await source.get_token_async(request) is not None
        proxy.arm(b"EVALSHA", b":grant:")
        proxy.arm(b"EVALSHA", b":grant:")  # redis-py's one re-send: lost as well
        with pytest.raises(SourceUnavailable):
            await source.get_token_async(request)
        assert len(proxy.matched) == 2
        reads = _counting_gets(store, _grant_reads)
        assert await source.get_token_async(request) is not None
        # one read: the lease found is ours and idle, so it is taken over (before the fix it
        # was honoured as another replica's and polled until it ran out)
        assert len(reads) == 1
    finally:
        await store.aclose()
        if broker is not None:
            await broker.aclose()
