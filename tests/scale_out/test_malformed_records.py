"""A record in Redis that is not in the library's format (another program's value, a
non-ASCII version prefix, a key of another type): a miss for that key alone, which the next
write replaces. Never "the store is down" (which turned the shared cache off for every user)
and never a grant that fails forever instead of asking the user to sign in again."""

from __future__ import annotations

import time

import pytest
import redis

from _support.consent import ConsentEnv, follow_link
from entra_passthrough import (
    ConsentRequired,
    IdentityKind,
    TokenCache,
    TokenResult,
    UserKey,
)
from entra_passthrough._l2 import SharedTokenCache
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._broker import StandaloneBroker, consent
from ._server import RedisServer, free_port

SHAPES = ["non_ascii", "not_ours", "wrong_type"]


def _spoil(admin: redis.Redis, name: bytes, shape: str) -> None:
    """Replace the record at ``name`` with something the library did not write."""
    ttl = max(int(admin.pttl(name)), 60_000)
    admin.delete(name)
    if shape == "non_ascii":
        admin.set(name, b"\xc3\xa9" * 9 + b".x", px=ttl)  # a 16-byte prefix, not ASCII
    elif shape == "not_ours":
        admin.set(name, b"someone else's value, no version", px=ttl)
    else:
        admin.rpush(name, b"x")
        admin.pexpire(name, ttl)


def _key(user: str) -> tuple[object, ...]:
    return ("obo", ("client", "tenant", f"sha256-of-{user}"), ("api://mcp/.default",), None, ())


class Acquisitions:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> TokenResult:
        self.count += 1
        return TokenResult(f"token-{self.count}", time.time() + 3600, IdentityKind.USER, "obo")


@pytest.mark.parametrize("shape", SHAPES)
async def test_one_malformed_l2_record_is_a_miss_for_its_key_only(
    redis_server: RedisServer, shape: str
) -> None:
    """Replica A fills L2 for a victim and 20 other users; the victim's record is spoiled.
    Replica B acquires for the victim once (a miss) and rewrites the record; the 20 others are
    served from L2 (no acquisition, no store failure), and a third replica is served the
    victim's new token."""
    namespace = f"spoil{free_port()}:"
    keyring = Keyring.generate()
    stores = [RedisStore.from_url(redis_server.url, namespace=namespace) for _ in range(3)]
    a, b, c = (SharedTokenCache(store, keyring) for store in stores)
    acquire = Acquisitions()
    admin = redis_server.client()
    try:
        await TokenCache(shared=a).get_or_acquire_async(_key("victim"), acquire)
        (victim,) = admin.keys(f"{namespace}ep:v1:tok:*")
        for i in range(20):
            await TokenCache(shared=a).get_or_acquire_async(_key(f"user{i}"), acquire)
        _spoil(admin, victim, shape)
        acquire.count = 0
        cache_b = TokenCache(shared=b)
        from_b = await cache_b.get_or_acquire_async(_key("victim"), acquire)
        assert from_b is not None
        assert acquire.count == 1  # the victim's record: a miss
        for i in range(20):
            assert await cache_b.get_or_acquire_async(_key(f"user{i}"), acquire) is not None
        assert acquire.count == 1  # the others: served from L2
        assert b.failures == 0  # the shared cache stayed on
        assert b.hits == 20
        assert b.fenced == 0
        from_c = await TokenCache(shared=c).get_or_acquire_async(_key("victim"), acquire)
        assert from_c is not None
        assert from_c.token == from_b.token  # B's write replaced the malformed record
        assert acquire.count == 1
    finally:
        admin.close()
        for store in stores:
            await store.aclose()


@pytest.mark.parametrize("shape", SHAPES)
def test_the_blocking_twin_reads_a_malformed_record_as_a_miss_and_replaces_it(
    redis_server: RedisServer, shape: str
) -> None:
    namespace = f"spoils{free_port()}:"
    store = RedisStore.from_url(redis_server.url, namespace=namespace)
    twin = store.sync()
    admin = redis_server.client()
    try:
        version = twin.put("k", b"v", ttl=60, expect=None)
        assert version is not None
        _spoil(admin, f"{namespace}k".encode(), shape)
        assert twin.get("k") is None
        assert twin.put("k", b"w", ttl=60, expect=version) is None  # not the version read
        assert not twin.delete("k", expect=version)
        written = twin.put("k", b"w", ttl=60, expect=None)  # as good as absent
        assert written is not None
        entry = twin.get("k")
        assert entry is not None
        assert (entry.value, entry.version) == (b"w", written)
        assert 0 < int(admin.pttl(f"{namespace}k")) <= 60_000
        # a record of ours is never overwritten by a write-if-absent
        assert twin.put("k", b"x", ttl=60, expect=None) is None
    finally:
        admin.close()
        twin.close()


@pytest.mark.parametrize("shape", ["non_ascii", "wrong_type"])
async def test_a_malformed_grant_or_binding_asks_the_user_to_sign_in_again(
    consent_env: ConsentEnv, redis_server: RedisServer, shape: str
) -> None:
    """A spoiled grant is no grant: ``ConsentRequired`` with a link (not a store failure, for
    ever). A spoiled binding does not stop the broker: the user signs in again, the grant and
    binding are written anew, and the user is served."""
    env = consent_env
    namespace = f"spoilg{free_port()}:"
    keyring = Keyring.generate()
    store = RedisStore.from_url(redis_server.url, namespace=namespace)
    broker: StandaloneBroker | None = None
    admin = redis_server.client()
    try:
        source = env.make(store=store, keyring=keyring)[0]  # type: ignore[arg-type]
        broker = StandaloneBroker(
            env, RedisStore.from_url(redis_server.url, namespace=namespace), keyring
        )
        request = await consent(env, source, "rita", f"chat-rita-spoiled-{shape}")
        assert await source.get_token_async(request) is not None
        (grant,) = admin.keys(f"{namespace}ep:*:grant:*")
        (binding,) = admin.keys(f"{namespace}ep:*:bind:*")
        _spoil(admin, grant, shape)
        with pytest.raises(ConsentRequired) as info:
            await source.get_token_async(request)
        assert info.value.link is not None
        _spoil(admin, binding, shape)
        key = UserKey.from_caller(request.caller)
        assert key is not None
        page = await follow_link(env, source.consent_link(key, request.scopes))
        assert page.status_code == 200, page.text[:300]
        assert await source.get_token_async(request) is not None
        assert admin.type(grant) == b"string"
        assert admin.type(binding) == b"string"
    finally:
        admin.close()
        await store.aclose()
        if broker is not None:
            await broker.aclose()
