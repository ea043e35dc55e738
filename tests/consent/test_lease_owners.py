"""A refresh lease is taken over as "our own" only when this process wrote it without getting
the answer. A worker forked after the ``DelegatedConsent`` was built (gunicorn ``--preload``,
Celery prefork) shares its tag: its live lease is another's, waited for, never taken over (two
redemptions of one refresh token). Real MSAL, the emulator over HTTPS, the broker mounted."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

from _support.consent import ConsentEnv, consent_link, follow_link, platform_caller
from entra_passthrough import TokenRequest
from entra_passthrough._store import MemoryStore
from entra_passthrough._user_key import UserKey


async def test_a_live_lease_with_our_tag_from_another_process_is_waited_for(
    consent_env: ConsentEnv,
) -> None:
    env = consent_env
    source, _ = env.make(store=MemoryStore())
    caller = platform_caller("chat-user-forked", upn=env.idp.users["alice"].upn)
    page = await follow_link(env, await consent_link(source, env, caller))
    assert page.status_code == 200, page.text
    key = UserKey.for_platform_user("chat-user-forked").hashed
    found = await source.grants.get_grant(key)
    assert found is not None
    grant, version = found
    # What a sibling worker (forked from the same instance: the same tag, another pid) wrote
    # when it started its refresh, a second ago.
    sibling = f"{source._replica}:{os.getpid() + 1}:0000abcd"
    leased = dataclasses.replace(grant, lease_owner=sibling, lease_until=time.time() + 3.0)
    assert await source.grants.put_grant(key, leased, expect=version)
    call = asyncio.create_task(
        source.get_token_async(TokenRequest(scopes=(env.mcp_scope,), caller=caller))
    )
    try:
        await asyncio.sleep(1.0)  # bounded: the lease lives 3 s
        now = await source.grants.get_grant(key)
        assert now is not None
        assert now[0].lease_owner == sibling  # not taken over while it lives
    finally:
        result = await asyncio.wait_for(call, 30)
    assert result.kind == "user"
