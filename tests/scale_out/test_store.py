"""RedisStore against a real redis-server: the TokenStore contract, sealing, TLS, ACL, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from entra_passthrough import ConfigurationError, SourceUnavailable, UserKey
from entra_passthrough._grants import GrantStore, StoredGrant, grant_key
from entra_passthrough._store import ANY, Keyring, TokenStore
from entra_passthrough.redis import RedisStore

from ._server import PASSWORD, RedisServer, free_port

APP = "00000000-0000-0000-0000-00000000c0de"  # the consent app

SECRETS = {
    "refresh": "0.AAAArefresh-token-of-avery-1234567890",
    "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "oid": "00000000-0000-0000-0000-00000000a11c",
    "upn": "avery@contoso.com",
}


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    made = RedisStore.from_url(redis_server.url, namespace="t:")
    yield made
    await made.aclose()


def _raw_keyspace(server: RedisServer) -> list[bytes]:
    client = server.client()
    try:
        out = []
        for key in client.scan_iter(count=1000):
            out.append(key)
            out.append(client.get(key) or b"")
        return out
    finally:
        client.close()


async def test_redis_store_is_a_token_store_with_cas(store: RedisStore) -> None:
    assert isinstance(store, TokenStore)
    v1 = await store.put("k", b"a", ttl=60, expect=None)
    assert v1 is not None
    assert await store.put("k", b"b", ttl=60, expect=None) is None  # exists: not absent
    assert await store.put("k", b"b", ttl=60, expect="0" * 16) is None
    v2 = await store.put("k", b"b", ttl=60, expect=v1)
    assert v2 is not None
    assert v2 != v1
    entry = await store.get("k")
    assert entry is not None
    assert entry.value == b"b"
    assert entry.version == v2
    assert not await store.delete("k", expect=v1)
    assert await store.delete("k", expect=v2)
    assert await store.get("k") is None
    assert await store.put("k", b"c", ttl=60, expect=ANY) is not None
    assert await store.delete("k")
    assert not await store.delete("k")
    assert await store.put("absent", b"x", ttl=60, expect="0" * 16) is None


async def test_every_key_has_a_ttl(store: RedisStore, redis_server: RedisServer) -> None:
    await store.put("ttl", b"x", ttl=30)
    version = await store.put("ttl-cas", b"x", ttl=30, expect=None)
    await store.put("ttl-cas", b"y", ttl=45, expect=version)
    client = redis_server.client()
    try:
        assert 0 < client.pttl("t:ttl") <= 30_000
        assert 30_000 < client.pttl("t:ttl-cas") <= 45_000
    finally:
        client.close()


async def test_cas_lets_exactly_one_replica_win(redis_server: RedisServer) -> None:
    replicas = [RedisStore.from_url(redis_server.url) for _ in range(4)]
    try:
        base = await replicas[0].put("race", b"0", ttl=60)
        assert base is not None
        for _ in range(20):  # bounded: 20 rounds of 4 replicas x 5 writers on one version
            entry = await replicas[0].get("race")
            assert entry is not None
            wins = await asyncio.gather(
                *(r.put("race", b"n", ttl=60, expect=entry.version) for r in replicas * 5)
            )
            assert sum(w is not None for w in wins) == 1
    finally:
        for r in replicas:
            await r.aclose()


async def test_a_keyspace_scan_shows_no_token_and_no_identity(
    store: RedisStore, redis_server: RedisServer
) -> None:
    grants = GrantStore(store, Keyring.generate(), client_id=APP)
    key = UserKey.for_entra_user(SECRETS["tid"], SECRETS["oid"], upn=SECRETS["upn"])
    grant = StoredGrant(
        refresh_token=SECRETS["refresh"],
        scopes=("api://mcp/access_as_user",),
        tid=SECRETS["tid"],
        oid=SECRETS["oid"],
        upn=SECRETS["upn"],
        key_kind="entra",
        created=1.0,
        updated=1.0,
    )
    assert await grants.put_grant(key.hashed, grant) is not None
    assert await grants.bind(UserKey.for_platform_user("chat-user-7").hashed, "t", "o")
    found = await grants.get_grant(key.hashed)
    assert found is not None
    assert found[0].refresh_token == SECRETS["refresh"]
    dump = b"\n".join(_raw_keyspace(redis_server))
    assert dump  # the scan saw our records
    for secret in (*SECRETS.values(), "chat-user-7", "contoso", "a11c", "access_as_user"):
        assert secret.encode() not in dump, secret


async def test_rotation_old_keys_open_the_new_key_seals(store: RedisStore) -> None:
    old = Keyring.generate("k1")
    new = Keyring({"k2": Keyring.generate("k2").keys["k2"], "k1": old.keys["k1"]}, current="k2")
    key = UserKey.for_entra_user("t", "o").hashed
    grant = StoredGrant("rt-1", ("s",), "t", "o", None, "entra", 1.0, 1.0)
    await GrantStore(store, old, client_id=APP).put_grant(key, grant)
    found = await GrantStore(store, new, client_id=APP).get_grant(key)
    assert found is not None
    assert found[0].refresh_token == "rt-1"
    await GrantStore(store, new, client_id=APP).put_grant(key, grant, expect=found[1])
    entry = await store.get(grant_key(APP, key))
    assert entry is not None
    assert entry.value.startswith(b"k2.")
    # k1 alone cannot read k2
    assert await GrantStore(store, old, client_id=APP).get_grant(key) is None
    assert await GrantStore(store, new, client_id=APP).get_grant(key) is not None


async def test_a_full_rotation_keeps_grants_and_bindings_of_active_users_reachable(
    store: RedisStore,
) -> None:
    """The three deployments of a rotation (list the new key second, switch, drop the old
    one). Record names do not depend on the keyring (docs/scale-out.md says why they are not
    keyed), so every grant and binding written before is found at every step. A grant is
    re-sealed with the new key by its refresh; a platform user's binding, written once, is
    re-sealed when it is read (a sign-in) or when its user's grant is refreshed (a token
    request): after the drop both still open, and the user is not refused as 'a different
    account'."""
    k1, k2 = Keyring.generate("k1").keys["k1"], Keyring.generate("k2").keys["k2"]
    steps = [
        Keyring({"k1": k1}, current="k1"),  # before
        Keyring({"k1": k1, "k2": k2}, current="k1"),  # 1. list the new key second
        Keyring({"k2": k2, "k1": k1}, current="k2"),  # 2. switch
    ]
    dropped = Keyring({"k2": k2}, current="k2")  # 3. drop the old key
    chats = {
        name: UserKey.for_platform_user(f"chat-user-rot-{name}-{free_port()}").hashed
        for name in ("signs-in", "calls", "away")
    }
    for chat in chats.values():
        grant = StoredGrant("rt-a", ("s",), "t", "o", None, "platform", 1.0, 1.0)
        assert await GrantStore(store, steps[0], client_id=APP).put_grant(chat, grant)
        assert await GrantStore(store, steps[0], client_id=APP).bind(chat, "t", "o")
    for keyring in steps[:2]:
        for chat in chats.values():
            found = await GrantStore(store, keyring, client_id=APP).get_grant(chat)
            assert found is not None
            assert found[0].refresh_token == "rt-a"
            assert await GrantStore(store, keyring, client_id=APP).get_binding(chat) == ("t", "o")
            # the first binding stays
            assert not await GrantStore(store, keyring, client_id=APP).bind(chat, "t2", "o2")
    switched = GrantStore(store, steps[2], client_id=APP)
    lagging = GrantStore(store, steps[1], client_id=APP)
    # after the switch: one user signs in again (the broker reads the binding), another
    # makes calls: its grant is refreshed (re-sealed with k2) by a switched replica, read by a
    # replica the rolling switch has not reached yet, refreshed by a switched one again
    assert await switched.get_binding(chats["signs-in"]) == ("t", "o")
    rotated = StoredGrant("rt-b", ("s",), "t", "o", None, "platform", 1.0, 2.0)
    for replica in (switched, lagging, switched):
        found = await replica.get_grant(chats["calls"])
        assert found is not None
        if replica is lagging:
            assert await replica.get_binding(chats["calls"]) == ("t", "o")  # re-sealed: k1
        else:
            assert await replica.put_grant(chats["calls"], rotated, expect=found[1])
    after = GrantStore(store, dropped, client_id=APP)
    for name in ("signs-in", "calls"):
        assert await after.get_binding(chats[name]) == ("t", "o"), name
    found = await after.get_grant(chats["calls"])
    assert found is not None
    assert found[0].refresh_token == "rt-b"
    # a user not seen between the switch and the drop: what the old key sealed no longer
    # opens (docs/scale-out.md: keep the old key listed while such users matter)
    assert await after.get_binding(chats["away"]) is None
    assert not await after.bind(chats["away"], "t", "o")


