"""The sync API's twin of test_lease_release_after_a_failed_write.py: a holder (threads,
``SyncRedisStore``) whose fencing check the store failed keeps the token for its own caller,
shares nothing, and releases its lease in the background, so the other replicas' callers
waiting on that lease acquire at once rather than wait it out. Over a real redis-server."""

from __future__ import annotations

import threading
import time
from typing import Any

from entra_passthrough import IdentityKind, TokenCache, TokenResult
from entra_passthrough._l2 import SharedTokenCache
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore, SyncRedisStore

from ._server import RedisServer

KEY = ("obo", ("client", "tenant", "sha256-of-assertion"), ("api://mcp/.default",), None, ())
LEASE = 6.0


def _fail_the_fencing_check(store: SyncRedisStore) -> list[str]:
    """The first compare-and-set renewal of a lease (the holder's check right before it writes)
    fails as a lost reply would."""
    put = store.put
    failed: list[str] = []

    def spied(key: str, value: bytes, **kw: Any) -> str | None:
        if key.startswith("ep:v1:tokl:") and isinstance(kw.get("expect"), str) and not failed:
            failed.append(key)
            raise ConnectionError("the reply was lost")
        return put(key, value, **kw)

    store.put = spied  # type: ignore[method-assign]
    return failed


def test_the_other_replicas_do_not_wait_out_the_lease(redis_server: RedisServer) -> None:
    keyring = Keyring.generate()
    store_a = RedisStore.from_url(redis_server.url, namespace="sync-release:", timeout=1.0)
    store_b = RedisStore.from_url(redis_server.url, namespace="sync-release:", timeout=1.0)
    sync_a, sync_b = store_a.sync(), store_b.sync()
    failed = _fail_the_fencing_check(sync_a)
    a = TokenCache(shared=SharedTokenCache(store_a, keyring, lease=LEASE, sync_store=sync_a))
    b = TokenCache(
        shared=SharedTokenCache(store_b, keyring, lease=LEASE, wait=LEASE * 4, sync_store=sync_b)
    )
    go = threading.Event()
    calls: list[str] = []
    got: dict[str, TokenResult | None] = {}

    def entra(name: str, wait: bool) -> TokenResult:
        calls.append(name)
        if wait:
            go.wait(LEASE * 2)
        return TokenResult(f"token-{name}", time.time() + 3600, IdentityKind.USER, "obo")

    def run(name: str, cache: TokenCache, wait: bool) -> None:
        got[name] = cache.get_or_acquire(KEY, lambda: entra(name, wait))

    first = threading.Thread(target=run, args=("a", a, True), daemon=True)
    second = threading.Thread(target=run, args=("b", b, False), daemon=True)
    try:
        first.start()
        for _ in range(500):  # bounded: until A holds the lease
            if calls:
                break
            time.sleep(0.01)
        second.start()
        time.sleep(0.3)  # B waits on A's lease
        go.set()
        first.join(LEASE * 4)
        a_done = time.monotonic()
        assert failed  # A's check failed: it kept its token and shared nothing
        assert got["a"] is not None
        assert got["a"].token == "token-a"
        second.join(LEASE * 4)
        waited = time.monotonic() - a_done
        # Released at once, well before it would have run out (its TTL alone: the whole lease).
        assert waited < LEASE / 2, f"B waited {waited:.1f} s for a lease A had given up"
        assert got["b"] is not None
        assert got["b"].token == "token-b"  # B acquired: A's result was not shared
        assert calls == ["a", "b"]
    finally:
        go.set()
        first.join(LEASE * 4)
        second.join(LEASE * 4)
        sync_a.close()
        sync_b.close()
