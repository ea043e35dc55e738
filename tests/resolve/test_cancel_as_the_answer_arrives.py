"""A cancel that lands as the awaited answer arrives cancels the request: it never returns
the answer as if nothing had happened. On Python 3.11, ``asyncio.wait_for`` does exactly that
(python/cpython#86296): an app's ``asyncio.timeout`` around a call, or a client that went away,
was ignored and the request ran on. Our own waits use ``asyncio.timeout`` instead."""

from __future__ import annotations

import ast
import asyncio
import threading
import time
from pathlib import Path

import pytest

from entra_passthrough._msal import WorkerPool

SRC = Path(__file__).resolve().parents[2] / "src" / "entra_passthrough"


async def test_a_worker_answer_that_arrives_with_the_cancel_does_not_swallow_it() -> None:
    pool = WorkerPool(max_workers=2)
    try:
        for _ in range(20):
            release = threading.Event()
            started = threading.Event()

            def work(started: threading.Event = started, release: threading.Event = release) -> str:
                started.set()
                release.wait(5)
                return "answer"

            task = asyncio.create_task(pool.run(work, wait_at_most=30))
            while not started.is_set():
                await asyncio.sleep(0.001)
            release.set()
            # Block the loop while the worker finishes: its answer is queued on the loop
            # before the cancel is, so both land in the same iteration.
            time.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        pool.close()


def test_no_module_waits_with_asyncio_wait_for() -> None:
    """A guard: ``asyncio.wait_for`` swallows such a cancel on 3.11 (the versions we support)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "wait_for"
                and isinstance(node.value, ast.Name)
                and node.value.id == "asyncio"
            ):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not found, f"use `async with asyncio.timeout(...)` instead: {found}"
