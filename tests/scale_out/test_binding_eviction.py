"""A platform user's binding ("first binding wins") survives Redis' memory pressure under the
``volatile-*`` eviction policies (Azure Cache for Redis defaults to ``volatile-lru``): it is
written without a TTL, which no ``volatile-*`` policy evicts, so a forwarded consent link still
cannot bind the chat user to another account once the grant is gone. A binding an earlier
version wrote with a TTL loses it when next read; an ``allkeys-*`` policy, which can evict it
anyway, is logged once. Real redis-server, real MSAL, the emulator and the broker over HTTPS."""

from __future__ import annotations

import json
import logging
import os
import time

import pytest

from _support.consent import (
    ConsentEnv,
    consent_link,
    follow_link,
    platform_caller,
    submit_form_post,
    with_login_hint,
)
from entra_passthrough._grants import _BINDING, GrantStore, _app_id
from entra_passthrough._store import Keyring
from entra_passthrough._user_key import UserKey
from entra_passthrough.redis import RedisStore

from ._broker import StandaloneBroker
from ._server import RedisServer

#: What the shared token cache writes: sealed access tokens of about 1.8 kB with a 1 h TTL.
_ENTRY = os.urandom(900).hex().encode()
_PRESSURE = 6000  # about 11 MB of entries into a 4 MB Redis


@pytest.mark.parametrize("policy", ["volatile-lru", "volatile-lfu", "volatile-random"])
async def test_a_binding_outlives_memory_pressure_and_still_refuses_another_account(
    consent_env: ConsentEnv, policy: str
) -> None:
    env = consent_env
    server = RedisServer(persist=False, maxmemory="4mb").start()
    admin = server.client()
    admin.config_set("maxmemory-policy", policy)
    keyring = Keyring.generate()
    store = RedisStore.from_url(server.url, timeout=2)
    source = env.make(store=store, keyring=keyring)[0]  # type: ignore[arg-type]
    broker = StandaloneBroker(env, RedisStore.from_url(server.url), keyring)
    alice, bob = env.idp.users["alice"], env.idp.users["bob"]
    try:
        caller = platform_caller(f"evict-{policy}-{time.monotonic_ns()}", upn=alice.upn)
        assert (await follow_link(env, await consent_link(source, env, caller))).status_code == 200
        bindings = admin.keys("ep:v2:bind:*")
        assert len(bindings) == 1
        pipe = admin.pipeline(transaction=False)
        for i in range(_PRESSURE):
            pipe.set(f"ep:v1:tok:{i:064x}", _ENTRY, px=3_600_000)
            if i % 500 == 499:
                pipe.execute()
        pipe.execute()
        assert int(admin.info("stats")["evicted_keys"]) > 1000  # the pressure was real
        # Alice's grant goes (signed out, expired or evicted): only the binding guards the chat
        # user now. Bob gets her chat user's consent link and signs in as himself.
        key = UserKey.from_caller(caller)
        assert key is not None
        await source.grants.delete_grant(key.hashed)
        async with env.browser() as browser:
            start = await browser.get(
                await consent_link(source, env, caller), follow_redirects=False
            )
            location = with_login_hint(start.headers["location"], alice.upn, bob.upn)
            answer = await submit_form_post(browser, await browser.get(location))
        assert answer.status_code == 400
        assert "user_mismatch" in answer.text
        assert await source.grants.get_grant(key.hashed) is None
        assert await source.grants.get_binding(key.hashed) == (alice.tenant_id, alice.oid)
        assert admin.pttl(bindings[0]) == -1  # no TTL: nothing a volatile-* policy evicts
    finally:
        admin.close()
        await store.aclose()
        await broker.aclose()
        server.stop()


async def test_a_binding_written_with_a_ttl_loses_it_when_read(
    redis_server: RedisServer,
) -> None:
    """Bindings an earlier version wrote carry a 400-day TTL: the next read (every refresh of
    the user's grant, every sign-in) rewrites them without one, once, keeping the account."""
    keyring = Keyring.generate()
    store = RedisStore.from_url(redis_server.url)
    admin = redis_server.client()
    grants = GrantStore(store, keyring, client_id="11111111-2222-3333-4444-555555555555")
    hashed = UserKey.for_platform_user(f"earlier-{time.monotonic_ns()}").hashed
    name = _BINDING + _app_id(grants.client_id, hashed)
    old = json.dumps({"tid": "tenant-1", "oid": "oid-1"}).encode()  # an earlier version's record
    try:
        assert await grants._put(name, old, ttl=400 * 24 * 3600.0, expect=None)
        assert admin.pttl(name) > 0
        assert await grants.get_binding(hashed) == ("tenant-1", "oid-1")
        assert admin.pttl(name) == -1
        version = (await store.get(name)).version  # type: ignore[union-attr]
        assert await grants.get_binding(hashed) == ("tenant-1", "oid-1")
        assert (await store.get(name)).version == version  # type: ignore[union-attr]
        assert not await grants.bind(hashed, "tenant-2", "oid-2")  # first binding still wins
        # The blocking twin (sync drivers) writes bindings without a TTL too.
        twin = grants.blocking()
        other = UserKey.for_platform_user(f"sync-{time.monotonic_ns()}").hashed
        assert await twin.bind(other, "tenant-3", "oid-3")
        assert admin.pttl(_BINDING + _app_id(grants.client_id, other)) == -1
        # A fleet mid-upgrade, across a key switch: an earlier replica re-seals a marked record
        # as it came, under the new key, with its TTL. The mark names the key it was written
        # under, so the record is rewritten without a TTL when read.
        for mark in ("k0", True):  # another key's id; a bare mark, whatever key sealed it
            third = UserKey.for_platform_user(f"mixed-{time.monotonic_ns()}").hashed
            name3 = _BINDING + _app_id(grants.client_id, third)
            marked = json.dumps({"tid": "tenant-4", "oid": "oid-4", "persist": mark}).encode()
            assert await grants._put(name3, marked, ttl=400 * 24 * 3600.0, expect=None)
            assert admin.pttl(name3) > 0
            assert await grants.get_binding(third) == ("tenant-4", "oid-4")
            assert admin.pttl(name3) == -1, mark
    finally:
        admin.close()
        await store.aclose()


@pytest.mark.parametrize(
    ("policy", "warned"),
    [("allkeys-lru", True), ("allkeys-lfu", True), ("volatile-ttl", False), ("noeviction", False)],
)
async def test_an_allkeys_policy_is_logged_once(
    fresh_redis: RedisServer, caplog: pytest.LogCaptureFixture, policy: str, warned: bool
) -> None:
    fresh_redis.maxmemory = "64mb"
    fresh_redis.start()
    admin = fresh_redis.client()
    admin.config_set("maxmemory-policy", policy)
    admin.close()
    store = RedisStore.from_url(fresh_redis.url)
    try:
        with caplog.at_level(logging.WARNING, logger="entra_passthrough.redis"):
            for _ in range(3):
                await store.get("ep:v1:tok:x")
                await store.put("ep:v1:tok:x", b"v", ttl=5)
                store.sync().get("ep:v1:tok:x")
    finally:
        await store.aclose()
    logged = [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(logged) == (1 if warned else 0)
    if warned:
        text = logged[0].getMessage()
        assert policy in text
        assert "volatile-ttl or noeviction" in text
        assert "binding" in text
        assert fresh_redis.password not in text
