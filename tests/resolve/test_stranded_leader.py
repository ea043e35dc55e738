"""A single-flight leader stranded on a closed event loop does not lock its user out.

An event loop closed without cancelling its tasks (a loop managed by hand, a thread's loop
stopped and dropped) leaves a task that leads a user's acquisition pending forever: it never
runs again. Its waiters, and every later caller of the same user and scopes, waited for it:
async callers without bound, sync callers 120 s; when the garbage collector finally closed the
stranded coroutine, its waiters were handed a raw ``GeneratorExit``. A waiter now sees the
leader's loop closed and takes over, as it does when the leader is cancelled."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from typing import Any

import pytest

from entra_passthrough import TokenChain, bind_caller
from entra_passthrough.testing import EntraEmulator

from .conftest import decode, make_obo, mcp_scope


def _strand(coro: Any) -> asyncio.Task[Any]:
    """Start ``coro`` on a new loop, let it reach Entra, close the loop under it."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)
    loop.run_until_complete(asyncio.sleep(0.3))
    loop.close()  # by hand: the task is left pending, never cancelled
    assert not task.done()
    return task


def _in_thread(fn: Any, within: float) -> Any:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), "still waiting for the stranded leader"
    if "error" in out:
        raise out["error"]
    return out["result"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_leader_on_a_closed_loop_is_taken_over(idp: EntraEmulator) -> None:
    idp.token_latency = 1.0  # the leader is still waiting for Entra when its loop closes
    chain = TokenChain([make_obo(idp)])
    scopes = mcp_scope(idp)
    alice = idp.user_token("alice", audience=idp.agent.client_id)
    oid = idp.users["alice"].oid

    async def get() -> str:
        with bind_caller(token=alice):
            return (await chain.get_token_async(scopes)).token

    try:
        # A waiter on its own loop joins the leader before the leader's loop goes away.
        joined: dict[str, Any] = {}
        early = threading.Thread(
            target=lambda: joined.setdefault("token", asyncio.run(asyncio.wait_for(get(), 20)))
        )
        stranded: list[asyncio.Task[Any]] = []
        loop = asyncio.new_event_loop()
        task = loop.create_task(get())
        loop.run_until_complete(asyncio.sleep(0.2))
        early.start()
        loop.run_until_complete(asyncio.sleep(0.2))
        loop.close()
        stranded.append(task)

        # Later callers: a new loop (bounded) and a sync thread.
        started = time.monotonic()
        token = asyncio.run(asyncio.wait_for(get(), 15))
        assert decode(token)["oid"] == oid

        def sync() -> str:
            with bind_caller(token=alice):
                return chain.get_token(scopes).token

        assert decode(_in_thread(sync, 15))["oid"] == oid
        assert time.monotonic() - started < 15
        early.join(20)
        assert not early.is_alive()
        assert decode(joined["token"])["oid"] == oid  # a token, never a GeneratorExit

        # The stranded coroutine finalized by the collector hands nobody anything.
        stranded.clear()
        del task
        gc.collect()
        bob = idp.user_token("bob", audience=idp.agent.client_id)
        with bind_caller(token=bob):
            assert decode(chain.get_token(scopes).token)["oid"] == idp.users["bob"].oid
    finally:
        idp.token_latency = 0.0
        chain.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sync_waiter_takes_over_from_a_stranded_leader(idp: EntraEmulator) -> None:
    idp.token_latency = 1.0
    chain = TokenChain([make_obo(idp)])
    scopes = mcp_scope(idp)
    alice = idp.user_token("alice", audience=idp.agent.client_id)

    async def get() -> str:
        with bind_caller(token=alice):
            return (await chain.get_token_async(scopes)).token

    try:
        task = _strand(get())

        def sync() -> str:
            with bind_caller(token=alice):
                return chain.get_token(scopes).token

        assert decode(_in_thread(sync, 15))["oid"] == idp.users["alice"].oid
        del task
        gc.collect()  # the stranded coroutine is finalized here, under this test's filter
    finally:
        idp.token_latency = 0.0
        chain.close()
