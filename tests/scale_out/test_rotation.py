"""Consent key rotation end to end (the emulator, the broker, a browser): list the new key
second, switch, drop the old one. A platform user who was active after the switch keeps both
grant and binding; one who was not is refused with an error that says why and what to do."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

from _support.consent import ConsentEnv, follow_link, platform_caller
from entra_passthrough import ConsentRequired, TokenRequest, UserKey
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._server import RedisServer, free_port

K1, K2 = Keyring.generate("k1").keys["k1"], Keyring.generate("k2").keys["k2"]
BEFORE = Keyring({"k1": K1}, current="k1")
LISTED = Keyring({"k1": K1, "k2": K2}, current="k1")
SWITCHED = Keyring({"k2": K2, "k1": K1}, current="k2")
DROPPED = Keyring({"k2": K2}, current="k2")


def _request(env: ConsentEnv, name: str) -> TokenRequest:
    chat = platform_caller(f"chat-rot-{name}-{time.monotonic_ns()}", upn=env.idp.users["pat"].upn)
    return TokenRequest(scopes=(env.mcp_scope,), caller=chat)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    made = RedisStore.from_url(redis_server.url, namespace=f"rot{free_port()}:")
    yield made
    await made.aclose()


def _replica(env: ConsentEnv, store: RedisStore, keyring: Keyring) -> Any:
    """A replica (and the broker mounted on it) deployed with ``keyring``."""
    return env.make(store=store, keyring=keyring)[0]  # type: ignore[arg-type]


async def _sign_in(
    env: ConsentEnv, keyring: Keyring, store: RedisStore, request: TokenRequest
) -> httpx2.Response:
    """ConsentRequired from a replica with ``keyring``, then the user follows the link."""
    source = _replica(env, store, keyring)
    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(request)
    assert info.value.link is not None
    return await follow_link(env, info.value.link)


async def test_a_user_active_after_the_switch_signs_in_again_after_the_drop(
    consent_env: ConsentEnv, store: RedisStore
) -> None:
    env = consent_env
    request = _request(env, "active")
    page = await _sign_in(env, BEFORE, store, request)
    assert page.status_code == 200, page.text
    for keyring in (LISTED, SWITCHED):  # a call after each deployment
        source = _replica(env, store, keyring)
        assert await source.get_token_async(request) is not None
    source = _replica(env, store, DROPPED)
    assert await source.get_token_async(request) is not None  # the grant was re-sealed
    # signed out, the user consents again: the binding (re-sealed too) is still theirs
    key = UserKey.from_caller(request.caller)
    assert key is not None
    assert await source.grants.delete_grant(key.hashed)
    page = await _sign_in(env, DROPPED, store, request)
    assert page.status_code == 200, page.text


async def test_a_user_away_over_the_rotation_is_told_why_sign_in_is_refused(
    consent_env: ConsentEnv, store: RedisStore
) -> None:
    env = consent_env
    request = _request(env, "away")
    page = await _sign_in(env, BEFORE, store, request)
    assert page.status_code == 200, page.text
    page = await _sign_in(env, DROPPED, store, request)  # nothing of k1 opens any more
    assert page.status_code == 400, page.text
    assert "<code>binding_unreadable</code>" in page.text
    assert "ENTRA_PASSTHROUGH_CONSENT_KEYS" in page.text
    assert "does not hold" in page.text  # which way the rotation went is the log's to say
    assert "no longer holds" not in page.text
    assert "Nothing was stored" in page.text
    # the fix the page names: the old key listed again (second), the user is served again
    source = _replica(env, store, SWITCHED)
    assert await source.get_token_async(request) is not None
