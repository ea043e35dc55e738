"""Redis stalls (SIGSTOP: a fork, a swap storm, ``DEBUG SLEEP``) while a replica holds the L2
lease and Entra answers: the caller, who has its token, waits for one failed store call (the
fencing check, i.e. about twice the command timeout with its one retry), not for a lease
release on top of it. Counted in store calls made after the token was in hand."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from entra_passthrough import IdentityKind, TokenCache, TokenResult
from entra_passthrough._l2 import SharedTokenCache
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore, SyncRedisStore

from ._server import RedisServer

KEY = ("obo", ("client", "tenant", "sha256-of-assertion"), ("api://mcp/.default",), None, ())
TIMEOUT = 0.3  # the store's command timeout: a stalled call costs ~2x (one retry)


class Stall:
    """SIGSTOP / SIGCONT of the test's own redis-server; always resumed at the end."""

    def __init__(self, server: RedisServer) -> None:
        assert server.proc is not None
        self.pid = server.proc.pid
        self.stopped = False

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        if self.stopped:
            os.kill(self.pid, signal.SIGCONT)
            self.stopped = False


@pytest.fixture
def stalled(fresh_redis: RedisServer) -> Iterator[tuple[RedisServer, Stall]]:
    fresh_redis.start()
    stall = Stall(fresh_redis)
    try:
        yield fresh_redis, stall
    finally:
        stall.resume()


class Calls:
    """The store calls (``put``/``delete``) made after ``armed`` was set."""

    def __init__(self) -> None:
        self.armed = False
        self.armed_at = 0.0
        self.after: list[str] = []

    def spy(self, store: Any) -> None:
        for name in ("put", "delete"):
            original = getattr(store, name)
            if asyncio.iscoroutinefunction(original):
                setattr(store, name, self._async(name, original))
            else:
                setattr(store, name, self._sync(name, original))

    def _async(self, name: str, original: Any) -> Any:
        async def spied(*args: Any, **kwargs: Any) -> Any:
            if self.armed:
                self.after.append(name)
            return await original(*args, **kwargs)

        return spied

    def _sync(self, name: str, original: Any) -> Any:
        def spied(*args: Any, **kwargs: Any) -> Any:
            if self.armed:
                self.after.append(name)
            return original(*args, **kwargs)

        return spied


async def test_a_stall_after_the_token_is_in_hand_costs_one_failed_call(
    stalled: tuple[RedisServer, Stall],
) -> None:
    """The store stalls while the holder acquires: the fencing check fails (the store is
    marked down, the token not shared) and the caller gets its token without waiting for a
    lease release: that is tried in the background."""
    server, stall = stalled
    store = RedisStore.from_url(server.url, timeout=TIMEOUT)
    shared = SharedTokenCache(store, Keyring.generate(), lease=5.0)
    calls = Calls()
    calls.spy(store)

    async def acquire() -> TokenResult:
        stall.stop()  # Redis freezes while Entra answers
        calls.armed, calls.armed_at = True, time.monotonic()
        return TokenResult("token", time.time() + 3600, IdentityKind.USER, "obo")

    try:
        result = await TokenCache(shared=shared).get_or_acquire_async(KEY, acquire)
        waited = time.monotonic() - calls.armed_at
        assert result is not None
        assert result.token == "token"
        # One failed call (the fencing check: ~2x the timeout, one retry), no release waited for
        # on top of it: the release runs in the background.
        assert calls.after[:1] == ["put"]
        assert calls.after[1:] in ([], ["delete"])
        assert waited < 3 * TIMEOUT
        assert shared.failures == 1
    finally:
        stall.resume()
        await store.aclose()


def test_sync_a_stall_after_the_token_is_in_hand_costs_one_failed_call(
    stalled: tuple[RedisServer, Stall],
) -> None:
    """The same through the blocking twin (the sync API)."""
    server, stall = stalled
    store = RedisStore.from_url(server.url, timeout=TIMEOUT)
    twin: SyncRedisStore = store.sync()
    shared = SharedTokenCache(store, Keyring.generate(), lease=5.0, sync_store=twin)
    calls = Calls()
    calls.spy(twin)
    done = threading.Event()

    def acquire() -> TokenResult:
        stall.stop()
        calls.armed, calls.armed_at = True, time.monotonic()
        return TokenResult("token", time.time() + 3600, IdentityKind.USER, "obo")

    try:
        result = TokenCache(shared=shared).get_or_acquire(KEY, acquire)
        waited = time.monotonic() - calls.armed_at
        done.set()
        assert result is not None
        assert calls.after[:1] == ["put"]
        assert calls.after[1:] in ([], ["delete"])
        assert waited < 3 * TIMEOUT
        assert shared.failures == 1
    finally:
        stall.resume()
        twin.close()