async def test_tls_rediss_with_a_private_ca() -> None:
    server = RedisServer(tls=True).start()
    try:
        store = RedisStore.from_url(server.url, ca_file=server.ca_file)
        assert await store.put("tls", b"x", ttl=10) is not None
        assert repr(store).startswith("RedisStore(rediss://127.0.0.1:")
        await store.aclose()
        untrusted = RedisStore.from_url(server.url, timeout=1.0)
        with pytest.raises(SourceUnavailable, match="certificate verification") as info:
            await untrusted.get("tls")
        assert "ENTRA_PASSTHROUGH_REDIS_CA_FILE" in str(info.value)
        await untrusted.aclose()
    finally:
        server.stop()


@pytest.mark.parametrize(
    "query",
    [
        "ssl_cert_reqs=none&ssl_cert_reqs=required",  # redis-py applies the first value
        "ssl_cert_reqs=required&ssl_cert_reqs=none",
        "ssl_check_hostname=false&ssl_check_hostname=true",
        "ssl_check_hostname=true&ssl_check_hostname=false",
        "SSL_CERT_REQS=none&ssl_cert_reqs=required",  # the same option in another case
        "ssl_cert_reqs=required&ssl_cert_reqs=required",  # harmless, but refused alike
        "db=0&db=1",
    ],
)
async def test_a_repeated_url_option_is_refused_before_any_connection(query: str) -> None:
    """A repeated query option is ambiguous (redis-py uses its first value): refused with a
    typed error, before anything connects to a TLS server whose certificate is not trusted."""
    server = RedisServer(tls=True).start()  # its CA is not given to the store
    try:
        url = f"{server.url}?{query}"
        with pytest.raises(ConfigurationError, match="repeats the query option") as info:
            RedisStore.from_url(url, timeout=1.0)
        assert "give each query option once" in str(info.value)
        assert PASSWORD not in str(info.value)
        with pytest.raises(ConfigurationError, match="repeats the query option"):
            RedisStore.from_env({"ENTRA_PASSTHROUGH_REDIS_URL": url})
        # Once, verification on: the untrusted certificate is refused (typed), never used.
        checked = RedisStore.from_url(f"{server.url}?ssl_cert_reqs=required", timeout=1.0)
        with pytest.raises(SourceUnavailable, match="certificate verification"):
            await checked.put("ep:v1:x", b"sealed", ttl=10)
        await checked.aclose()
    finally:
        server.stop()


