"""Drivers of a decision flow: a generator with no I/O that yields steps.

The chain's resolution, the cache's lookup and refresh, the shared (L2) cache's acquisition,
re-read, write and lease renewal, and ``DelegatedConsent``'s grant refresh are written once as
such generators (encode/httpx's ``auth_flow`` idea; the apply stage's
``_flow.py`` follows it too). ``drive`` runs one with a blocking ``do``, ``drive_async`` with a
coroutine function: each step's result is sent back in, each error thrown in where it was
yielded, and the generator's return value is the driver's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

from ._errors import ConfigurationError

__all__ = ["drive", "drive_async", "require_asyncio"]

_T = TypeVar("_T")
_S = TypeVar("_S")


def _resume(flow: Generator[_S, object, _T], value: object, error: BaseException | None) -> Any:
    """``(True, return value)`` once ``flow`` ends, else ``(False, next step)``."""
    try:
        return False, (flow.send(value) if error is None else flow.throw(error))
    except StopIteration as stop:
        return True, stop.value


def _call(do: Callable[[_S], object], step: _S) -> tuple[object, BaseException | None]:
    try:
        return do(step), None
    except BaseException as exc:
        return None, exc


def drive(flow: Generator[_S, object, _T], do: Callable[[_S], object]) -> _T:
    """Run a decision ``flow`` to its end: ``do`` each step it yields and send back what
    ``do`` returned, or throw in what it raised. The sync driver; ``drive_async`` awaits."""
    done, step = _resume(flow, None, None)
    while not done:
        done, step = _resume(flow, *_call(do, step))
    return step  # type: ignore[no-any-return]


async def drive_async(flow: Generator[_S, object, _T], do: Callable[[_S], Awaitable[object]]) -> _T:
    """``drive`` for a ``do`` that is a coroutine function (the same flow, awaited)."""
    done, step = _resume(flow, None, None)
    while not done:
        # Resumed outside the ``except``, as ``drive`` does: resumed inside it, an error the
        # flow raises later (the chain's chosen error) took the one being handled (an error the
        # chain outranked, another source's) as its ``__context__``.
        error: BaseException | None = None
        value: object = None
        try:
            value = await do(step)
        except BaseException as exc:
            error = exc
        done, step = _resume(flow, value, error)
    return step  # type: ignore[no-any-return]


def require_asyncio(api: str) -> None:
    """Refuse an async entry point called without an asyncio event loop (trio, anyio's trio
    backend): its I/O (worker threads, tasks, futures) is asyncio's, and it failed deep inside
    with an untyped RuntimeError or TypeError that read like an outage."""
    if not loop_running_here():
        raise ConfigurationError(
            f"{api} needs an asyncio event loop (uvloop works), and none runs here (trio?).",
            fix="run it under asyncio, or under trio call the sync API (TokenChain.get_token, "
            "JwtVerifier.verify) from a worker thread: trio.to_thread.run_sync(...).",
        )


def loop_running_here() -> bool:
    """Does this thread run an event loop (which a blocking wait would stop)?"""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def hold(
    tasks: set[asyncio.Future[Any]],
    task: asyncio.Future[Any],
    failed: Callable[[BaseException], None] | None = None,
) -> None:
    """Keep ``task`` in ``tasks`` until it ends (a loop holds its tasks only weakly), then
    retrieve its error (no "exception was never retrieved") and hand it to ``failed``."""
    tasks.add(task)

    def ended(done: asyncio.Future[Any]) -> None:
        tasks.discard(done)
        if not done.cancelled() and (exc := done.exception()) is not None and failed is not None:
            failed(exc)

    task.add_done_callback(ended)
