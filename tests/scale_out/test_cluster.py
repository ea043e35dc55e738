"""A Redis Cluster (Azure Managed Redis's default OSS clustering policy) as the shared store,
against three real redis-server masters on loopback: with ``cluster=True`` the store, its
blocking twin, consent grants through the broker and the shared token cache work with their
keys spread over every node (two replicas share a grant and a token); a single-node store
pointed at the cluster, or a cluster store pointed at a single server, fails typed, saying
which it is and what to set, never "check the Redis server's log"."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from _support.consent import ConsentEnv, follow_link, platform_caller
from entra_passthrough import (
    ConfigurationError,
    ConsentRequired,
    Policy,
    SourceUnavailable,
    TokenCache,
    TokenChain,
    TokenRequest,
)
from entra_passthrough._caller import Caller
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore, SharedTokenCache

from ._broker import StandaloneBroker
from ._server import RedisClusterServers, RedisServer, free_port, obo_chain


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(masters=3)
    try:
        yield servers.start()
    finally:
        servers.stop()


def _names(count: int) -> list[str]:
    return [f"ep:v1:tok:{i:064x}" for i in range(count)]


def _nodes_holding(cluster: RedisClusterServers, prefix: str) -> int:
    return sum(any(k.startswith(prefix.encode()) for k in keys) for keys in cluster.keys().values())


async def test_a_single_node_store_on_a_cluster_names_the_setting(
    cluster: RedisClusterServers,
) -> None:
    """Before: "Redis failed (MovedError). Fix: check the Redis server's log." for the keys
    served by another node than the URL's."""
    store = RedisStore.from_url(cluster.url, timeout=2)
    refusals: list[str] = []
    try:
        for name in _names(12):  # three nodes: most of these keys live on another one
            try:
                await store.put(name, b"sealed", ttl=10, expect=None)
            except SourceUnavailable as exc:
                refusals.append(str(exc))
        assert refusals, "no key landed on another node"
        text = refusals[0]
        for said in ("is a cluster", "MOVED", "cluster=True", "Non-clustered", "Enterprise"):
            assert said in text
        assert "server's log" not in text
        assert "test-redis-password" not in text
        twin = store.sync()
        said = []
        for name in _names(12):  # the blocking twin says the same
            try:
                twin.get(name)
            except SourceUnavailable as exc:
                said.append(str(exc))
        assert said
        assert "cluster=True" in said[0]
    finally:
        await store.aclose()


async def test_the_cluster_store_spreads_keys_over_every_node(
    cluster: RedisClusterServers,
) -> None:
    namespace = f"cl{free_port()}:"
    store = RedisStore.from_url(cluster.url, cluster=True, namespace=namespace, timeout=2)
    twin = store.sync()
    try:
        assert "cluster" in repr(store)
        names = _names(24)
        versions = [await store.put(n, b"v1", ttl=30, expect=None) for n in names]
        assert all(versions)
        assert _nodes_holding(cluster, namespace) == 3
        for name, version in zip(names, versions, strict=True):
            assert await store.put(name, b"again", ttl=30, expect=None) is None  # exists
            entry = twin.get(name)  # the blocking twin reads the async store's writes
            assert entry is not None
            assert (entry.version, entry.value) == (version, b"v1")
            renewed = twin.put(name, b"v2", ttl=30, expect=version)  # compare-and-set
            assert renewed is not None
            assert await store.put(name, b"stale", ttl=30, expect=version) is None
            assert not await store.delete(name, expect=version)
            assert await store.delete(name, expect=renewed)
            assert await store.get(name) is None
        assert await store.ping()
        # A burst of more calls than connections per node waits for a turn, never "Too many
        # connections".
        small = RedisStore.from_url(
            cluster.url, cluster=True, namespace=namespace, max_connections=2, timeout=2
        )
        try:
            got = await asyncio.gather(*(small.get(n) for n in names * 10))
            assert got == [None] * len(got)
        finally:
            await small.aclose()
    finally:
        await store.aclose()