async def test_acl_user_and_wrong_password_is_a_typed_error(redis_server: RedisServer) -> None:
    admin = redis_server.client()
    try:
        admin.acl_setuser(
            "agent", enabled=True, passwords=["+agent-pass-9"], keys=["ep:*"], commands=["+@all"]
        )
    finally:
        admin.close()
    port = redis_server.port
    good = RedisStore.from_url(f"redis://agent:agent-pass-9@127.0.0.1:{port}/0")
    assert await good.put("ep:v1:x", b"x", ttl=10) is not None
    with pytest.raises(SourceUnavailable, match="ACL"):  # this user may write ep:* keys only
        await good.put("other", b"x", ttl=10)
    await good.aclose()
    bad = RedisStore.from_url(f"redis://agent:wrong-pass-9@127.0.0.1:{port}/0")
    with pytest.raises(SourceUnavailable, match="refused our credentials") as info:
        await bad.get("ep:v1:x")
    assert "wrong-pass-9" not in str(info.value)
    assert "agent-pass" not in str(info.value)
    await bad.aclose()


async def test_down_at_start_is_typed_then_reconnects_by_itself() -> None:
    server = RedisServer()
    store = RedisStore.from_url(server.url, timeout=1.0)
    try:
        with pytest.raises(SourceUnavailable, match="cannot be reached") as info:
            await store.get("k")
        assert PASSWORD not in str(info.value)
        server.start()
        assert await store.put("k", b"v", ttl=10) is not None  # same client, no rebuild
        assert await store.ping()
    finally:
        await store.aclose()
        server.stop()


