"""In the in-process store too, a platform user's binding has no expiry (``ttl=None``) and is
evicted only after every record that has one: a full ``MemoryStore`` drops sign-in records
and grants before it, as Redis' ``volatile-*`` policies do."""

from __future__ import annotations

import pytest

from entra_passthrough._grants import GrantStore
from entra_passthrough._store import ANY, Keyring, MemoryStore
from entra_passthrough._user_key import UserKey


async def test_a_record_without_expiry_is_evicted_last() -> None:
    store = MemoryStore(max_entries=3)
    kept = await store.put("bind", b"b", ttl=None, expect=None)
    assert kept is not None
    for i in range(10):  # a flood of short-lived records through a full store
        assert await store.put(f"flow-{i}", b"f", ttl=60, expect=None) is not None
    found = await store.get("bind")
    assert found is not None
    assert found.version == kept
    assert await store.put("bind", b"c", ttl=None, expect=kept) is not None  # compare-and-set
    assert await store.put("other", b"o", ttl=None, expect=ANY) is not None
    with pytest.raises(ValueError, match="positive"):
        await store.put("k", b"v", ttl=0)
    with pytest.raises(ValueError, match="positive"):
        await store.put("k", b"v", ttl=float("nan"))


async def test_a_binding_outlives_grants_in_a_full_memory_store() -> None:
    store = MemoryStore(max_entries=4)
    grants = GrantStore(store, Keyring.generate(), client_id="app-1")
    hashed = UserKey.for_platform_user("chat-user-1").hashed
    assert await grants.bind(hashed, "tenant-1", "oid-1")
    for i in range(20):
        await grants.put_flow(f"flow-{i}", {"n": i}, ttl=600)
    assert await grants.get_binding(hashed) == ("tenant-1", "oid-1")
    assert not await grants.bind(hashed, "tenant-2", "oid-2")
