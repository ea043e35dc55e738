"""``RedisStore.aclose()`` while calls are in flight (an app shutting down with requests still
running), over real redis-servers: redis-py re-sends those calls on connections it opens again,
and the store closes these too when the last call ends. Before, they stayed open in Redis until
the garbage collector found them, and their ResourceWarnings (unclosed socket, transport) failed
whichever test ran then."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from collections.abc import Iterator

import pytest
import redis

from entra_passthrough.redis import RedisStore

from ._server import RedisClusterServers, RedisServer

CALLS = 5


def _others(admins: list[redis.Redis], *, expect: int) -> int:
    """The connections other than the admins' on every node, polled until ``expect`` (Redis
    sees a closed socket a moment after the client closed it); the last count otherwise."""
    count = -1
    for _ in range(300):  # bounded (~3 s)
        count = sum(len(a.client_list(_type="normal")) - 1 for a in admins)
        if count == expect:
            return count
        time.sleep(0.01)
    return count


async def _close_while_calls_wait(store: RedisStore, admins: list[redis.Redis]) -> None:
    """Calls sent, held by Redis (CLIENT PAUSE) while the store is closed; they end after."""
    for i in range(CALLS):  # connections made, scripts loaded: the calls below are in flight
        await store.put(f"ep:v1:tok:{i:064x}", b"v", ttl=30, expect=None)
    for admin in admins:
        admin.execute_command("CLIENT", "PAUSE", "400", "ALL")
    calls = [asyncio.create_task(store.get(f"ep:v1:tok:{i:064x}")) for i in range(CALLS)]
    await asyncio.sleep(0.1)  # sent; Redis holds them
    await store.aclose()
    done = await asyncio.gather(*calls, return_exceptions=True)
    assert not [r for r in done if isinstance(r, BaseException) and not isinstance(r, Exception)]


def _leaks(ports: list[int], run: object) -> tuple[list[str], int]:
    """ResourceWarnings naming one of ``ports`` while ``run`` (an ``asyncio.run`` of the
    scenario) and a collection run."""
    gc.collect()  # what earlier tests left is collected before we record
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        assert callable(run)
        run()
        gc.collect()
    said = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    return [s for s in said if any(str(p) in s for p in ports)], len(said)


def test_a_call_in_flight_during_aclose_leaves_no_connection_open(
    fresh_redis: RedisServer,
) -> None:
    server = fresh_redis.start()
    admin = server.client()
    try:
        store = RedisStore.from_url(server.url, timeout=5)
        leaks, _ = _leaks(
            [server.port], lambda: asyncio.run(_close_while_calls_wait(store, [admin]))
        )
        assert _others([admin], expect=0) == 0, "connections reopened by calls in flight"
        assert leaks == []
    finally:
        admin.close()


@pytest.fixture
def cluster() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(masters=3)
    try:
        yield servers.start()
    finally:
        servers.stop()


def test_a_call_in_flight_during_aclose_leaves_no_cluster_connection_open(
    cluster: RedisClusterServers,
) -> None:
    admins = [node.client() for node in cluster.nodes]
    try:
        store = RedisStore.from_url(cluster.url, cluster=True, timeout=5)
        leaks, _ = _leaks(
            [n.port for n in cluster.nodes],
            lambda: asyncio.run(_close_while_calls_wait(store, admins)),
        )
        assert _others(admins, expect=0) == 0, "connections reopened by calls in flight"
        assert leaks == []
    finally:
        for admin in admins:
            admin.close()