async def test_killed_then_restarted_with_data_kept_or_lost() -> None:
    server = RedisServer(persist=True).start()
    store = RedisStore.from_url(server.url, timeout=1.0)
    try:
        version = await store.put("kept", b"v1", ttl=600)
        server.kill()
        with pytest.raises(SourceUnavailable):
            await store.get("kept")
        assert not await store.ping()
        server.start()
        entry = await store.get("kept")
        assert entry is not None
        assert entry.value == b"v1"
        assert entry.version == version
        server.kill()
        server.wipe()
        server.start()
        assert await store.get("kept") is None
    finally:
        await store.aclose()
        server.stop()


async def test_full_redis_refuses_writes_typed_and_keeps_what_it_had() -> None:
    server = RedisServer(maxmemory="2mb").start()
    store = RedisStore.from_url(server.url)
    try:
        first = await store.put("first", b"x" * 100, ttl=600)
        assert first is not None

        async def fill() -> None:
            for i in range(1000):  # bounded: 1000 x 10 kB > 2 MB
                await store.put(f"fill{i}", b"y" * 10_000, ttl=600)

        with pytest.raises(SourceUnavailable, match="full") as info:
            await fill()
        assert "maxmemory" in str(info.value)
        entry = await store.get("first")
        assert entry is not None
        assert entry.version == first
    finally:
        await store.aclose()
        server.stop()


def test_from_url_and_from_env_refuse_what_cannot_work() -> None:
    with pytest.raises(ConfigurationError, match="scheme"):
        RedisStore.from_url("http://127.0.0.1:6379")
    with pytest.raises(ConfigurationError, match="not set"):
        RedisStore.from_env({})
    with pytest.raises(ConfigurationError, match="password or entra"):
        RedisStore.from_env(
            {"ENTRA_PASSTHROUGH_REDIS_URL": "redis://x", "ENTRA_PASSTHROUGH_REDIS_AUTH": "x"}
        )
    with pytest.raises(ConfigurationError, match="credential_provider"):
        RedisStore.from_url("rediss://:pw@h:6380", credential_provider=object())
    store = RedisStore.from_env(
        {
            "ENTRA_PASSTHROUGH_REDIS_URL": f"rediss://:pw@127.0.0.1:{free_port()}/0",
            "ENTRA_PASSTHROUGH_REDIS_NAMESPACE": "app1:",
        }
    )
    assert store.namespace == "app1:"
    assert "pw" not in repr(store)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:secret-pw-1@cache.contoso.com:6379/0",  # the password in clear on the network
        "redis://:secret-pw-1@10.0.0.5:6379/0",
        "rediss://:secret-pw-1@cache.contoso.com:6380/0?ssl_cert_reqs=none",
        "rediss://:secret-pw-1@cache.contoso.com:6380/0?ssl_cert_reqs=optional",
        "rediss://:secret-pw-1@cache.contoso.com:6380/0?ssl_check_hostname=false",
        "rediss://:secret-pw-1@127.0.0.1:6380/0?SSL_CHECK_HOSTNAME=0",
        "rediss://:secret-pw-1@cache.contoso.com:6380/0?ssl_check_hostname=%2546alse",
        "rediss://:secret-pw-1@cache.contoso.com:6380/0?ssl_cert_reqs=%256Eone",
    ],
)
def test_a_url_that_would_expose_the_password_or_records_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisStore.from_url(url)
    assert "secret-pw-1" not in str(info.value)
    with pytest.raises(ConfigurationError):
        RedisStore.from_env({"ENTRA_PASSTHROUGH_REDIS_URL": url})


