"""A RedisStore's per-event-loop connections are closed with their loop, and ``aclose`` closes
them all, over a real redis-server: many short-lived loops (``asyncio.run`` per request) leave
no connection open in Redis and no ResourceWarning."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import warnings

import pytest
import redis

from entra_passthrough.redis import RedisStore

from ._server import RedisServer


@pytest.fixture
def server(fresh_redis: RedisServer) -> RedisServer:
    """A server of its own: its connections are the store's only."""
    return fresh_redis.start()


def _open_connections(admin: redis.Redis, *, expect: int) -> int:
    """Connections other than ``admin``'s, polled until ``expect`` (Redis sees a closed socket
    a moment after the client closed it); the last count if it never gets there."""
    count = -1
    for _ in range(300):  # bounded (~3 s)
        count = len(admin.client_list(_type="normal")) - 1
        if count == expect:
            return count
        time.sleep(0.01)
    return count


async def _use(store: RedisStore, calls: int = 5) -> None:
    """Several calls at once: the loop's pool opens several connections."""
    await asyncio.gather(*(store.get(f"k{i}") for i in range(calls)))


def test_short_lived_event_loops_leave_no_connection_open(server: RedisServer) -> None:
    store = RedisStore.from_url(server.url)
    admin = server.client()
    gc.collect()  # what earlier tests left is collected before we record
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(20):
                asyncio.run(_use(store))
            # each loop closed its connections as it shut down
            assert _open_connections(admin, expect=0) == 0
            gc.collect()
        leaks = [
            str(w.message)
            for w in caught
            if issubclass(w.category, ResourceWarning) and str(server.port) in str(w.message)
        ]
        assert leaks == []
        asyncio.run(_use(store))  # and the store still works on a new loop
    finally:
        admin.close()


def test_aclose_closes_the_connections_of_every_running_loop(server: RedisServer) -> None:
    """A broker on a thread of its own (its loop keeps running) and the main loop use one
    store: ``aclose`` on the main loop closes both loops' connections."""
    store = RedisStore.from_url(server.url)
    admin = server.client()
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, name="broker-loop")
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(_use(store, 3), other).result(timeout=30)

        async def main() -> int:
            await _use(store, 2)
            opened = _open_connections(admin, expect=5)
            await store.aclose()
            return opened

        assert asyncio.run(main()) >= 2  # 3 on the thread's loop, 2 on this one
        assert _open_connections(admin, expect=0) == 0
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join(timeout=30)
        other.run_until_complete(other.shutdown_asyncgens())
        other.close()
        admin.close()


def test_a_loop_closed_by_hand_is_named_in_a_warning(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A loop closed without ``shutdown_asyncgens`` cannot close its connections any more: the
    next loop says so, and how to avoid it."""
    store = RedisStore.from_url(server.url)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(_use(store, 1))
    loop.close()
    del loop
    with warnings.catch_warnings():
        # the abandoned connection's own ResourceWarning, when it is collected here (the
        # store's ``client`` is that first loop's)
        warnings.simplefilter("ignore", ResourceWarning)
        with caplog.at_level(logging.WARNING, logger="entra_passthrough.redis"):
            asyncio.run(_use(store, 1))
        del store
        gc.collect()
    assert "shutdown_asyncgens" in caplog.text
    assert "store.aclose()" in caplog.text
    assert "password" not in caplog.text
