"""DelegatedConsent's decisions (lease, refresh, rotation, dead grant) under both drivers:
``get_token`` (from a worker thread, the refresh on that thread) and ``get_token_async``, against
the emulator through the real broker. The same steps must end the same way."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from _support.consent import ConsentEnv, follow_link, platform_caller
from entra_passthrough import (
    ConfigurationError,
    ConsentRequired,
    DelegatedConsent,
    TokenRequest,
    TokenResult,
    UserKey,
)
from entra_passthrough._sources import delegated


async def _get(source: DelegatedConsent, request: TokenRequest, sync: bool) -> TokenResult | None:
    if sync:
        return await asyncio.to_thread(source.get_token, request)
    return await source.get_token_async(request)


async def _scenario(env: ConsentEnv, sync: bool) -> list[Any]:
    source, _ = env.make()
    alice = env.idp.users["alice"]
    caller = platform_caller(f"drivers-{sync}", upn=alice.upn)
    request = TokenRequest((env.mcp_scope,), caller)
    key = UserKey.from_caller(caller)
    assert key is not None
    trace: list[Any] = []

    # no grant yet: a consent link, no call to Entra
    with pytest.raises(ConsentRequired) as info:
        await _get(source, request, sync)
    assert info.value.link is not None
    assert (await follow_link(env, info.value.link)).status_code == 200
    found = await source.grants.get_grant(key.hashed)
    assert found is not None
    granted = found[0].refresh_token

    # a grant: one refresh at Entra, the refresh token rotated in the store, the lease released
    before = env.idp.stats()["grants"].get("refresh_token", 0)
    result = await _get(source, request, sync)
    assert result is not None
    trace.append((result.kind.value, result.source))
    trace.append(env.idp.stats()["grants"].get("refresh_token", 0) - before)
    found = await source.grants.get_grant(key.hashed)
    assert found is not None
    grant, version = found
    trace.append((grant.refresh_token != granted, grant.lease_owner))

    # another replica holds the lease briefly: the driver pauses, then leases and refreshes
    leased = dataclasses.replace(grant, lease_owner="other", lease_until=time.time() + 0.15)
    assert await source.grants.put_grant(key.hashed, leased, expect=version) is not None
    result = await _get(source, request, sync)
    assert result is not None
    trace.append(env.idp.stats()["grants"].get("refresh_token", 0) - before)

    # a dead refresh token: Entra refuses it, the grant is deleted, the user must consent again
    found = await source.grants.get_grant(key.hashed)
    assert found is not None
    dead = dataclasses.replace(found[0], refresh_token="not-a-refresh-token")
    assert await source.grants.put_grant(key.hashed, dead, expect=found[1]) is not None
    with pytest.raises(ConsentRequired) as info:
        await _get(source, request, sync)
    trace.append((type(info.value).__name__, info.value.link is not None))
    trace.append(await source.grants.get_grant(key.hashed))
    source.close()
    return trace


async def test_both_drivers_make_the_same_decisions(
    consent_env: ConsentEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another replica's lease is waited for a lease's length from first seeing it (its owner's
    # clock is not ours): short here, so that the "other" lease below lapses in a moment.
    monkeypatch.setattr(delegated, "LEASE_SECONDS", 1.0)
    sync = await _scenario(consent_env, sync=True)
    asynchronous = await _scenario(consent_env, sync=False)
    assert sync == asynchronous
    assert sync == [
        ("user", "delegated"),
        1,  # one refresh
        (True, None),  # rotated, lease released
        2,  # after the other replica's lease: one more
        ("ConsentRequired", True),
        None,  # the dead grant is gone
    ]


def test_sync_driver_refuses_an_event_loop_thread(consent_env: ConsentEnv) -> None:
    source, _ = consent_env.make()
    request = TokenRequest((consent_env.mcp_scope,), platform_caller("loop-user"))

    async def on_loop() -> None:
        source.get_token(request)

    with pytest.raises(ConfigurationError, match="event loop thread"):
        asyncio.run(on_loop())