def test_plaintext_to_another_host_only_when_allowed() -> None:
    url = f"redis://:pw@redis.internal:{free_port()}/0"
    assert RedisStore.from_url(url, allow_plaintext=True).namespace == ""
    env = {"ENTRA_PASSTHROUGH_REDIS_URL": url, "ENTRA_PASSTHROUGH_REDIS_ALLOW_PLAINTEXT": "true"}
    assert isinstance(RedisStore.from_env(env), RedisStore)
    for loopback in ("127.0.0.1", "localhost", "[::1]"):  # a sidecar: no network crossed
        assert isinstance(RedisStore.from_url(f"redis://:pw@{loopback}:6379/0"), RedisStore)
    checked = "rediss://:pw@cache.contoso.com:6380/0?ssl_cert_reqs=required"
    assert isinstance(RedisStore.from_url(checked), RedisStore)


def test_redis_package_is_the_one_the_extra_declares() -> None:
    assert int(redis.__version__.split(".")[0]) >= 5


async def test_a_burst_larger_than_the_pool_waits_for_connections(
    redis_server: RedisServer,
) -> None:
    store = RedisStore.from_url(redis_server.url, namespace="burst:", max_connections=4)
    try:
        versions = await asyncio.gather(
            *(store.put(f"k{i}", b"x", ttl=10, expect=None) for i in range(300))
        )
        assert all(v is not None for v in versions)
    finally:
        await store.aclose()


async def test_entra_auth_user_is_the_oid_and_password_a_fresh_token(
    consent_env: Any, redis_server: RedisServer
) -> None:
    """Redis' Entra auth, against the emulator: an azure-identity credential's token is the
    password and its oid the user (Azure Redis checks the token; here an ACL user stands in)."""
    from azure.identity import ClientSecretCredential

    from entra_passthrough._jwt import decode_unverified
    from entra_passthrough.redis import entra_credential_provider

    idp = consent_env.idp
    scope = f"{idp.mcp.app_id_uri}/.default"
    credential = ClientSecretCredential(
        idp.tenant_id,
        idp.agent.client_id,
        idp.agent.secret,
        authority=idp.url,
        disable_instance_discovery=True,
        connection_verify=idp.ca_file,
    )
    provider = entra_credential_provider(credential, scopes=(scope,))
    oid, token = provider.get_credentials()
    assert oid == decode_unverified(token)["oid"]
    assert token not in repr(provider)
    admin = redis_server.client()
    try:
        admin.acl_setuser(
            oid, enabled=True, passwords=[f"+{token}"], keys=["*"], commands=["+@all"]
        )
    finally:
        admin.close()
    store = RedisStore.from_url(
        f"redis://127.0.0.1:{redis_server.port}/0", credential_provider=provider
    )
    try:
        assert await store.put("entra", b"x", ttl=10) is not None  # the cached token works
    finally:
        await store.aclose()
    with pytest.raises(ConfigurationError, match="oid"):
        entra_credential_provider(_NoOid(), scopes=(scope,)).get_credentials()


class _NoOid:
    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken("e30.e30.sig", 0)  # {} as header and claims: no oid


def test_from_env_with_entra_auth_uses_redis_entraid() -> None:
    store = RedisStore.from_env(
        {
            "ENTRA_PASSTHROUGH_REDIS_URL": f"rediss://127.0.0.1:{free_port()}/0",
            "ENTRA_PASSTHROUGH_REDIS_AUTH": "entra",
        }
    )
    provider = store.client.connection_pool.connection_kwargs["credential_provider"]
    assert type(provider).__name__ == "EntraIdCredentialsProvider"


