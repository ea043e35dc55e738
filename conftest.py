"""Root conftest: the parallel run (``make pytest``: pytest-xdist, ``-n 4 --dist loadgroup``).

Shared test helpers live in ``tests/_support`` (on ``sys.path`` through the ``pythonpath``
setting in pyproject.toml), never in another test module; the worker groups are listed in
``tests/_support/parallel.py``.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

import pytest


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None
    from _support.parallel import make_scheduler

    return make_scheduler(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, start the tests marked ``slow`` first (a stable sort: the order within each
    part is kept), so the long ones overlap the many short ones instead of trailing them."""
    if not hasattr(config, "workerinput"):  # not an xdist worker: keep the collection order
        return
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: see _exit_without_finalizing
        atexit.register(_exit_without_finalizing)


def _exit_without_finalizing() -> None:
    """A worker's last act (its results are with the controller by then): leave without the
    interpreter's finalization, a full garbage collection of everything the worker's tests left
    behind (seconds per worker, measured; the controller waits for every worker to exit, up to
    xdist's 10 s before it kills one). Runs after the atexit handlers registered later than it
    (pytest's, the tests'), and after non-daemon threads were joined."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(autouse=True)
def _fresh_warning_coalescer() -> None:
    """The library coalesces repeated warnings process-wide (a burst, then one per interval).
    A worker runs many tests in one process: without a reset, a test asserting that a failure
    is logged as a warning depends on which tests ran before it in that worker."""
    from entra_passthrough._otel import COALESCER

    COALESCER.reset()
