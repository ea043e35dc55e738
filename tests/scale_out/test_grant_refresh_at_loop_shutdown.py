"""A grant refresh whose own flight is cancelled while its refresh token is at Entra (the event
loop shutting down: ``asyncio.run`` returning, as after uvicorn's ``serve()``, cancels every
task left, the shielded flight too) keeps the refresh lease until its answer is in: it stores
the rotated grant, then releases the lease and ends cancelled. Another replica never redeems
the refresh token while the first one's POST of it is still at Entra (docs/scale-out.md: "While
the lease holder lives, no other replica redeems the refresh token it is redeeming"); it used
to, because the lease was released at the cancel and the rotated refresh token thrown away when
it came. Cancelled a second time while it waits, the flight gives up and leaves the lease to run
out, as a dead holder's. Two ``DelegatedConsent`` replicas over a real redis-server, real MSAL
against the emulator; replica A runs on an event loop of its own (a thread)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from _support.consent import ConsentEnv
from entra_passthrough import TokenRequest, UserKey
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._broker import consent
from ._server import RedisServer, free_port

POST = 1.5  # how long replica A's refresh POST takes


class _SlowPost:
    """Replica A's refresh: held ``POST`` seconds before it reaches Entra; records the refresh
    token Entra rotated it to."""

    def __init__(self, source: DelegatedConsent) -> None:
        self.entered = threading.Event()
        self.answered = threading.Event()
        self.rotated: list[str] = []
        original = source.client.refresh

        def refresh(refresh_token: str, *args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            time.sleep(POST)
            answer = original(refresh_token, *args, **kwargs)
            if isinstance(answer.get("refresh_token"), str):
                self.rotated.append(answer["refresh_token"])
            self.answered.set()
            return answer

        source.client.refresh = refresh  # type: ignore[method-assign]


class _Watch:
    """Replica B's refreshes: which refresh token, and whether A's POST was still at Entra."""

    def __init__(self, source: DelegatedConsent, a: _SlowPost) -> None:
        self.during_a: list[bool] = []
        self.redeemed: list[str] = []
        original = source.client.refresh

        def refresh(refresh_token: str, *args: Any, **kwargs: Any) -> Any:
            self.redeemed.append(refresh_token)
            self.during_a.append(a.entered.is_set() and not a.answered.is_set())
            return original(refresh_token, *args, **kwargs)

        source.client.refresh = refresh  # type: ignore[method-assign]


async def _replicas(
    env: ConsentEnv, server: RedisServer, user: str
) -> tuple[DelegatedConsent, DelegatedConsent, TokenRequest, str, list[RedisStore]]:
    namespace = f"shutdown{free_port()}:"
    keyring = Keyring.generate()
    stores = [RedisStore.from_url(server.url, namespace=namespace, timeout=2) for _ in range(2)]
    a = env.make(store=stores[0], keyring=keyring)[0]
    b = env.make(store=stores[1], keyring=keyring)[0]
    request = await consent(env, b, user, f"chat-{user}-{namespace}")
    key = UserKey.from_caller(request.caller)
    assert key is not None
    return a, b, request, key.hashed, stores


async def _in_a_thread(main: Callable[[], Coroutine[Any, Any, None]]) -> float:
    """``asyncio.run(main())`` on a thread of its own (replica A's process); its seconds."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run, name="replica-a")
    start = time.monotonic()
    thread.start()
    while thread.is_alive() and time.monotonic() - start < 30:  # bounded
        await asyncio.sleep(0.02)
    assert not thread.is_alive(), "replica A's event loop never shut down"
    assert not errors, errors
    return time.monotonic() - start


async def _until(event: threading.Event) -> None:
    for _ in range(1000):  # bounded (~10 s)
        if event.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("replica A's refresh never reached its POST")


async def test_loop_shutdown_mid_post_stores_the_rotated_grant(
    consent_env: ConsentEnv, redis_server: RedisServer
) -> None:
    a, b, request, hashed, stores = await _replicas(consent_env, redis_server, "rita")
    try:
        old = (await b.grants.get_grant(hashed) or pytest_fail())[0].refresh_token
        slow = _SlowPost(a)
        watch = _Watch(b, slow)
        lease_during_post: list[str | None] = []

        async def replica_a() -> None:
            caller = asyncio.ensure_future(a.get_token_async(request))
            await _until(slow.entered)
            assert not caller.done()
            # returns with the refresh at Entra: asyncio.run cancels every task left

        async def replica_b() -> None:
            # While A's POST is at Entra, B's request for the same user waits for A's lease.
            await _until(slow.entered)
            found = await b.grants.get_grant(hashed)
            assert found is not None
            lease_during_post.append(found[0].lease_owner)

        b_side = asyncio.ensure_future(replica_b())
        took = await _in_a_thread(replica_a)
        await b_side
        after_a = (await b.grants.get_grant(hashed) or pytest_fail())[0]
        start = time.monotonic()
        token = await asyncio.wait_for(b.get_token_async(request), 30)
        b_took = time.monotonic() - start
        await _until(slow.answered)  # (A's POST, had its loop not waited for it)

        assert not any(watch.during_a), (
            "B redeemed the refresh token while A's POST of it was still at Entra"
        )
        assert lease_during_post[0] is not None, "no lease while A's POST was at Entra"
        assert took >= POST * 0.8, f"A's loop ended after {took:.2f} s, before its POST did"
        assert after_a.lease_owner is None, "A's lease was left behind after its answer came"
        assert slow.rotated, "Entra rotated no refresh token for A"
        assert after_a.refresh_token == slow.rotated[0] != old, (
            "the refresh token Entra rotated for A was not stored"
        )
        assert token is not None
        assert watch.redeemed == [slow.rotated[0]], "B did not redeem A's rotated refresh token"
        assert b_took < 5, f"B waited {b_took:.1f} s for a lease A should have released"
    finally:
        for store in stores:
            await store.aclose()


async def test_a_flight_cancelled_again_leaves_the_lease_to_run_out(
    consent_env: ConsentEnv, redis_server: RedisServer
) -> None:
    a, b, request, hashed, stores = await _replicas(consent_env, redis_server, "quinn")
    try:
        old = (await b.grants.get_grant(hashed) or pytest_fail())[0].refresh_token
        slow = _SlowPost(a)
        waited: list[bool] = []
        ended: list[bool] = []

        async def replica_a() -> None:
            caller = asyncio.ensure_future(a.get_token_async(request))
            await _until(slow.entered)
            (_, flight), *_ = a._flights.values()
            flight.cancel()
            await asyncio.sleep(0.05)
            waited.append(not flight.done())
            flight.cancel()  # again: it gives up
            await asyncio.wait({flight, caller}, timeout=5)
            ended.append(flight.cancelled() and caller.cancelled())

        took = await _in_a_thread(replica_a)
        grant = (await b.grants.get_grant(hashed) or pytest_fail())[0]
        assert not slow.answered.is_set()
        assert grant.lease_owner is not None, "the lease was released while A's POST was at Entra"
        assert grant.lease_until > time.time() + 5
        assert grant.refresh_token == old
        assert waited == [True], "the flight did not wait for its POST's answer"
        assert ended == [True], "the flight cancelled twice did not end cancelled"
        assert took < POST, f"A's loop waited {took:.2f} s for a flight cancelled twice"
    finally:
        for _ in range(int(POST * 100) + 500):  # bounded: A's POST ends by itself
            if slow.answered.is_set():
                break
            await asyncio.sleep(0.01)
        for store in stores:
            await store.aclose()


def pytest_fail() -> Any:
    raise AssertionError("the user's grant is gone")