def test_one_store_serves_several_event_loops(redis_server: RedisServer) -> None:
    """redis-py's asyncio connections belong to the loop that opened them: a store used by two
    ``asyncio.run`` in a row, or by a thread's loop while another loop uses it, opens
    connections per loop (closed with ``aclose`` on each); built from a client, it refuses a
    second loop with a typed error instead of redis-py's RuntimeError."""
    store = RedisStore.from_url(redis_server.url, namespace=f"loops{free_port()}:")

    async def use(value: bytes, *, close: bool = True) -> bytes:
        await store.put("k", value, ttl=30)
        entry = await store.get("k")
        assert entry is not None
        if close:
            await store.aclose()
        return entry.value

    assert asyncio.run(use(b"first")) == b"first"
    assert asyncio.run(use(b"second")) == b"second"

    async def alongside() -> bytes:
        mine = await use(b"main", close=False)  # this loop keeps a connection in its pool
        other = await asyncio.to_thread(asyncio.run, use(b"thread"))  # another loop meanwhile
        again = await use(b"again")
        return b",".join((mine, other, again))

    assert asyncio.run(alongside()) == b"main,thread,again"

    built = RedisStore(redis.asyncio.Redis.from_url(redis_server.url))

    async def ping_then_close() -> bool:
        answered = await built.ping()
        await built.aclose()
        return answered

    assert asyncio.run(ping_then_close())
    with pytest.raises(ConfigurationError, match="has been closed"):
        asyncio.run(built.get("k"))  # not "another event loop": it was closed

    client = redis.asyncio.Redis.from_url(redis_server.url)
    unclosed = RedisStore(client)
    assert asyncio.run(unclosed.ping())
    with pytest.raises(ConfigurationError, match="one event loop"):
        asyncio.run(unclosed.get("k"))  # a second loop, the first never closed it


class _NoToken:
    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.exceptions import ClientAuthenticationError

        raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")


class _EntraidNoToken:
    """What redis-entraid's provider raises when Entra gives no token."""

    def get_credentials(self) -> tuple[str, str]:
        from redis.auth.err import RequestTokenErr

        raise RequestTokenErr("AADSTS7000215: Invalid client secret provided.")

    async def get_credentials_async(self) -> tuple[str, str]:
        return self.get_credentials()


@pytest.mark.parametrize("provider", ["azure-identity", "redis-entraid"])
async def test_entra_auth_without_a_token_is_a_typed_error(
    redis_server: RedisServer, provider: str
) -> None:
    """The identity gets no token for Redis (no managed identity, no az login, a bad secret):
    a typed error that says so and what to check, never the credential's own exception."""
    from entra_passthrough.redis import entra_credential_provider

    made = entra_credential_provider(_NoToken()) if provider == "azure-identity" else None
    store = RedisStore.from_url(
        f"redis://127.0.0.1:{redis_server.port}/0",
        credential_provider=made or _EntraidNoToken(),
        timeout=1.0,
    )
    try:
        with pytest.raises(SourceUnavailable, match="gave no token") as info:
            await store.get("k")
        assert "redis.azure.com" in str(info.value)
        assert not await store.ping()
    finally:
        await store.aclose()


