"""A sealed record binds the store's namespace, over a real redis-server: a shared-cache entry
or a consent grant copied from one deployment's namespace to another's (same key, same
keyring) does not open there, as docs/scale-out.md says of a moved value. Records sealed the
earlier way (the key alone as associated data) still open, and a binding read that way is
re-sealed with its namespace."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time

import pytest

from entra_passthrough import IdentityKind, TokenCache, TokenResult
from entra_passthrough._grants import GrantStore, StoredGrant, grant_key
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore, SharedTokenCache

from ._server import RedisServer, free_port

KEY = ("obo", ("client", "tenant", "sha256-of-assertion"), ("api://mcp/.default",), None, ())
APP = "11111111-2222-3333-4444-555555555555"
USER = "0" * 64  # a hashed user key


def _grant() -> StoredGrant:
    now = time.time()
    return StoredGrant(
        refresh_token="rt-of-deployment-a",
        scopes=("api://mcp/access_as_user",),
        tid="tid",
        oid="oid",
        upn=None,
        key_kind="platform",
        created=now,
        updated=now,
    )


def _copy(server: RedisServer, source: str, target: str) -> None:
    admin = server.client()
    try:
        admin.set(target, admin.get(source), px=admin.pttl(source))
    finally:
        admin.close()


@pytest.mark.parametrize("from_ns", ["", "deploymentA:"], ids=["no-namespace", "namespace"])
async def test_a_cache_entry_moved_to_another_namespace_does_not_open(
    redis_server: RedisServer, from_ns: str
) -> None:
    keyring = Keyring.generate()
    to_ns = f"deploymentB{free_port()}:"
    from_ns = f"{from_ns[:-1]}{free_port()}:" if from_ns else ""
    a = RedisStore.from_url(redis_server.url, namespace=from_ns)
    b = RedisStore.from_url(redis_server.url, namespace=to_ns)

    def acquire_as(who: str) -> object:
        async def acquire() -> TokenResult:
            return TokenResult(f"token-of-{who}", time.time() + 3600, IdentityKind.USER, "obo")

        return acquire

    try:
        shared_a = SharedTokenCache(a, keyring)
        await TokenCache(shared=shared_a).get_or_acquire_async(KEY, acquire_as("a"))  # type: ignore[arg-type]
        name = "ep:v1:tok:" + keyring.digest("l2-key", _key_text())
        _copy(redis_server, from_ns + name, to_ns + name)
        shared_b = SharedTokenCache(b, keyring)
        got = await TokenCache(shared=shared_b).get_or_acquire_async(KEY, acquire_as("b"))  # type: ignore[arg-type]
        assert got is not None
        assert got.token == "token-of-b"  # before: deployment B served deployment A's token
        assert shared_b.hits == 0
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_grant_moved_to_another_namespace_does_not_open(
    redis_server: RedisServer,
) -> None:
    keyring = Keyring.generate()
    from_ns, to_ns = f"deploymentA{free_port()}:", f"deploymentB{free_port()}:"
    a = RedisStore.from_url(redis_server.url, namespace=from_ns)
    b = RedisStore.from_url(redis_server.url, namespace=to_ns)
    try:
        assert await GrantStore(a, keyring, client_id=APP).put_grant(USER, _grant()) is not None
        name = grant_key(APP, USER)
        _copy(redis_server, from_ns + name, to_ns + name)
        assert await GrantStore(b, keyring, client_id=APP).get_grant(USER) is None
        assert await GrantStore(a, keyring, client_id=APP).get_grant(USER) is not None
        twin = GrantStore(b, keyring, client_id=APP).blocking()  # the sync API's view: the same
        assert await asyncio.to_thread(asyncio.run, twin.get_grant(USER)) is None
    finally:
        await a.aclose()
        await b.aclose()


async def test_records_sealed_the_earlier_way_still_open(redis_server: RedisServer) -> None:
    """What the previous version wrote (the key alone as associated data): a grant, a binding
    and a shared-cache entry open; the binding is re-sealed with its namespace when read, after
    which a copy of it to another namespace no longer opens."""
    keyring = Keyring.generate()
    ns, other = f"upgrade{free_port()}:", f"other{free_port()}:"
    store = RedisStore.from_url(redis_server.url, namespace=ns)
    elsewhere = RedisStore.from_url(redis_server.url, namespace=other)
    try:
        grants = GrantStore(store, keyring, client_id=APP)
        name = grant_key(APP, USER)
        old = keyring.seal("store", _with_app(_grant()).to_json(), aad=name.encode())
        await store.put(name, old.encode(), ttl=60)
        found = await grants.get_grant(USER)
        assert found is not None
        assert found[0].refresh_token == "rt-of-deployment-a"

        # A binding (written once, never refreshed): opened, then re-sealed with the namespace.
        bind = "ep:v2:bind:" + _app_id(APP, USER)
        await store.put(bind, _old_binding(keyring, bind), ttl=None)
        assert await grants.get_binding(USER) == ("tid", "oid")
        _copy_persistent(redis_server, ns + bind, other + bind)
        assert await GrantStore(elsewhere, keyring, client_id=APP).get_binding(USER) is None
        assert await grants.get_binding(USER) == ("tid", "oid")

        # A shared-cache entry of the previous version: served.
        shared = SharedTokenCache(store, keyring)
        digest = keyring.digest("l2-key", _key_text())
        entry = "ep:v1:tok:" + digest
        plain = (
            '{"t":"old-token","e":%f,"k":"user","s":"obo","h":{}}' % (time.time() + 3600)
        ).encode()
        await store.put(entry, keyring.seal("l2", plain, aad=entry.encode()).encode(), ttl=600)

        async def acquire() -> TokenResult:
            raise AssertionError("the entry of the previous version was not served")

        got = await TokenCache(shared=shared).get_or_acquire_async(KEY, acquire)
        assert got is not None
        assert got.token == "old-token"
    finally:
        await store.aclose()
        await elsewhere.aclose()


def _key_text() -> bytes:
    return json.dumps(KEY, separators=(",", ":"), sort_keys=True).encode()


def _with_app(grant: StoredGrant) -> StoredGrant:
    return dataclasses.replace(grant, client_id=APP)


def _app_id(client_id: str, key_hash: str) -> str:
    return hashlib.sha256(f"{client_id.strip().lower()}\x00{key_hash}".encode()).hexdigest()


def _old_binding(keyring: Keyring, name: str) -> bytes:
    plain = json.dumps({"tid": "tid", "oid": "oid", "persist": keyring.current}).encode()
    return keyring.seal("store", plain, aad=name.encode()).encode()


def _copy_persistent(server: RedisServer, source: str, target: str) -> None:
    admin = server.client()
    try:
        admin.set(target, admin.get(source))
    finally:
        admin.close()
