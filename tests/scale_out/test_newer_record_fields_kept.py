"""A rolling upgrade: a newer replica stored fields in a user's grant and binding that this
version does not know. Every write-back of those records by this version (the refresh lease
taken and released, the refresh token rotated, the binding re-sealed), through the async and
the sync driver, keeps them as read: before, the first refresh by an older replica dropped
them. They are never logged nor shown, and they are bounded: a record whose unknown fields
pass ``MAX_UNKNOWN_CHARS`` is still served, and loses them (said, without their content); one
nested too deeply to read fails no request.

Real stores (``MemoryStore``, and ``RedisStore`` on a real redis-server), real MSAL, the
emulator and the broker over HTTPS."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from _support.consent import ConsentEnv, follow_link, platform_caller
from entra_passthrough import ConsentRequired, TokenRequest
from entra_passthrough._grants import (
    _BINDING,
    GRANT_TTL,
    GrantStore,
    _app_id,
    grant_key,
)
from entra_passthrough._store import Keyring, MemoryStore
from entra_passthrough._user_key import UserKey
from entra_passthrough.redis import RedisStore

from ._server import RedisServer, free_port

#: The bound on a record's unknown fields (``_grants.MAX_UNKNOWN_CHARS``, docs/scale-out.md).
MAX_UNKNOWN_CHARS = 16 * 1024
#: What a newer version might store beside a grant: its value may be a secret.
SECRET = "newer-secret-3f9c1e"
NEWER: dict[str, Any] = {
    "token_binding": {"jkt": SECRET, "alg": ["ES256", "PS256"], "n": 7, "ratio": 0.25},
    "refresh_count": 41,
    "note": None,
}
BINDING_NEWER: dict[str, Any] = {"bound_at": 1767225600.5, "via": {"kind": "teams", "k": SECRET}}


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    made = RedisStore.from_url(server.url, namespace=f"newer{free_port()}:")
    yield made
    await made.aclose()


async def _signed_in(env: ConsentEnv, store: Any, name: str) -> tuple[Any, TokenRequest, str]:
    """A replica, a platform user's request, and its hashed key, the user signed in."""
    source = env.make(store=store, keyring=Keyring.generate())[0]
    chat = platform_caller(f"chat-newer-{name}-{time.monotonic_ns()}", upn=env.idp.users["pat"].upn)
    request = TokenRequest(scopes=(env.mcp_scope,), caller=chat)
    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(request)
    assert info.value.link is not None
    page = await follow_link(env, info.value.link)
    assert page.status_code == 200, page.text
    key = UserKey.from_caller(chat)
    assert key is not None
    return source, request, key.hashed


async def _record(grants: GrantStore, key: str) -> dict[str, Any]:
    found = await grants._get(key)
    assert found is not None
    data = json.loads(found[0])
    assert isinstance(data, dict)
    return data


async def _rewrite(grants: GrantStore, key: str, data: dict[str, Any]) -> None:
    """Write ``data`` sealed as a replica does (a newer version's record)."""
    assert await grants._put(key, json.dumps(data).encode(), ttl=GRANT_TTL) is not None


async def test_a_newer_versions_fields_survive_every_write_back(
    consent_env: ConsentEnv, store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    source, request, hashed = await _signed_in(consent_env, store, "kept")
    grants: GrantStore = source.grants
    gkey = grant_key(grants.client_id, hashed)
    bkey = _BINDING + _app_id(grants.client_id, hashed)
    before = await _record(grants, gkey)
    await _rewrite(grants, gkey, {**before, **NEWER})
    binding = await _record(grants, bkey)
    assert binding.pop("persist") == grants.keyring.current
    # A binding without the mark is rewritten at its next read (a grant write re-reads it).
    await _rewrite(grants, bkey, {**binding, **BINDING_NEWER})

    with caplog.at_level(logging.DEBUG):
        assert await source.get_token_async(request) is not None
        assert await asyncio.to_thread(source.get_token, request) is not None

    after = await _record(grants, gkey)
    assert after["refresh_token"] != before["refresh_token"]  # rotated, and written back
    assert after["updated"] > before["updated"]
    assert after["lease_owner"] is None  # the lease was taken and released: both written
    for name, value in NEWER.items():
        assert after[name] == value  # before: KeyError, dropped by the first refresh
    bound = await _record(grants, bkey)
    assert bound["persist"] == grants.keyring.current  # rewritten...
    for name, value in BINDING_NEWER.items():
        assert bound[name] == value  # ...with what it did not know
    assert (bound["tid"], bound["oid"]) == (binding["tid"], binding["oid"])

    found = await grants.get_grant(hashed)
    assert found is not None
    grant = found[0]
    assert SECRET not in repr(grant)
    assert grant == dataclasses.replace(grant, unknown_fields="")  # no part of equality
    assert SECRET not in caplog.text


async def test_unknown_fields_past_the_bound_are_dropped_and_said(
    consent_env: ConsentEnv, store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    source, request, hashed = await _signed_in(consent_env, store, "bound")
    grants: GrantStore = source.grants
    gkey = grant_key(grants.client_id, hashed)
    before = await _record(grants, gkey)
    huge = {"blob": SECRET + "x" * MAX_UNKNOWN_CHARS, "small": 1}
    await _rewrite(grants, gkey, {**before, **huge})

    with caplog.at_level(logging.WARNING, logger="entra_passthrough.consent"):
        assert await source.get_token_async(request) is not None  # still served

    after = await _record(grants, gkey)
    assert "blob" not in after
    assert "small" not in after
    assert after["refresh_token"] != before["refresh_token"]
    assert len(json.dumps(after)) < MAX_UNKNOWN_CHARS  # the record did not keep growing
    assert "2 fields this version does not know" in caplog.text
    assert f"{MAX_UNKNOWN_CHARS} characters it keeps" in caplog.text
    assert SECRET not in caplog.text


async def test_a_record_nested_too_deeply_fails_no_request(
    consent_env: ConsentEnv, store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    source, request, hashed = await _signed_in(consent_env, store, "deep")
    grants: GrantStore = source.grants
    gkey = grant_key(grants.client_id, hashed)
    before = json.dumps(await _record(grants, gkey))
    deep = before[:-1] + ',"deep":' + "[" * 100_000 + "]" * 100_000 + "}"
    assert await grants._put(gkey, deep.encode(), ttl=GRANT_TTL) is not None

    # before: RecursionError out of the request; now the record is unreadable, said so
    with (
        caplog.at_level(logging.WARNING, logger="entra_passthrough.consent"),
        pytest.raises(ConsentRequired),
    ):
        await source.get_token_async(request)
    assert "could not be read (ValueError)" in caplog.text
