"""An acquisition of the shared cache (L2) cancelled while it takes, uses or releases its lease
leaves no lease behind: the same user's next request, on any replica, acquires at once instead
of waiting the lease out (10 s by default). Over a real redis-server. (``TokenCache`` runs its
leader's acquisition in a task of its own that a caller's cancel does not reach; the L2
acquisition is cancelled directly here, as a loop's shutdown or another cache would.)

* asyncio: the cancel lands while the lease's write-if-absent is in flight (its reply held 1 s
  by the tests' ``DropProxy``). Redis ran the write, and its version used to be lost with the
  cancelled call, so nobody released the lease.
* anyio (level-triggered: every await after the cancel is cancelled again, as under Starlette
  and the mcp SDK): the cancel lands during the acquisition after the replica's connection
  dropped, so the release in ``finally`` had to reconnect and was cancelled before it sent
  anything."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest

from entra_passthrough import IdentityKind, TokenCache, TokenResult
from entra_passthrough._l2 import SharedTokenCache
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._dropproxy import DropProxy
from ._server import RedisServer

WARM = ("obo", ("client", "tenant", "warm-up"), ("api://mcp/.default",), None, ())
KEY = ("obo", ("client", "tenant", "sha256-of-assertion"), ("api://mcp/.default",), None, ())
LEASE = 8.0


def _token(name: str) -> TokenResult:
    return TokenResult(name, time.time() + 3600, IdentityKind.USER, "obo")


def _leases(server: RedisServer, namespace: str) -> list[bytes]:
    return list(server.client().keys(namespace + "ep:v1:tokl:*"))


async def _next_request_takes(server: RedisServer, namespace: str, keyring: Keyring) -> float:
    """Seconds the same user's next request takes on another replica (fresh L1)."""
    store = RedisStore.from_url(server.url, namespace=namespace)
    other = TokenCache(shared=SharedTokenCache(store, keyring, lease=LEASE, wait=LEASE * 2))

    async def entra() -> TokenResult:
        return _token("other")

    try:
        start = time.monotonic()
        got = await asyncio.wait_for(other.get_or_acquire_async(KEY, entra), LEASE * 3)
        assert got is not None
        return time.monotonic() - start
    finally:
        await store.aclose()


async def test_a_cancel_during_the_lease_write(redis_server: RedisServer) -> None:
    namespace = "cancel-take:"
    keyring = Keyring.generate()
    proxy = await DropProxy(redis_server.port).start()
    store = RedisStore.from_url(proxy.url(redis_server.url), namespace=namespace, timeout=5)
    shared = SharedTokenCache(store, keyring, lease=LEASE, wait=LEASE * 2)
    cache = TokenCache(shared=shared)
    acquired: list[str] = []

    async def entra() -> TokenResult:
        acquired.append("a")
        return _token("a")

    try:
        await cache.get_or_acquire_async(WARM, entra)  # connections and scripts
        proxy.delay = 1.0
        proxy.arm(b"tokl:")  # the lease write's reply comes 1 s late
        request = asyncio.ensure_future(shared.wrap(TokenCache(), KEY, entra, None)())
        for _ in range(300):  # bounded: until the lease write is in flight
            if proxy.matched:
                break
            await asyncio.sleep(0.01)
        assert proxy.matched
        await asyncio.sleep(0.2)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert acquired == ["a"]  # only the warm-up: the cancelled request acquired nothing
        # Redis ran the write: the lease is there, and released once its answer comes.
        took = await _next_request_takes(redis_server, namespace, keyring)
        assert took < LEASE / 4, f"the next request waited {took:.1f} s for a lease nobody held"
        assert _leases(redis_server, namespace) == []
    finally:
        await store.aclose()
        await proxy.close()


async def test_an_anyio_cancel_after_the_connection_dropped(redis_server: RedisServer) -> None:
    namespace = "cancel-anyio:"
    keyring = Keyring.generate()
    store = RedisStore.from_url(redis_server.url, namespace=namespace, timeout=5)
    shared = SharedTokenCache(store, keyring, lease=LEASE, wait=LEASE * 2)
    cache = TokenCache(shared=shared)
    killed: list[int] = []

    async def warm() -> TokenResult:
        return _token("warm")

    async def entra() -> TokenResult:
        # The replica's connections drop while Entra answers (a failover, CLIENT KILL, an
        # idle timeout): the release must open a new one.
        killed.append(int(redis_server.client().client_kill_filter(_type="normal", skipme=True)))
        await asyncio.sleep(LEASE)  # cancelled by the scope below
        return _token("a")

    try:
        await cache.get_or_acquire_async(WARM, warm)
        with anyio.move_on_after(0.5) as scope:
            await shared.wrap(TokenCache(), KEY, entra, None)()
        assert scope.cancelled_caught
        assert killed
        assert killed[0] >= 1
        took = await _next_request_takes(redis_server, namespace, keyring)
        assert took < LEASE / 4, f"the next request waited {took:.1f} s for a lease nobody held"
        assert _leases(redis_server, namespace) == []
    finally:
        await store.aclose()
