"""A cancel of the task that awaits a ``RedisStore`` call comes out of the call: an
``asyncio.timeout`` around store calls made in the request's own task fires, the request does
not run on to its end. Over a real redis-server.

On Python 3.11, ``asyncio.wait_for`` returns its result when a cancel lands as the awaited step
ends (python/cpython#86296, fixed in 3.12), and redis-py sends every command under it (its
socket timeout): a cancel landing a few loop turns into a command was absorbed, the call returned
as if nothing happened, and ``asyncio.timeout`` (which cancels once) never fired. The
store raises such a cancel again when the call ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import anyio
import pytest

from entra_passthrough._grants import GrantStore
from entra_passthrough._store import ANY, Keyring
from entra_passthrough.redis import RedisStore

from ._server import RedisServer, free_port

#: Loop turns after which the cancel lands (on 3.11, 1 to 3 landed in redis-py's absorbing
#: ``wait_for``, 6 and 7 in a first ``put``'s second command, the eviction-policy check).
TURNS = range(8)


async def _outcome(call: Callable[[], Awaitable[object]], turns: int) -> str:
    """Run ``call`` in a task, cancel it after ``turns`` loop turns: how the task ended."""
    task = asyncio.ensure_future(call())
    for _ in range(turns):
        await asyncio.sleep(0)
    requested = task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return "cancelled"
    return "absorbed" if requested else "done"


async def test_a_cancel_comes_out_of_every_store_call(redis_server: RedisServer) -> None:
    store = RedisStore.from_url(redis_server.url, namespace=f"cancel{free_port()}:", timeout=5)
    try:
        version = await store.put("warm", b"v", ttl=60)
        assert version is not None
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "get": lambda: store.get("warm"),
            "put": lambda: store.put("k", b"v", ttl=60),
            "put if absent": lambda: store.put("absent", b"v", ttl=60, expect=None),
            "compare-and-set": lambda: store.put("warm", b"v", ttl=60, expect=version),
            "delete": lambda: store.delete("gone", expect=ANY),
            "compare-and-delete": lambda: store.delete("warm", expect="0" * 16),
            "ping": store.ping,
        }
        absorbed = [
            (name, turns)
            for name, call in calls.items()
            for turns in TURNS
            for _ in range(3)
            if await _outcome(call, turns) == "absorbed"
        ]
        assert not absorbed, f"store calls that absorbed their task's cancel: {absorbed}"
        # The store still works (the cancelled calls left no connection half-read).
        assert await store.put("after", b"w", ttl=60) is not None
        found = await store.get("after")
        assert found is not None
        assert found.value == b"w"
    finally:
        await store.aclose()


async def test_asyncio_timeout_around_store_calls_fires(redis_server: RedisServer) -> None:
    """What the app sees: ``asyncio.timeout`` around its own store and grant-store calls, the
    deadline landing inside them; the rest of the request (a 1 s sleep) never runs."""
    store = RedisStore.from_url(redis_server.url, namespace=f"timeout{free_port()}:", timeout=5)
    grants = GrantStore(store, Keyring.generate(), client_id="11111111-2222-3333-4444-555555555555")
    loop = asyncio.get_running_loop()
    try:
        await store.get("warm")
        bodies: dict[str, Callable[[], Awaitable[object]]] = {
            "RedisStore.get": lambda: store.get("k"),
            "RedisStore.put": lambda: store.put("k", b"v", ttl=60),
            "GrantStore.get_grant": lambda: grants.get_grant("user-hash"),
        }
        overran: list[tuple[str, int, float]] = []
        for name, body in bodies.items():
            for turns in TURNS:
                start = time.monotonic()
                try:
                    async with asyncio.timeout(None) as deadline:

                        def expire(left: int, scope: asyncio.Timeout = deadline) -> None:
                            if left:
                                loop.call_soon(expire, left - 1)
                            else:
                                scope.reschedule(loop.time())  # fires on the next loop turn

                        loop.call_soon(expire, turns)
                        await body()
                        await asyncio.sleep(1.0)  # the rest of the request
                except TimeoutError:
                    pass
                took = time.monotonic() - start
                if took > 0.5:
                    overran.append((name, turns, round(took, 2)))
        assert not overran, f"asyncio.timeout did not fire around: {overran}"
    finally:
        await store.aclose()


async def _absorbing() -> None:
    """A command that absorbs a cancel, as Python 3.11's ``asyncio.wait_for`` does when the
    cancel lands as its step ends: caught, and the call returns."""
    try:
        await asyncio.sleep(0.5)
    except asyncio.CancelledError:
        return


async def test_an_absorbed_cancel_is_raised_again_or_left_to_anyio(
    redis_server: RedisServer,
) -> None:
    """On any Python: a cancel absorbed inside a store call's turn comes out of it for
    ``asyncio.timeout`` (edge-triggered: it cancels once); under a cancelled anyio scope
    (level-triggered: it cancels again at the next await, with the message by which the scope
    knows its own cancel) it is left to anyio, so the scope still catches its own cancel."""
    store = RedisStore.from_url(redis_server.url, namespace=f"absorb{free_port()}:", timeout=5)
    loop = asyncio.get_running_loop()
    try:
        bound = await store._bound()

        async def under_asyncio_timeout() -> None:
            async with asyncio.timeout(0.02):
                async with bound.turn():
                    await _absorbing()
                await asyncio.sleep(1.0)  # the rest of the request

        async def under_fail_after() -> None:
            with anyio.fail_after(0.02):
                async with bound.turn():
                    await _absorbing()
                await anyio.sleep(1.0)

        for request in (under_asyncio_timeout, under_fail_after):
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                await request()
            assert time.monotonic() - start < 0.4

        start = time.monotonic()
        with anyio.CancelScope() as scope:
            loop.call_later(0.02, scope.cancel)
            async with bound.turn():
                await _absorbing()
            await anyio.sleep(1.0)
        assert scope.cancelled_caught
        assert time.monotonic() - start < 0.4
        # The store still works.
        assert await store.put("after", b"w", ttl=60) is not None
    finally:
        await store.aclose()
