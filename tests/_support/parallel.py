"""How the suite is split across pytest-xdist workers (``make pytest``: ``-n 4 --dist loadgroup``).

Tests that share something a second worker must not build or touch at the same time form a
group; a group runs on one worker, in order. Groups are listed here by node id rather than
marked with ``@pytest.mark.xdist_group``: pytest-xdist 3.8 writes the group into
``item._nodeid``, which pytest 9 no longer reads, so those marks are silently ignored. A
``name@group`` node id (what xdist produces where the marks work) is honoured too.
"""

from __future__ import annotations

from typing import Any

#: (node id prefix, group). The first match wins.
XDIST_GROUPS: tuple[tuple[str, str], ...] = (
    # One mkdocs build (a module fixture, ~30 s) for every page check, not one per worker.
    ("tests/docs/test_site.py::", "docs-site"),
    # One wheel and one core-only venv (session fixtures, ~20 s each) for the packaging tests.
    ("tests/packaging/", "packaging"),
    # One run of the tenant set-up script with its stand-ins (a module fixture: ~130 `az`
    # processes, ~40 s on a loaded machine) for the checks of its calls, not one per worker.
    ("tests/emulator/test_tenant_setup_agent_id.py::", "tenant-setup-agent-id"),
)

#: Node ids containing one of these share a machine-wide resource: Azure Arc's challenge
#: folder, /var/opt/azcmagent/tokens, for every test that emulates an Arc host.
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


def make_scheduler(config: Any, log: Any) -> Any:
    """xdist's ``loadgroup`` scheduler, with the groups above."""
    from xdist.scheduler import LoadGroupScheduling

    class Scheduling(LoadGroupScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            scope = str(super()._split_scope(nodeid))  # "a@group" -> "group", else the node id
            return scope if scope != nodeid else (xdist_group(nodeid) or nodeid)

    return Scheduling(config, log)
