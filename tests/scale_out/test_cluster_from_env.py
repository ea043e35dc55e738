"""``ENTRA_PASSTHROUGH_REDIS_CLUSTER`` turns the cluster client on for ``RedisStore.from_env`` (and
so for ``shared_token_cache()`` and the standalone broker), against three real redis-server
masters on loopback; unset, a single-node store on the cluster names the variable as the fix."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from entra_passthrough import ConfigurationError, SourceUnavailable
from entra_passthrough.redis import RedisStore

from ._server import RedisClusterServers, free_port

VARIABLE = "ENTRA_PASSTHROUGH_REDIS_CLUSTER"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(masters=3)
    try:
        yield servers.start()
    finally:
        servers.stop()


def _env(cluster: RedisClusterServers, **more: str) -> dict[str, str]:
    return {
        "ENTRA_PASSTHROUGH_REDIS_URL": cluster.url,
        "ENTRA_PASSTHROUGH_REDIS_NAMESPACE": f"env{free_port()}:",
        **more,
    }


NAMES = [f"ep:v1:tok:{i:064x}" for i in range(24)]


async def test_the_variable_turns_the_cluster_client_on(cluster: RedisClusterServers) -> None:
    store = RedisStore.from_env(_env(cluster, **{VARIABLE: "true"}))
    try:
        assert "cluster" in repr(store)
        for name in NAMES:  # every node's keys
            assert await store.put(name, b"v", ttl=30, expect=None)
            entry = await store.get(name)
            assert entry is not None
            assert entry.value == b"v"
        assert store.sync().get(NAMES[0]) is not None
    finally:
        await store.aclose()


async def test_unset_a_single_node_store_on_the_cluster_names_the_variable(
    cluster: RedisClusterServers,
) -> None:
    store = RedisStore.from_env(_env(cluster))
    refused: list[str] = []
    try:
        for name in NAMES:
            try:
                await store.get(name)
            except SourceUnavailable as exc:
                refused.append(str(exc))
    finally:
        await store.aclose()
    assert refused, "no key lived on another node"
    assert f"{VARIABLE}=true" in refused[0]


async def test_the_argument_wins_over_the_variable(cluster: RedisClusterServers) -> None:
    store = RedisStore.from_env(_env(cluster, **{VARIABLE: "true"}), cluster=False)
    try:
        assert "cluster" not in repr(store)
    finally:
        await store.aclose()


def test_a_value_that_is_not_a_boolean_is_refused_naming_the_variable(
    cluster: RedisClusterServers,
) -> None:
    with pytest.raises(ConfigurationError, match=VARIABLE):
        RedisStore.from_env(_env(cluster, **{VARIABLE: "sometimes"}))
