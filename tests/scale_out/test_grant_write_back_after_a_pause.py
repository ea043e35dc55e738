"""Redis pauses for longer than the grant's refresh lease right after Entra answered replica A's
refresh, before A stored the rotated grant; A stays alive, and replica B needs the same user's
token. Over a real redis-server (``CLIENT PAUSE``) with real MSAL against the emulator, each
refresh token is redeemed once, counted at the emulator:

- ``WRITE`` (what a failover or patching does): B still reads A's lease while writes are held;
  once it has waited the lease out, its own write taking the lease over is held, not refused.
  B counts that as store trouble and waits for A's write-back instead of redeeming at once.
- ``ALL``: A's next call for the user is served from its memory (no store call), so only A's
  background write-back puts the rotated grant in place before B's wait for A's lease ends.

The lease is shortened through ``delegated.LEASE_SECONDS`` (20 s by default)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import pytest
import redis

import entra_passthrough.testing._token_endpoint as token_endpoint
from _support.consent import ConsentEnv
from entra_passthrough import SourceUnavailable, TokenCache, TokenChain, UserKey
from entra_passthrough._jwt import fingerprint
from entra_passthrough._sources import delegated
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._broker import StandaloneBroker, consent
from ._server import RedisServer

GRANT_LEASE = 3.0  # delegated.LEASE_SECONDS
PAUSE_MS = 6000  # CLIENT PAUSE: twice the lease


@pytest.fixture
def redeemed(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every refresh token the emulator redeems, by fingerprint (never the token itself)."""
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    original = token_endpoint._refresh

    def refresh(rt: Any, form: Any, client: Any, tenant: Any) -> Any:
        with lock:
            counts[fingerprint(form.get("refresh_token") or "")] += 1
        return original(rt, form, client, tenant)

    monkeypatch.setattr(token_endpoint, "_refresh", refresh)
    return counts


@pytest.fixture
def server(fresh_redis: RedisServer) -> RedisServer:
    """A redis-server of this test's own (a pause stops every client of it)."""
    return fresh_redis.start()


def _pause_after_the_answer(source: DelegatedConsent, server: RedisServer, mode: str) -> Any:
    """Make ``source``'s first refresh pause Redis (``mode``) once Entra has answered, before
    the source stores the rotated grant; the event is set then."""
    original = source.client.refresh
    paused = threading.Event()

    def refresh(*args: Any, **kwargs: Any) -> Any:
        answer = original(*args, **kwargs)
        if not paused.is_set():
            admin = server.client()
            try:
                admin.execute_command("CLIENT", "PAUSE", str(PAUSE_MS), mode)
            finally:
                admin.close()
            paused.set()
        return answer

    source.client.refresh = refresh  # type: ignore[method-assign]
    return paused


async def _pause_over(server: RedisServer) -> None:
    """Return once Redis answers everyone again (a PING is held by ``CLIENT PAUSE ALL``)."""
    admin = redis.Redis.from_url(server.url, socket_timeout=PAUSE_MS / 1000 + 30)
    try:
        await asyncio.to_thread(admin.ping)
    finally:
        admin.close()


def _twice(redeemed: Counter[str]) -> int:
    return sum(n > 1 for n in redeemed.values())


async def _released(source: DelegatedConsent, request: Any) -> bool:
    key = UserKey.from_caller(request.caller)
    assert key is not None
    found = await source.grants.get_grant(key.hashed)
    return found is not None and found[0].lease_owner is None


def _write_back_after_the_takeover(a: DelegatedConsent, b: DelegatedConsent) -> threading.Event:
    """Once the returned event is set, A's writes of its rotated grant wait until B has taken
    A's lease over and then either read the grant again (it waits for A's write-back) or
    started its POST (it redeems A's redeemed refresh token): A's write-back lands after the
    takeover, as it does when A's retry is between two tries when Redis takes writes again."""
    armed, taken, gate = threading.Event(), threading.Event(), threading.Event()
    put_under_lease, put, get = (
        a.grants.put_grant_under_lease,
        b.grants.put_grant,
        b.grants.get_grant,
    )
    refresh = b.client.refresh

    async def a_write(*args: Any, **kwargs: Any) -> Any:
        if armed.is_set():
            await asyncio.to_thread(gate.wait, 60)  # bounded
        return await put_under_lease(*args, **kwargs)

    async def b_put(*args: Any, **kwargs: Any) -> Any:
        version = await put(*args, **kwargs)
        if armed.is_set() and version is not None:
            taken.set()  # B's first write since: taking A's lease over
        return version

    async def b_get(*args: Any, **kwargs: Any) -> Any:
        if taken.is_set():
            gate.set()
        return await get(*args, **kwargs)

    def b_refresh(*args: Any, **kwargs: Any) -> Any:
        gate.set()
        return refresh(*args, **kwargs)

    a.grants.put_grant_under_lease = a_write  # type: ignore[method-assign]
    b.grants.put_grant = b_put  # type: ignore[method-assign]
    b.grants.get_grant = b_get  # type: ignore[method-assign]
    b.client.refresh = b_refresh  # type: ignore[method-assign]
    return armed


