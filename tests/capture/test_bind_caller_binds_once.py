"""One ``bind_caller`` object binds once; after every exit the caller bound before is bound again.

A ``bind_caller`` kept one reset token: entered twice (nested, or by two tasks) the second enter
overwrote it, so the ended Caller stayed bound after both blocks, and an exit in another context
than its enter raised contextvars' raw ``ValueError``. A second enter is now refused with a
``ConfigurationError`` saying to create one per block; an exit in another context ends the Caller
and unbinds it there.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from _support.tokens import unsigned_jwt
from entra_passthrough import ConfigurationError, bind_caller, current_caller

TOKEN = unsigned_jwt(oid="alice", exp=4102444800)
OTHER = unsigned_jwt(oid="bob", exp=4102444800)


def test_nested_reuse_is_refused_and_leaves_nothing_bound() -> None:
    binder = bind_caller(token=TOKEN)
    with binder as caller:
        with pytest.raises(ConfigurationError) as raised, binder:
            pass  # pragma: no cover - never entered
        assert current_caller() is caller
        assert caller.active  # the refused enter ended nothing
    assert current_caller() is None
    assert not caller.active
    assert raised.value.fix is not None
    assert "bind_caller" in raised.value.fix
    assert TOKEN not in str(raised.value)


def test_reuse_after_the_block_is_refused() -> None:
    binder = bind_caller(token=TOKEN)
    with binder:
        pass
    with pytest.raises(ConfigurationError), binder:
        pass  # pragma: no cover - never entered
    assert current_caller() is None


def test_the_outer_caller_is_bound_again_after_each_exit() -> None:
    with bind_caller(token=OTHER) as outer:
        with bind_caller(token=TOKEN) as inner:
            assert current_caller() is inner
        assert current_caller() is outer
        assert outer.active
    assert current_caller() is None


async def test_two_tasks_sharing_one_binder() -> None:
    binder = bind_caller(token=TOKEN)

    async def use(delay: float) -> object:
        async with binder:
            await asyncio.sleep(delay)
        return current_caller()

    results = await asyncio.gather(use(0.05), use(0.01), return_exceptions=True)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1
    assert isinstance(refused[0], ConfigurationError)
    assert [r for r in results if not isinstance(r, BaseException)] == [None]
    assert current_caller() is None


def _enter_and_exit(binder: bind_caller, start: threading.Barrier, outcomes: list[object]) -> None:
    start.wait(5)
    try:
        with binder:
            pass
        outcomes.append(current_caller())
    except ConfigurationError as exc:
        outcomes.append(exc)


def test_two_threads_entering_at_once_one_is_refused() -> None:
    for _ in range(20):
        binder = bind_caller(token=TOKEN)
        start = threading.Barrier(2)
        outcomes: list[object] = []
        threads = [
            threading.Thread(target=_enter_and_exit, args=(binder, start, outcomes))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sum(isinstance(o, ConfigurationError) for o in outcomes) == 1
        assert None in outcomes


def test_exit_in_another_context_ends_and_unbinds_there() -> None:
    with bind_caller(token=OTHER) as before:
        binder = bind_caller(token=TOKEN)
        entered = contextvars.copy_context()
        caller = entered.run(binder.__enter__)
        assert entered.run(current_caller) is caller
        # exited here, where it was never entered: no raw ValueError from contextvars
        binder.__exit__(None, None, None)
        assert current_caller() is before
        assert not caller.active
        # exited in a copy of the context it was entered in: the caller before it again
        binder = bind_caller(token=TOKEN)
        caller = binder.__enter__()
        elsewhere = contextvars.copy_context()
        elsewhere.run(binder.__exit__, None, None, None)
        assert elsewhere.run(current_caller) is before
        assert not caller.active
        assert current_caller() is caller  # the entering context keeps it, ended
    assert current_caller() is None


def test_exit_outside_the_event_loop_it_was_entered_in() -> None:
    binder = bind_caller(token=TOKEN)

    async def enter() -> None:
        await binder.__aenter__()

    asyncio.run(enter())
    binder.__exit__(None, None, None)  # was: ValueError (created in a different Context)
    assert not binder.caller.active
    assert current_caller() is None
