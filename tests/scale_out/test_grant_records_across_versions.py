"""A grant record written by another version of the library (a rolling upgrade: a newer
replica's record has a field this one does not know) is read, not taken for "no consent is
stored" (the user, signed in, was sent back to consent by every old replica, and nothing said
why). A record this version cannot read at all is absent, and a WARNING says so.

Real Redis (the sealed records as a replica writes them)."""

from __future__ import annotations

import json
import logging
import time

import pytest

from entra_passthrough import Keyring
from entra_passthrough._grants import GrantStore, StoredGrant, grant_key
from entra_passthrough.redis import RedisStore

from ._server import RedisServer

APP = "11111111-2222-3333-4444-555555555555"
USER = "1" * 64  # a hashed user key


def _grant() -> StoredGrant:
    now = time.time()
    return StoredGrant(
        refresh_token="rt-of-alice",
        scopes=("api://mcp/access_as_user",),
        tid="tid",
        oid="oid",
        upn=None,
        key_kind="entra",
        created=now,
        updated=now,
    )


async def test_a_newer_versions_record_is_read_and_an_unreadable_one_is_said(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore.from_url(redis_server.url)
    grants = GrantStore(store, Keyring.generate(), client_id=APP)
    key = grant_key(APP, USER)
    try:
        assert await grants.put_grant(USER, _grant()) is not None
        found = await grants._get(key)
        assert found is not None
        record = json.loads(found[0])

        newer = {**record, "token_binding": "a field of a later version"}
        await grants._put(key, json.dumps(newer).encode(), ttl=3600)
        read = await grants.get_grant(USER)
        assert read is not None  # before: None, "no consent is stored for this user"
        assert read[0].refresh_token == "rt-of-alice"

        older = {k: v for k, v in record.items() if k not in ("lease_owner", "lease_until")}
        await grants._put(key, json.dumps(older).encode(), ttl=3600)
        assert await grants.get_grant(USER) is not None  # defaults fill what it lacks

        broken = {k: v for k, v in record.items() if k != "refresh_token"}
        await grants._put(key, json.dumps(broken).encode(), ttl=3600)
        with caplog.at_level(logging.WARNING, logger="entra_passthrough.consent"):
            assert await grants.get_grant(USER) is None
        assert "could not be read" in caplog.text
        assert "rt-of-alice" not in caplog.text
    finally:
        await store.aclose()
