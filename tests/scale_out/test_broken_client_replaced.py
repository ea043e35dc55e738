"""A Redis client that breaks for good is replaced, and its internal failures are typed.

redis-py 5.x (the oldest supported) has two such failures, seen against a real 3-node cluster
whose primary was killed and restarted: the cluster client, after a re-initialisation that
failed while the node was down, answers every later call "Redis Cluster cannot be connected ...
reachable node: None" although the cluster is back (the store was unusable until the process
restarted); and a connection lost mid-handshake raises ``AttributeError: 'NoneType' object has
no attribute 'writelines'`` out of the client (an untyped error to the caller, and out of
``ping()``, which never raises). Both are injected here into a real store's client, on the
newest redis-py, where they do not happen by themselves."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import RedisClusterException

from entra_passthrough import SourceUnavailable
from entra_passthrough.redis import RedisStore

from ._server import RedisServer, free_port


def _fail_once(store: Any, exc: BaseException) -> Any:
    """The store's current client raises ``exc`` at its next GET; returns that client."""
    bound = store._unclaimed or next(iter(store._loops.values()))
    client = bound.client
    get = client.get

    async def failing(*args: Any, **kwargs: Any) -> Any:
        client.get = get
        raise exc

    client.get = failing
    return client


@pytest.mark.parametrize(
    "failure",
    [
        RedisClusterException(
            "Redis Cluster cannot be connected. Please provide at least one reachable node: None"
        ),
        AttributeError("'NoneType' object has no attribute 'writelines'"),
    ],
    ids=["cluster-cannot-connect", "torn-connection"],
)
async def test_a_client_that_broke_is_replaced_and_its_failure_typed(
    redis_server: RedisServer, failure: BaseException
) -> None:
    store = RedisStore.from_url(redis_server.url, namespace=f"broken{free_port()}:")
    try:
        assert await store.put("k", b"v", ttl=30) is not None
        first = _fail_once(store, failure)
        with pytest.raises(SourceUnavailable) as info:
            await store.get("k")
        assert "The shared token store is unavailable" in str(info.value)
        entry = await store.get("k")  # a new client: the store works again
        assert entry is not None
        assert entry.value == b"v"
        bound = next(iter(store._loops.values()))
        assert bound.client is not first
        assert await store.ping()
    finally:
        await store.aclose()


async def test_ping_never_raises_on_a_torn_client(redis_server: RedisServer) -> None:
    store = RedisStore.from_url(redis_server.url, namespace=f"broken{free_port()}:")
    try:
        assert await store.ping()
        bound = next(iter(store._loops.values()))
        client = bound.client
        ping = client.ping

        async def torn(*args: Any, **kwargs: Any) -> Any:
            client.ping = ping
            raise AttributeError("'NoneType' object has no attribute 'writelines'")

        client.ping = torn
        assert await store.ping() is False
        assert await store.ping()  # a new client
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    "failure",
    [
        RedisClusterException(
            "Redis Cluster cannot be connected. Please provide at least one reachable node: None"
        ),
        AttributeError("'NoneType' object has no attribute 'writelines'"),
        TypeError("'NoneType' object is not subscriptable"),
    ],
    ids=["cluster-cannot-connect", "torn-connection", "torn-state"],
)
def test_the_blocking_twin_replaces_a_client_that_broke_too(
    redis_server: RedisServer, failure: BaseException
) -> None:
    """``RedisStore.sync()`` (the sync API's store): the same failures, typed, and a new
    client at the next call (before, the twin kept the broken client until the process
    restarted, and the torn state's error reached the caller untyped)."""
    store = RedisStore.from_url(redis_server.url, namespace=f"broken{free_port()}:")
    twin = store.sync()
    try:
        assert twin.put("k", b"v", ttl=30) is not None
        first = twin.client
        get = first.get

        def failing(*args: Any, **kwargs: Any) -> Any:
            first.get = get  # type: ignore[method-assign]
            raise failure

        first.get = failing  # type: ignore[method-assign]
        with pytest.raises(SourceUnavailable) as info:
            twin.get("k")
        assert "The shared token store is unavailable" in str(info.value)
        entry = twin.get("k")  # a new client: the store works again
        assert entry is not None
        assert entry.value == b"v"
        assert twin.client is not first
        assert twin.put("k", b"w", ttl=30) is not None  # its scripts are the new client's
    finally:
        twin.close()