async def test_a_takeover_held_by_paused_writes_waits_for_the_holders_write_back(
    consent_env: ConsentEnv,
    server: RedisServer,
    redeemed: Counter[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delegated, "LEASE_SECONDS", GRANT_LEASE)
    env = consent_env
    keyring = Keyring.generate()
    # A's write of the rotated grant fails fast while writes are held; B's takeover write is
    # held until the pause ends (its timeout is longer than the pause).
    stores = [
        RedisStore.from_url(server.url, timeout=0.3),
        RedisStore.from_url(server.url, timeout=PAUSE_MS / 1000 + 20),
    ]
    broker = None
    try:
        a, b = (env.make(store=store, keyring=keyring)[0] for store in stores)  # type: ignore[arg-type]
        broker = StandaloneBroker(env, RedisStore.from_url(server.url), keyring)
        request = await consent(env, a, "rita", "chat-rita-write-pause")
        paused = _pause_after_the_answer(a, server, "WRITE")
        first = await a.get_token_async(request)  # redeemed; its write-back is held
        assert first is not None
        assert paused.is_set()
        _write_back_after_the_takeover(a, b).set()
        second = await asyncio.wait_for(b.get_token_async(request), 90)
        assert second is not None
        assert (second.token != first.token, len(redeemed), _twice(redeemed)) == (True, 2, 0)
        assert await _released(b, request)
    finally:
        for store in stores:
            await store.aclose()
        if broker is not None:
            await broker.aclose()


@pytest.mark.parametrize("driver", ["async", "sync", "loop-per-request"])
async def test_a_holder_served_from_memory_still_writes_back_after_a_pause(
    consent_env: ConsentEnv,
    server: RedisServer,
    redeemed: Counter[str],
    monkeypatch: pytest.MonkeyPatch,
    driver: str,
) -> None:
    """``loop-per-request``: each of A's requests in its own ``asyncio.run`` (a sync framework
    calling async code): the background write-back started on a request's loop is cancelled
    when that loop ends, and a thread carries it on (it was lost, and B redeemed the redeemed
    refresh token)."""
    monkeypatch.setattr(delegated, "LEASE_SECONDS", GRANT_LEASE)
    env = consent_env
    keyring = Keyring.generate()
    stores = [RedisStore.from_url(server.url, timeout=0.3) for _ in range(2)]
    broker = None
    chain: TokenChain | None = None
    try:
        a, b = (env.make(store=store, keyring=keyring)[0] for store in stores)  # type: ignore[arg-type]
        broker = StandaloneBroker(env, RedisStore.from_url(server.url), keyring)
        request = await consent(env, a, "quinn", f"chat-quinn-all-pause-{driver}")
        chain = TokenChain([a], cache=TokenCache())  # A's memory (L1)
        paused = _pause_after_the_answer(a, server, "ALL")

        async def ask_a() -> Any:
            assert chain is not None
            scopes = list(request.scopes)
            if driver == "sync":
                return await asyncio.to_thread(chain.get_token, scopes, caller=request.caller)
            if driver == "loop-per-request":
                return await asyncio.to_thread(
                    asyncio.run, chain.get_token_async(scopes, caller=request.caller)
                )
            return await chain.get_token_async(scopes, caller=request.caller)

        first = await ask_a()  # redeemed; its write-back fails (Redis paused)
        assert paused.is_set()
        with pytest.raises(SourceUnavailable):  # B sees the pause
            await b.get_token_async(request)
        await _pause_over(server)
        again = await ask_a()  # served from A's memory: no store call
        assert again.token == first.token
        second = await asyncio.wait_for(b.get_token_async(request), 90)
        assert second is not None
        assert (second.token != first.token, len(redeemed), _twice(redeemed)) == (True, 2, 0)
        assert await _released(b, request)
    finally:
        if chain is not None:
            chain.close()
        for store in stores:
            await store.aclose()
        if broker is not None:
            await broker.aclose()


async def test_close_stops_the_background_write_back(
    consent_env: ConsentEnv, server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis dies after Entra answered a sync call's refresh: the rotated grant is retried in a
    thread of its own until ``close()``, which ends it."""
    monkeypatch.setattr(delegated, "LEASE_SECONDS", GRANT_LEASE)
    env = consent_env
    keyring = Keyring.generate()
    store = RedisStore.from_url(server.url, timeout=0.3)
    broker = None
    try:
        source = env.make(store=store, keyring=keyring)[0]  # type: ignore[arg-type]
        broker = StandaloneBroker(env, RedisStore.from_url(server.url), keyring)
        request = await consent(env, source, "pat", "chat-pat-close-write-back")
        original = source.client.refresh

        def refresh(*args: Any, **kwargs: Any) -> Any:
            answer = original(*args, **kwargs)
            server.kill()
            return answer

        source.client.refresh = refresh  # type: ignore[method-assign]
        assert await asyncio.to_thread(source.get_token, request) is not None
        writer = source._writer
        assert isinstance(writer, threading.Thread)
        assert writer.is_alive()
        source.close()
        await asyncio.to_thread(writer.join, 30)  # bounded
        assert not writer.is_alive()
        assert len(source._unsaved) == 1  # not written (Redis is down): close() only stops retries
    finally:
        await store.aclose()
        if broker is not None:
            await broker.aclose()
