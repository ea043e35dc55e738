"""TokenStore (MemoryStore), Keyring and grant records: no I/O beyond memory."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import threading

import pytest

from entra_passthrough import ConfigurationError, UserKey
from entra_passthrough._grants import GrantStore, LinkTicket, StoredGrant, grant_key
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import ANY, Keyring, KeyringError, MemoryStore, TokenStore
from entra_passthrough.consent import ConsentBroker

APP = "00000000-0000-0000-0000-00000000c0de"  # the consent app


async def test_memory_store_is_a_token_store_with_cas() -> None:
    store = MemoryStore()
    assert isinstance(store, TokenStore)
    v1 = await store.put("k", b"a", ttl=60, expect=None)
    assert v1 is not None
    assert await store.put("k", b"b", ttl=60, expect=None) is None  # exists: not absent
    assert await store.put("k", b"b", ttl=60, expect="stale") is None
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


async def test_memory_store_ttl_and_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    import entra_passthrough._store as mod

    now = [1000.0]
    monkeypatch.setattr(mod.time, "monotonic", lambda: now[0])
    store = MemoryStore(max_entries=3)
    await store.put("short", b"x", ttl=5)
    now[0] += 6
    assert await store.get("short") is None
    for i in range(5):
        await store.put(f"k{i}", b"x", ttl=60 + i)
    assert len(store) == 3
    assert await store.get("k0") is None
    assert await store.get("k4") is not None
    assert "MemoryStore(entries=3" in repr(store)


async def test_a_flood_of_short_entries_never_evicts_long_ones() -> None:
    store = MemoryStore(max_entries=10)
    for i in range(5):
        await store.put(f"grant{i}", b"g", ttl=90 * 24 * 3600)
    for i in range(1000):  # e.g. sign-in starts: 10-minute records
        await store.put(f"flow{i}", b"f", ttl=600)
    assert len(store) == 10
    for i in range(5):
        assert await store.get(f"grant{i}") is not None
    # overwrites and deletes leave stale heap items that are dropped, bounded
    for i in range(200):
        await store.put("same", b"v", ttl=600 + i)
    await store.delete("same")
    assert len(store._heap) <= 4 * 10 + 64 + 1


async def test_cas_lets_exactly_one_writer_win() -> None:
    store = MemoryStore()
    v = await store.put("k", b"0", ttl=60)
    results = await asyncio.gather(*(store.put("k", b"n", ttl=60, expect=v) for _ in range(20)))
    assert sum(r is not None for r in results) == 1


def test_keyring_seal_sign_and_rotation() -> None:
    old = Keyring.generate("old")
    sealed = old.seal("store", b"secret", aad=b"slot-a")
    assert b"secret" not in sealed.encode()
    assert old.open("store", sealed, aad=b"slot-a") == b"secret"
    with pytest.raises(KeyringError):
        old.open("store", sealed, aad=b"slot-b")  # moved to another user's slot
    with pytest.raises(KeyringError):
        old.open("state", sealed, aad=b"slot-a")  # another purpose, another derived key
    new_key = base64.urlsafe_b64encode(b"n" * 32).decode()
    old_key = base64.urlsafe_b64encode(old.keys["old"]).decode()
    rotated = Keyring.from_string(f"new:{new_key},old:{old_key}")
    assert rotated.current == "new"
    assert rotated.open("store", sealed, aad=b"slot-a") == b"secret"  # old still opens
    assert rotated.seal("store", b"x").startswith("new.")
    signed = old.sign("state", b"payload")
    assert rotated.verify("state", signed) == b"payload"
    kid, body, mac = signed.split(".")
    with pytest.raises(KeyringError):
        rotated.verify("state", f"{kid}.{body}x.{mac}")
    with pytest.raises(KeyringError):
        Keyring.generate("other").verify("state", signed)  # unknown kid


def test_keyring_rejects_weak_configuration() -> None:
    with pytest.raises(ConfigurationError):
        Keyring({"k": b"short"}, current="k")
    with pytest.raises(ConfigurationError):
        Keyring({"k": b"x" * 32}, current="missing")
    with pytest.raises(ConfigurationError):
        Keyring.from_string("")
    assert "keys" not in repr(Keyring.generate()).split("current")[0].replace("Keyring(", "")


async def test_grant_store_seals_values_and_hashes_keys() -> None:
    store = MemoryStore()
    grants = GrantStore(store, Keyring.generate(), client_id=APP)
    key = UserKey.for_entra_user("tid-1", "oid-1", upn="alice@contoso.com")
    grant = StoredGrant(
        refresh_token="rt-secret-value",
        scopes=("api://x/.default",),
        tid="tid-1",
        oid="oid-1",
        upn="alice@contoso.com",
        key_kind="entra",
        created=1.0,
        updated=1.0,
    )
    assert "rt-secret-value" not in repr(grant)
    version = await grants.put_grant(key.hashed, grant)
    assert version is not None
    raw_keys = list(store._data)
    assert raw_keys == [grant_key(APP, UserKey.for_entra_user("tid-1", "oid-1").hashed)]
    assert "oid-1" not in raw_keys[0]
    raw_value = store._data[raw_keys[0]][0]
    assert b"rt-secret-value" not in raw_value
    assert b"alice" not in raw_value
    found = await grants.get_grant(key.hashed)
    assert found is not None
    assert found[0] == dataclasses.replace(grant, client_id=APP)
    # a grant sealed under a key no longer on the keyring reads as absent
    other = GrantStore(store, Keyring.generate(), client_id=APP)
    assert await other.get_grant(key.hashed) is None


async def test_flows_are_taken_once_and_states_marked_once() -> None:
    grants = GrantStore(MemoryStore(), Keyring.generate(), client_id=APP)
    await grants.put_flow("f1", {"a": 1}, ttl=60)
    taken = await asyncio.gather(*(grants.take_flow("f1") for _ in range(10)))
    assert [t for t in taken if t is not None] == [{"a": 1}]
    assert await grants.mark_used("s1", ttl=60)
    assert not await grants.mark_used("s1", ttl=60)


def test_link_ticket_is_sealed_and_expires() -> None:
    keys = Keyring.generate()
    ticket = LinkTicket(
        key_hash="h",
        key_kind="platform",
        scopes=("api://x/.default",),
        exp=2e9,
        login_hint="alice@contoso.com",
    )
    sealed = ticket.seal(keys)
    # whole values: a few letters can occur by chance in the base64 of the ciphertext
    assert "alice@contoso.com" not in sealed
    assert "api://x/.default" not in sealed
    assert LinkTicket.open(keys, sealed) == ticket
    with pytest.raises(ValueError, match="expired"):
        LinkTicket.open(keys, sealed, now=3e9)
    with pytest.raises(KeyringError):
        LinkTicket.open(Keyring.generate(), sealed)


def test_user_key_prefers_verified_identity_and_ignores_unverified_claims() -> None:
    from entra_passthrough import Caller

    caller = Caller(user_id="platform-user-1", verified={"tid": "t", "oid": "o"})
    key = UserKey.from_caller(caller)
    assert key is not None
    assert key.kind == "entra"
    assert key.value == "t:o"
    caller = Caller(user_id="platform-user-1")
    key = UserKey.from_caller(caller)
    assert key is not None
    assert key.kind == "platform"
    assert "platform-user-1" not in repr(key)
    # unverified claims alone: no key (they can be forged by anyone reaching the container)
    from entra_passthrough import UnverifiedClaims

    caller = Caller(claims=UnverifiedClaims(tid="t", oid="o", upn="a@b"))
    assert UserKey.from_caller(caller) is None
    ended = Caller(user_id="u")
    ended.end()
    assert UserKey.from_caller(ended) is None


async def test_closing_a_broker_built_for_a_source_leaves_the_source_running() -> None:
    source = DelegatedConsent(
        client_id="consent-app",
        tenant_id="tenant",
        client_secret="not-used",
        store=MemoryStore(),
        keyring=Keyring.generate(),
        broker_url="http://127.0.0.1:9/consent",
        max_workers=1,
    )
    broker = ConsentBroker.for_source(source, redirect_uris=["http://127.0.0.1:9/consent/callback"])
    gate = threading.Event()
    try:
        busy = asyncio.ensure_future(source.client.pool.run(gate.wait, 10.0))
        queued = asyncio.ensure_future(source.client.pool.run(str, "queued"))
        await asyncio.sleep(0)  # both submitted: one running, one waiting for the worker
        broker.close()
        gate.set()
        assert await busy is True
        assert await queued == "queued"  # not cancelled by the broker's close()
    finally:
        gate.set()
        source.close()