async def test_a_record_sealed_with_a_key_this_replica_lacks_is_named_in_a_warning(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling rotation done in one step (the new key first on some replicas while others
    still have only the old one): the others treat the record as absent and say which key id
    they lack and how to rotate; a record that does not verify says so."""
    import logging

    old = Keyring.generate("k1")
    new = Keyring({"k2": Keyring.generate("k2").keys["k2"], "k1": old.keys["k1"]}, current="k2")
    key = UserKey.for_entra_user("t", "o").hashed
    grant = StoredGrant("rt-9", ("s",), "t", "o", None, "entra", 1.0, 1.0)
    await GrantStore(store, new, client_id=APP).put_grant(key, grant)
    with caplog.at_level(logging.WARNING, logger="entra_passthrough.consent"):
        assert await GrantStore(store, old, client_id=APP).get_grant(key) is None
    assert "key id 'k2'" in caplog.text
    assert "list a new key second" in caplog.text
    caplog.clear()
    other = Keyring.generate("k2")  # the same key id, another secret
    with caplog.at_level(logging.WARNING, logger="entra_passthrough.consent"):
        assert await GrantStore(store, other, client_id=APP).get_grant(key) is None
    assert "did not verify" in caplog.text
    assert "rt-9" not in caplog.text


# An Azure Cache for Redis access key is base64: a '/' in it is common, and pasting it into the
# URL unescaped made urllib's port error (which redis-py repeated) quote the key up to the '/'.
_KEY = "Xy7Qm2Lk9Pz4Rt6Vb8Nc1Ds3Fg5Hj0Kl"


@pytest.mark.parametrize(
    "url",
    [
        f"rediss://:{_KEY}/AbCdEfGh=@contoso.redis.cache.windows.net:6380/0",
        f"rediss://:{_KEY}#AbCd@contoso.redis.cache.windows.net:6380/0",
        f"rediss://:{_KEY}?AbCd@contoso.redis.cache.windows.net:6380/0",
        f"rediss://:{_KEY}@contoso.redis.cache.windows.net:notaport/0",
        f"rediss://:{_KEY}@contoso.redis.cache.windows.net:99999/0",
        f"rediss://user:{_KEY}@[::1/0",
        f"redis://:{_KEY}@127.0.0.1:6379/0?socket_timeout=abc",
        f"redis://:{_KEY}@127.0.0.1:6379/0?health_check_interval=x",
        # a name redis-py would hand the connection as a keyword (a TypeError on every call)
        f"rediss://:{_KEY}@contoso.redis.cache.windows.net:6380/0?ssl_certreqs=required",
        f"rediss://:2024?{_KEY}AbCd@contoso.redis.cache.windows.net:6380/0",
        # a password whose '/' or '#' comes first, or after digits: no host at all
        f"rediss://:/{_KEY}AbCd@contoso.redis.cache.windows.net:6380/0",
        f"rediss://:12/{_KEY}AbCd@contoso.redis.cache.windows.net:6380/0",
        f"rediss://:#{_KEY}AbCd@contoso.redis.cache.windows.net:6380/0",
        # an ACL password with '@' then '/', '#' or '?': the part after '@' read as the host
        f"rediss://app:{_KEY}@AbCd/x@contoso.redis.cache.windows.net:6380/0",
        f"rediss://app:{_KEY}@AbCd#x@contoso.redis.cache.windows.net:6380/0",
        f"redis://app:{_KEY}@AbCd?x@127.0.0.1:6379/0",
        # URL options that would replace the checked timeout and pool size
        f"redis://:{_KEY}@127.0.0.1:6379/0?socket_timeout=nan",
        f"redis://:{_KEY}@127.0.0.1:6379/0?timeout=inf",
        f"redis://:{_KEY}@127.0.0.1:6379/0?max_connections=0",
    ],
)
def test_a_url_redis_py_cannot_read_is_typed_and_quotes_no_part_of_the_password(url: str) -> None:
    for build in (
        lambda: RedisStore.from_url(url),
        lambda: RedisStore.from_env({"ENTRA_PASSTHROUGH_REDIS_URL": url}),
    ):
        with pytest.raises(ConfigurationError) as info:
            build()
        text = str(info.value)
        assert _KEY[:8] not in text
        assert "abcd" not in text.lower()  # the part after an '@' in the password either
        assert "Redis URL" in text
        # nor kept where a traceback or a logger would find it (urllib's error quotes it)
        assert info.value.__cause__ is None
        assert info.value.__context__ is None


def test_a_redis_url_that_is_not_a_string_is_typed() -> None:
    with pytest.raises(ConfigurationError, match="must be a string"):
        RedisStore.from_url(12345)  # type: ignore[arg-type]
