"""Root conftest: how the suite runs in parallel (``make pytest``: pytest-xdist with
``-n 4 --dist loadgroup``).

Shared test helpers live in ``tests/_support`` (on ``sys.path`` through the ``pythonpath``
setting in pyproject.toml), never in another test module.

Groups: tests that share something a second worker must not build or touch at the same time run
on one worker, in order. They are listed here by node id rather than marked with
``@pytest.mark.xdist_group``: pytest-xdist 3.8 adds the group to ``item._nodeid``, which pytest 9
no longer reads, so the marks are silently ignored there. A ``name@group`` node id (what xdist
produces where the marks work) is honoured too.
"""

from __future__ import annotations

from typing import Any

import pytest

#: (node id prefix, group). The first match wins.
XDIST_GROUPS: tuple[tuple[str, str], ...] = (
    # One mkdocs build (a module fixture, ~30 s) for every page check, not one per worker.
    ("tests/docs/test_site.py::", "docs-site"),
    # One wheel and one core-only venv (session fixtures, ~20 s each) for the packaging tests.
    ("tests/packaging/", "packaging"),
)

#: Node ids containing one of these share a machine-wide resource (Azure Arc's challenge
#: folder, /var/opt/azcmagent/tokens, on every host that emulates Arc).
XDIST_SHARED: tuple[tuple[str, str], ...] = (("[azure_arc", "azure-arc"),)


def xdist_group(nodeid: str) -> str | None:
    """The group of a test (None: it may run on any worker, beside anything)."""
    for prefix, group in XDIST_GROUPS:
        if nodeid.startswith(prefix):
            return group
    for part, group in XDIST_SHARED:
        if part in nodeid:
            return group
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class Scheduling(LoadGroupScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            scope = str(super()._split_scope(nodeid))  # "a@group" -> "group", else the node id
            return scope if scope != nodeid else (xdist_group(nodeid) or nodeid)

    return Scheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, start the tests marked ``slow`` first (a stable sort: the order within each
    part is kept), so the long ones overlap the many short ones instead of trailing them."""
    if not hasattr(config, "workerinput"):  # not an xdist worker: keep the collection order
        return
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