async def test_two_replicas_share_a_grant_and_a_token_on_a_cluster(
    consent_env: ConsentEnv, cluster: RedisClusterServers
) -> None:
    """Consent through the standalone broker on the cluster, then two replicas (each its own
    cluster store) ask for the user at once: one refresh, one token, served by both; OBO users
    over the same cluster: one POST per user."""
    env = consent_env
    keyring = Keyring.generate()
    namespace = f"clg{free_port()}:"
    stores = [RedisStore.from_url(cluster.url, cluster=True, namespace=namespace) for _ in range(3)]
    broker: StandaloneBroker | None = None
    sessions = [env.idp.msal_http_client() for _ in range(2)]
    chains: list[TokenChain] = []
    try:
        sources = [env.make(store=s, keyring=keyring)[0] for s in stores[:2]]  # type: ignore[arg-type]
        broker = StandaloneBroker(env, stores[2], keyring)
        user = env.idp.users["pat"]
        caller = platform_caller("chat-pat-cluster", upn=user.upn)
        request = TokenRequest(scopes=(env.mcp_scope,), caller=caller)
        with pytest.raises(ConsentRequired) as info:
            await sources[0].get_token_async(request)
        assert info.value.link is not None
        assert (await follow_link(env, info.value.link)).status_code == 200
        chains = [
            TokenChain(
                [source],
                policy=Policy.USER_ONLY,
                cache=TokenCache(shared=SharedTokenCache(store, keyring)),
            )
            for source, store in zip(sources, stores[:2], strict=True)
        ]
        before = env.idp.stats()["grants"].get("refresh_token", 0)
        results = await asyncio.gather(
            *(c.get_token_async([env.mcp_scope], caller=caller) for c in chains for _ in range(5))
        )
        assert env.idp.stats()["grants"].get("refresh_token", 0) - before == 1
        assert len({r.token for r in results}) == 1

        # OBO users through the same cluster: their tokens' keys land on every node.
        idp = env.idp
        obo = [
            obo_chain(idp, session, TokenCache(shared=SharedTokenCache(store, keyring)))
            for session, store in zip(sessions, stores[:2], strict=True)
        ]
        chains += obo
        callers = [
            Caller.from_token(idp.user_token(n, audience=idp.agent.client_id))
            for n in ["alice", "bob"] * 4
        ]
        posts = idp.stats()["grants"].get("on_behalf_of", 0)
        scopes = [f"{idp.mcp.app_id_uri}/.default"]
        tokens = await asyncio.gather(
            *(obo[j].get_token_async(scopes, caller=c) for c in callers for j in range(2))
        )
        assert idp.stats()["grants"].get("on_behalf_of", 0) - posts == len(callers)
        assert len({t.token for t in tokens}) == len(callers)
        assert _nodes_holding(cluster, f"{namespace}ep:v1:tok:") >= 2
        # More than one node (every node is checked with chosen names above): these ~12 keys'
        # slots depend on random digests, and missed one of three nodes in about 1 run in 20.
        assert _nodes_holding(cluster, namespace) >= 2
    finally:
        for chain in chains:
            chain.close()
        for store in stores[:2]:
            await store.aclose()
        if broker is not None:
            await broker.aclose()
        for session in sessions:
            session.close()


async def test_a_cluster_store_on_a_single_server_says_so(redis_server: RedisServer) -> None:
    store = RedisStore.from_url(redis_server.url, cluster=True, timeout=2)
    try:
        with pytest.raises(SourceUnavailable, match="is not one") as info:
            await store.get("ep:v1:tok:x")
        assert "drop cluster=True" in str(info.value)
        with pytest.raises(SourceUnavailable, match="is not one"):
            store.sync().get("ep:v1:tok:x")
        assert not await store.ping()
    finally:
        await store.aclose()


async def test_the_cluster_acl_refusal_names_the_slot_map_commands(
    cluster: RedisClusterServers,
) -> None:
    """The documented ACL without CLUSTER SLOTS: redis-py says "Cluster mode is not enabled";
    the store names the ACL and the two commands a cluster client needs; with them it works."""
    user = f"agent{free_port()}"
    documented = "resetkeys ~ep:* -@all +get +set +del +eval +evalsha +script|load +ping"
    admins = [node.client() for node in cluster.nodes]
    try:
        for admin in admins:
            admin.execute_command("ACL", "SETUSER", user, "on", ">pw", *documented.split())
        url = f"redis://{user}:pw@127.0.0.1:{cluster.nodes[0].port}/0"
        store = RedisStore.from_url(url, cluster=True, timeout=2)
        try:
            with pytest.raises(SourceUnavailable, match="ACL does not allow") as info:
                await store.get("ep:v1:tok:x")
            assert "+cluster|slots +command" in str(info.value)
        finally:
            await store.aclose()
        for admin in admins:
            admin.execute_command("ACL", "SETUSER", user, "+cluster|slots", "+command")
        store = RedisStore.from_url(url, cluster=True, timeout=2)
        try:
            for i in range(6):
                assert await store.put(f"ep:v1:{user}:{i}", b"v", ttl=5, expect=None) is not None
        finally:
            await store.aclose()
    finally:
        for admin in admins:
            admin.execute_command("ACL", "DELUSER", user)
            admin.close()


def test_a_cluster_url_with_another_database_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="only database 0"):
        RedisStore.from_url("redis://:pw@127.0.0.1:7000/2", cluster=True)
    with pytest.raises(ConfigurationError, match="only database 0"):
        RedisStore.from_url("redis://:pw@127.0.0.1:7000/0?db=1", cluster=True)


async def test_ping_is_false_while_any_primary_is_down() -> None:
    """A readiness probe on a cluster answers for every primary: redis-py sends PING to one
    node, which answered PONG while another primary, and every key in its slots, was down."""
    servers = RedisClusterServers(masters=3)
    try:
        servers.start()
        store = RedisStore.from_url(servers.url, cluster=True, timeout=2)
        try:
            assert await store.ping()
            # Each of two primaries in turn (one of them is not the node redis-py pings).
            for node in servers.nodes[1:]:
                node.kill()
                assert not await store.ping()
                node.start()  # same port and data: the cluster is whole again
                for _ in range(100):  # bounded (~10 s): the client reconnects
                    if await store.ping():
                        break
                    await asyncio.sleep(0.1)
                assert await store.ping()
        finally:
            await store.aclose()
    finally:
        servers.stop()
