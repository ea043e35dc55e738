"""Root conftest: the parallel run (``make pytest``: pytest-xdist, ``-n 4 --dist loadgroup``).

Shared test helpers live in ``tests/_support`` (on ``sys.path`` through the ``pythonpath``
setting in pyproject.toml), never in another test module; the worker groups are listed in
``tests/_support/parallel.py``.
"""

from __future__ import annotations

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
